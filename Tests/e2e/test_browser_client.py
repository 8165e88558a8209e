"""The JavaScript client in a real headless Chromium (SPEC §13): a page of the broker's origin
imports `/js/streambroker.js` as the broker serves it, subscribes with a group, receives events
published over HTTP and acks them; the broker commits the acks. With authentication on, the
page's client sends its token in AUTH."""

from __future__ import annotations

from support.auth import Credentials
from support.names import unique
from support.waits import wait_for

SUBSCRIBE_AND_ACK = """
const [url, topic, group, count, token] = args;
const { StreamBrokerClient } = await import('/js/streambroker.js');
const client = new StreamBrokerClient(token ? { url, token } : { url });
await client.connect();
const sub = await client.subscribe(topic, { group, from: 'earliest', maxInflight: 8 });
window.__ready = true;
const got = [];
for await (const m of sub) {
  got.push({ offset: m.offset, payload: m.payload, key: m.key });
  m.ack();
  if (got.length === count) break;
}
await client.close();
return got;
"""


def test_page_imports_client_subscribes_with_group_and_acks(shared, browser):
    topic, group = unique("browser"), "page"
    shared.create_topic(topic, partitions=1)
    for n in range(5):
        shared.http_publish(topic, {"n": n}, key=f"k{n}")
    browser.open(shared.base_url + "/healthz")
    got = browser.js(SUBSCRIBE_AND_ACK, shared.ws_url, topic, group, 5, None)
    assert [m["payload"]["n"] for m in got] == [0, 1, 2, 3, 4]
    assert [m["offset"] for m in got] == [1, 2, 3, 4, 5]
    assert got[0]["key"] == "k0"
    shared.wait_committed(topic, group, 5)


def test_page_receives_events_published_while_subscribed(shared, browser):
    topic, group = unique("browser-live"), "page"
    shared.create_topic(topic, partitions=1)
    browser.open(shared.base_url + "/healthz")
    # Start the page's subscription without waiting for it, publish once it is subscribed.
    browser.driver.execute_script(
        "window.__ready = false; window.__result = null;"
        "(async (args) => {" + SUBSCRIBE_AND_ACK + "})(arguments[0])"
        ".then((v) => { window.__result = {ok: true, v}; }, (e) => { window.__result = {ok: false, e: String(e)}; });",
        [shared.ws_url, topic, group, 3, None])
    wait_for(lambda: browser.driver.execute_script("return window.__ready"), timeout=10, message="the page subscribed")
    for n in range(3):
        shared.http_publish(topic, {"live": n})
    result = wait_for(lambda: browser.driver.execute_script("return window.__result"), timeout=10,
                      message="the page received 3 events")
    assert result["ok"], result
    assert [m["payload"]["live"] for m in result["v"]] == [0, 1, 2]
    shared.wait_committed(topic, group, 3)


def test_page_authenticates_with_a_token(make_broker, browser, tmp_path):
    creds = Credentials("token", tmp_path / "creds")
    token = creds.add("page", subscribe=["browser.>"], groups=["page"])
    creds.add("svc", publish=[">"], admin=True)
    broker = make_broker(**creds.env())
    topic = "browser." + unique("auth")
    status, _, _ = broker.http_raw("POST", "/topics", data=f'{{"topic":"{topic}"}}'.encode(), headers={
        "Authorization": f"Bearer {creds.tokens['svc']}", "Content-Type": "application/json"})
    assert status == 200
    for n in range(2):
        status, _, _ = broker.http_raw("POST", f"/topics/{topic}/events", data=f'{{"payload":{{"n":{n}}}}}'.encode(),
                                       headers={"Authorization": f"Bearer {creds.tokens['svc']}",
                                                "Content-Type": "application/json"})
        assert status in (200, 201)
    browser.open(broker.base_url + "/healthz")
    got = browser.js(SUBSCRIBE_AND_ACK, broker.ws_url, topic, "page", 2, token)
    assert [m["payload"]["n"] for m in got] == [0, 1]
    # A page without the token is refused.
    error = browser.js("""
        const [url, topic] = args;
        const { StreamBrokerClient } = await import('/js/streambroker.js');
        const client = new StreamBrokerClient({ url, token: 'wrong', maxBackoffMs: 200 });
        try { await client.connect(); return 'connected'; }
        catch (e) { return e.code || String(e); }
        finally { await client.close(); }
    """, broker.ws_url, topic)
    assert error == "unauthorized"


def test_page_of_another_origin_imports_the_client(make_broker, shared, browser):
    """A page of origin B (another broker's port) imports A's client by URL (CORS) and uses A."""
    other = make_broker()
    topic = unique("browser-cors")
    shared.create_topic(topic, partitions=1)
    shared.http_publish(topic, {"n": 1})
    browser.open(other.base_url + "/healthz")
    got = browser.js("""
        const [moduleUrl, url, topic] = args;
        const { StreamBrokerClient } = await import(moduleUrl);
        const client = new StreamBrokerClient({ url });
        await client.connect();
        const sub = await client.subscribe(topic, { group: 'cors', from: 'earliest' });
        for await (const m of sub) { m.ack(); await client.close(); return m.payload; }
    """, shared.base_url + "/js/streambroker.js", shared.ws_url, topic)
    assert got == {"n": 1}
    shared.wait_committed(topic, "cors", 1)
