"""The dashboard at `GET /` (SPEC §14) in a real headless Chromium: topics with their counts,
rates and sparklines, group partitions with lag and in flight, replicas and their partitions,
updated live from `system.metrics` snapshots (through the served JavaScript client) and from
`/stats`; the DLQ view (list, redrive, purge) and signing in with BUS_AUTH. Also the snapshot
itself: it carries `/stats`' `groups` and `ownership`, so that a page behind a load balancer
sees every replica.

The page exposes what the tests read as ids and data-* attributes: `body[data-state]`
(loading | login | ready), `body[data-snapshots]` / `[data-polls]` (snapshots received, /stats
answers), `tr[data-topic]`, `tr[data-topic][data-group][data-partition]`, `tr[data-replica]`,
cells `[data-field=NAME]`. `?poll=MS` sets how often /stats is polled.
"""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from support.auth import Credentials
from support.mongo import store_mode
from support.names import unique
from support.replicas import start_replicas, wait_spread
from support.waits import wait_for

FAST_METRICS = {"BUS_METRICS_INTERVAL_MS": "300"}


# --------------------------------------------------------------------------------------------
# helpers


def open_dashboard(browser, broker, query: str = "", state: str = "ready") -> None:
    # Leave the previous page (its broker may be gone), then forget what it logged.
    browser.open("about:blank")
    browser.console()
    browser.open(broker.base_url + "/" + query)
    wait_for(lambda: page_state(browser) == state, 10, 0.05, f"the dashboard in state {state!r}")


def page_state(browser) -> str | None:
    return browser.driver.execute_script("return document.body && document.body.dataset.state")


def text(browser, selector: str) -> str | None:
    return browser.driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null", selector)


def wait_text(browser, selector: str, expected: str, timeout: float = 8.0) -> None:
    wait_for(lambda: text(browser, selector) == expected, timeout, 0.05,
             f"{selector} showing {expected!r} (shows {text(browser, selector)!r})")


def cell(kind: str, field: str, **keys) -> str:
    attrs = "".join(f'[data-{k}="{v}"]' for k, v in keys.items())
    return f'#{kind} tr{attrs} [data-field="{field}"]'


def dataset(browser, name: str) -> int:
    value = browser.driver.execute_script("return document.body.dataset[arguments[0]]", name)
    return int(value or 0)


def severe(browser, allow: tuple[str, ...] = ()) -> list[dict]:
    """SEVERE console entries, but those whose message contains one of `allow`."""
    return [m for m in browser.console() if m["level"] == "SEVERE" and not any(a in m["message"] for a in allow)]


def click(browser, element_id: str) -> None:
    browser.driver.find_element(By.ID, element_id).click()


def visible(browser, element_id: str) -> bool:
    return browser.driver.execute_script("const e = document.getElementById(arguments[0]); return !!e && !e.hidden",
                                         element_id)


def consume(broker, topic: str, group: str, published: int, acked: int, max_inflight: int = 8):
    """A group member that received `published` events and acked the first `acked` (its
    connection stays open: the rest stay in flight). Returns the WS client."""
    ws = broker.ws()
    ws.subscribe(topic, group=group, from_={"kind": "earliest"}, max_inflight=max_inflight)
    messages = ws.recv_messages(published, timeout=10)
    for m in messages[:acked]:
        ws.ack(m)
    ws.barrier()
    broker.wait_committed(topic, group, acked)
    return ws


def dead_letter(broker, topic: str, group: str, payload, reason: str) -> None:
    """One event published with a header, delivered to a new `group` and NACKed (maxAttempts 1)."""
    ws = broker.ws()
    ws.subscribe(topic, group=group, from_={"kind": "latest"})
    ws.publish(topic, payload, key="k-1", headers={"ct": "json"})
    ws.nack(ws.recv_messages(1, timeout=10)[0], reason=reason)
    ws.barrier()
    ws.close()


def dlq_http(broker, topic: str, headers: dict | None = None) -> list[dict]:
    status, _, body = broker.http_raw("GET", f"/topics/{topic}/dlq", headers=headers or {})
    assert status == 200, (status, body)
    return json.loads(body)["deadLetters"]


def choose_dlq_topic(browser, topic: str) -> None:
    wait_for(lambda: browser.driver.execute_script(
        "return [...document.getElementById('dlq-topic').options].some((o) => o.value === arguments[0])", topic),
        8, 0.05, f"{topic} among the DLQ view's topics")
    Select(browser.driver.find_element(By.ID, "dlq-topic")).select_by_value(topic)
    click(browser, "dlq-load")


def confirm(browser, action: str) -> str:
    """Presses Redrive… or Purge…, checks the page's own confirmation, confirms; returns the
    result line once it is shown."""
    browser.driver.execute_script("document.getElementById('dlq-result').hidden = true")
    click(browser, f"dlq-{action}")
    wait_for(lambda: visible(browser, "dlq-confirm"), 5, 0.05, "the confirmation")
    assert browser.driver.execute_script("return document.getElementById('dlq-confirm').dataset.action") == action
    click(browser, "dlq-confirm-yes")
    wait_for(lambda: visible(browser, "dlq-result"), 8, 0.05, f"the result of {action}")
    assert not visible(browser, "dlq-confirm")
    return text(browser, "#dlq-result")


# --------------------------------------------------------------------------------------------
# the page


def test_loads_without_console_errors_and_shows_lag(make_broker, browser):
    broker = make_broker(**FAST_METRICS)
    topic, group = unique("dash"), "billing"
    broker.create_topic(topic, partitions=1)
    for n in range(5):
        broker.http_publish(topic, {"n": n})
    ws = consume(broker, topic, group, published=5, acked=3)

    open_dashboard(browser, broker)
    keys = {"topic": topic, "group": group, "partition": 0}
    wait_text(browser, cell("groups", "lag", **keys), "2")
    assert text(browser, cell("groups", "committed", **keys)) == "3"
    assert text(browser, cell("groups", "highWatermark", **keys)) == "5"
    assert text(browser, cell("groups", "inflight", **keys)) == "2 / 8"
    assert text(browser, cell("groups", "connections", **keys)) == "1"
    assert text(browser, cell("topics", "published", topic=topic)) == "5"
    wait_text(browser, cell("topics", "delivered", topic=topic), "5")
    assert text(browser, "#replica").startswith("replica ")
    # The live subscription is up and the sparklines are drawn as SVG.
    wait_for(lambda: dataset(browser, "snapshots") >= 1, 8, 0.05, "a system.metrics snapshot")
    wait_for(lambda: text(browser, "#live-status").startswith("live: "), 5, 0.05, "the live status")
    assert browser.driver.execute_script(
        "return document.querySelectorAll('#topics tr[data-topic] svg[data-spark]').length") >= 2
    browser.screenshot("dashboard")
    ws.close()
    assert severe(browser) == []


def test_updates_without_reload(make_broker, browser):
    broker = make_broker(**FAST_METRICS)
    topic, group = unique("dash-live"), "workers"
    broker.create_topic(topic, partitions=1)
    broker.http_publish(topic, {"n": 0})
    ws = consume(broker, topic, group, published=1, acked=1)
    open_dashboard(browser, broker)
    keys = {"topic": topic, "group": group, "partition": 0}
    wait_text(browser, cell("groups", "lag", **keys), "0")
    browser.driver.execute_script("window.__sameDocument = true")
    points_before = browser.driver.execute_script(
        "const s = document.querySelector(arguments[0]); return s ? Number(s.dataset.points) : 0",
        f'#topics tr[data-topic="{topic}"] svg[data-spark="publish"]')

    for n in range(1, 7):
        broker.http_publish(topic, {"n": n})
    for m in ws.recv_messages(6, timeout=10)[:2]:
        ws.ack(m)
    ws.barrier()
    wait_text(browser, cell("topics", "published", topic=topic), "7")
    wait_text(browser, cell("groups", "lag", **keys), "4")
    wait_text(browser, cell("groups", "inflight", **keys), "4 / 8")
    wait_for(lambda: float(text(browser, cell("topics", "publishRate", topic=topic)) or 0) > 0, 5, 0.05,
             "a publish rate above 0")
    assert browser.driver.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    wait_for(lambda: browser.driver.execute_script(
        "const s = document.querySelector(arguments[0]); return s ? Number(s.dataset.points) : 0",
        f'#topics tr[data-topic="{topic}"] svg[data-spark="publish"]') > points_before, 5, 0.05,
        "the sparkline growing")
    ws.close()
    assert severe(browser) == []


def test_live_path_is_the_system_metrics_subscription(make_broker, browser):
    """With /stats polled once an hour, only the snapshots can move the numbers; the replica's
    connection count is a value only snapshots carry."""
    broker = make_broker(**FAST_METRICS)
    topic, group = unique("dash-metrics"), "audit"
    broker.create_topic(topic, partitions=1)
    broker.http_publish(topic, {"n": 0})
    ws = consume(broker, topic, group, published=1, acked=0)
    open_dashboard(browser, broker, "?poll=3600000")
    assert browser.driver.execute_script("return window.__dashboard.pollMs") == 3600000
    wait_for(lambda: dataset(browser, "snapshots") >= 1, 8, 0.05, "a system.metrics snapshot")
    # The first poll runs beside the subscription and may answer after the first snapshot.
    wait_for(lambda: dataset(browser, "polls") >= 1, 8, 0.05, "the first /stats answer")
    polls = dataset(browser, "polls")
    assert polls == 1, polls

    for n in range(1, 4):
        broker.http_publish(topic, {"n": n})
    keys = {"topic": topic, "group": group, "partition": 0}
    wait_text(browser, cell("topics", "published", topic=topic), "4")
    wait_text(browser, cell("groups", "lag", **keys), "4")
    replica = browser.driver.execute_script("return window.__dashboard.lastSnapshot.replica")
    # This page's connection and the consumer's, counted by the replica in its snapshot.
    wait_for(lambda: (text(browser, cell("replicas", "connections", replica=replica)) or "–") not in ("–", "0", "1"),
             8, 0.05, "the replica's connection count from a snapshot")
    assert text(browser, cell("replicas", "source", replica=replica)) == "system.metrics"
    assert dataset(browser, "polls") == polls, "/stats was polled again"
    ws.close()
    assert severe(browser) == []


def test_dlq_view_lists_redrives_and_purges(make_broker, browser):
    broker = make_broker(**FAST_METRICS)
    topic = unique("dash-dlq")
    broker.create_topic(topic, partitions=1, maxAttempts=1)
    dead_letter(broker, topic, "billing", {"order": 42, "note": "no money"}, "card declined")
    wait_for(lambda: len(dlq_http(broker, topic)) == 1, 10, message="one dead letter")

    open_dashboard(browser, broker)
    choose_dlq_topic(browser, topic)
    row = '#dlq-list tr[data-offset="1"]'
    wait_for(lambda: text(browser, row) is not None, 8, 0.05, "the dead letter listed")
    header = lambda name: text(browser, f'{row} [data-header="{name}"]')  # noqa: E731
    assert header("x-original-topic") == topic
    assert header("x-original-group") == "billing"
    assert header("x-original-partition") == "0"
    assert header("x-original-offset") == "1"
    assert header("x-last-reason") == "card declined"
    assert header("ct") == "json"
    assert text(browser, f"{row} [data-field=reason]") == "card declined"
    assert json.loads(text(browser, f"{row} [data-field=payload]")) == {"order": 42, "note": "no money"}
    browser.screenshot("dashboard-dlq")

    # Cancel does nothing.
    click(browser, "dlq-redrive")
    wait_for(lambda: visible(browser, "dlq-confirm"), 5, 0.05, "the confirmation")
    click(browser, "dlq-confirm-no")
    assert not visible(browser, "dlq-confirm")
    assert broker.high_watermark(topic) == 1

    result = confirm(browser, "redrive")
    assert result.startswith("Redrove 1 dead letter to"), result
    back = broker.read_events(topic, from_=2)
    assert [e["payload"] for e in back] == [{"order": 42, "note": "no money"}]
    assert back[0]["headers"] == {"ct": "json"} and back[0]["key"] == "k-1", back
    result = confirm(browser, "redrive")
    assert result.startswith("Redrove 0 dead letters") and "1 already redriven" in result, result
    assert broker.high_watermark(topic) == 2, "the second redrive stored nothing"

    result = confirm(browser, "purge")
    assert result == f"Purged 1 dead letter of {topic}.", result
    assert dlq_http(broker, topic) == []
    wait_for(lambda: text(browser, row) is None, 5, 0.05, "the list emptied")
    assert visible(browser, "dlq-empty")
    assert severe(browser) == []


def test_with_auth_asks_for_a_token(make_broker, browser, tmp_path):
    creds = Credentials("token", tmp_path / "creds")
    admin = creds.add("admin", publish=[">"], subscribe=[">"], admin=True)
    viewer = creds.add("viewer", subscribe=[">"])
    topic = unique("dash-auth")
    narrow = creds.add("narrow", subscribe=[topic])  # may not read system.metrics
    broker = make_broker(**creds.env(), **FAST_METRICS)
    auth = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    status, _, body = broker.http_raw("POST", "/topics", data=json.dumps({"topic": topic, "maxAttempts": 1}).encode(),
                                      headers=auth)
    assert status == 200, body
    status, _, body = broker.http_raw("POST", f"/topics/{topic}/events", data=b'{"payload":{"n":1}}', headers=auth)
    assert status in (200, 201), body

    open_dashboard(browser, broker, state="login")
    assert visible(browser, "login") and not visible(browser, "main") and not visible(browser, "sign-out")

    def sign_in(token: str) -> None:
        field = browser.driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        click(browser, "login-submit")

    sign_in("tok_wrong")
    wait_for(lambda: visible(browser, "login-error"), 8, 0.05, "the refusal")
    assert "refused the token" in text(browser, "#login-error")
    assert page_state(browser) == "login"

    sign_in(admin)
    wait_for(lambda: page_state(browser) == "ready", 8, 0.05, "the data after signing in")
    wait_text(browser, cell("topics", "published", topic=topic), "1")
    assert browser.driver.execute_script("return sessionStorage.getItem('streambroker.token')") == admin
    wait_for(lambda: text(browser, "#principal") == "signed in as admin", 8, 0.05, "the live client's principal")
    wait_for(lambda: dataset(browser, "snapshots") >= 1, 8, 0.05, "a snapshot with the token")
    # A reload keeps the token (sessionStorage).
    open_dashboard(browser, broker)

    click(browser, "sign-out")
    wait_for(lambda: page_state(browser) == "login", 5, 0.05, "the sign-in form after signing out")
    assert browser.driver.execute_script("return sessionStorage.getItem('streambroker.token')") is None

    sign_in(viewer)
    wait_for(lambda: page_state(browser) == "ready", 8, 0.05, "the data for a read-only token")
    wait_text(browser, cell("topics", "published", topic=topic), "1")
    choose_dlq_topic(browser, topic)
    wait_for(lambda: visible(browser, "dlq-empty"), 8, 0.05, "the (empty) list")
    result = confirm(browser, "redrive")
    assert result.startswith("Redrive refused: forbidden:"), result
    assert browser.driver.execute_script("return document.getElementById('dlq-result').dataset.state") == "error"

    # Without permission on system.metrics the live path says so; /stats still feeds the page.
    click(browser, "sign-out")
    wait_for(lambda: page_state(browser) == "login", 5, 0.05, "the sign-in form")
    sign_in(narrow)
    wait_for(lambda: page_state(browser) == "ready", 8, 0.05, "the data for a token without system.metrics")
    wait_for(lambda: browser.driver.execute_script(
        "return document.getElementById('live-status').dataset.state") == "error", 8, 0.05, "the live path refused")
    assert text(browser, "#live-status") == "live: forbidden"
    wait_text(browser, cell("topics", "published", topic=topic), "1")

    # A stored token the broker no longer accepts: asked again, with the reason.
    browser.driver.execute_script("sessionStorage.setItem('streambroker.token', 'tok_revoked')")
    browser.open(broker.base_url + "/")
    wait_for(lambda: page_state(browser) == "login" and visible(browser, "login-error"), 8, 0.05,
             "the sign-in form for a refused stored token")
    assert "refused the token" in text(browser, "#login-error")
    assert browser.driver.execute_script("return sessionStorage.getItem('streambroker.token')") is None
    # Only the refusals the page asked for (401 for wrong tokens, 403 for the redrive).
    assert severe(browser, allow=("status of 401", "status of 403")) == []


def test_broker_down_shows_the_error_and_recovers(make_broker, browser):
    broker = make_broker(**FAST_METRICS)
    topic = unique("dash-down")
    broker.create_topic(topic, partitions=1)
    broker.http_publish(topic, {"n": 0})
    open_dashboard(browser, broker, "?poll=300")
    wait_for(lambda: dataset(browser, "snapshots") >= 1, 8, 0.05, "a snapshot")
    broker.stop()
    wait_for(lambda: visible(browser, "error"), 8, 0.05, "the error banner")
    assert text(browser, "#error").startswith("GET /stats:")
    assert browser.driver.execute_script("return document.getElementById('poll-status').dataset.state") == "error"
    wait_for(lambda: browser.driver.execute_script(
        "return document.getElementById('live-status').dataset.state") == "connecting", 8, 0.05, "live: reconnecting")

    broker.restart()
    broker.http_publish(topic, {"n": 1})
    wait_for(lambda: not visible(browser, "error"), 10, 0.05, "the banner gone")
    before = dataset(browser, "snapshots")
    wait_for(lambda: dataset(browser, "snapshots") > before, 15, 0.05, "snapshots again after the reconnect")
    wait_text(browser, cell("topics", "published", topic=topic), "1")  # the restarted replica's count
    # The only errors: the refused connections while the broker was down.
    assert severe(browser, allow=("ERR_CONNECTION_REFUSED", "WebSocket connection to")) == []


@pytest.mark.skipif(store_mode() != "mongo", reason="one replica on the embedded store")
def test_two_replicas_and_their_partitions(make_broker, browser):
    topic, group = unique("dash-rep"), "workers"
    _, brokers = start_replicas(make_broker, 2, topics={topic: 4}, **FAST_METRICS)
    members = []
    for b in brokers:
        ws = b.ws()
        ws.subscribe(topic, group=group, from_={"kind": "earliest"})
        members.append(ws)
    spread = wait_spread(brokers, topic, group, 4)
    assert sorted(spread) == ["r1", "r2"], spread

    # The page on r1: r2 is known only from its snapshots.
    open_dashboard(browser, brokers[0])
    for replica, partitions in spread.items():
        selector = f'#replicas tr[data-replica="{replica}"] li[data-topic="{topic}"][data-group="{group}"]'
        wait_for(lambda s=selector: browser.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e && e.dataset.partitions", s)
            == ",".join(map(str, partitions)), 10, 0.05, f"{replica} owning {partitions}")
    assert text(browser, cell("replicas", "source", replica="r2")) == "system.metrics"
    for p in range(4):
        owner = next(r for r, ps in spread.items() if p in ps)
        wait_text(browser, cell("groups", "replica", topic=topic, group=group, partition=p), owner, timeout=10)
    browser.screenshot("dashboard-replicas")
    for ws in members:
        ws.close()
    assert severe(browser) == []


# --------------------------------------------------------------------------------------------
# the snapshot behind the live path


def test_snapshot_carries_groups_and_ownership_as_stats_has_them(make_broker):
    broker = make_broker(**FAST_METRICS)
    topic, group = unique("snap"), "billing"
    broker.create_topic(topic, partitions=1)
    for n in range(4):
        broker.http_publish(topic, {"n": n})
    member = consume(broker, topic, group, published=4, acked=1)

    watcher = broker.ws()
    watcher.subscribe("system.metrics", from_={"kind": "latest"})

    def ours(snapshot: dict):
        return [g for g in snapshot.get("groups", []) if g["topic"] == topic]

    snapshot = None
    for _ in range(20):
        payload = watcher.recv_type("MESSAGE", timeout=5)["envelope"]["payload"]
        if ours(payload) and ours(payload)[0]["committed"] == 1:
            snapshot = payload
            break
    assert snapshot is not None, "no snapshot with the group's committed offset"
    status, stats = broker.http("GET", "/stats")
    assert status == 200
    assert snapshot["replica"] == stats["replica"]
    assert isinstance(snapshot["ts"], int)
    assert snapshot["topics"][topic]["published"] == 4 and snapshot["topics"][topic]["delivered"] == 4, snapshot
    (g,) = ours(snapshot)
    (s,) = [x for x in stats["groups"] if x["topic"] == topic]
    assert list(g) == list(s), "the same fields in the same order as /stats"
    assert g["lag"] == 3 and g["inflight"] == 3 and g["committed"] == 1 and g["highWatermark"] == 4, g
    volatile = ("oldestUnackedMs",)
    assert {k: v for k, v in g.items() if k not in volatile} == {k: v for k, v in s.items() if k not in volatile}
    assert isinstance(g["oldestUnackedMs"], int) and g["oldestUnackedMs"] >= 0
    owned = [o for o in snapshot["ownership"] if o["topic"] == topic]
    assert owned == [o for o in stats["ownership"] if o["topic"] == topic]
    assert owned == [{"topic": topic, "group": group, "partitions": [0], "connections": 1, "idle": False}]
    # The consumer and the watcher (the only snapshot field /stats does not have).
    assert snapshot["connections"] >= 2, snapshot
    assert all(not t.startswith("system.") for t in snapshot["topics"]), snapshot["topics"]
    member.close()
    watcher.close()


def test_system_metrics_keeps_snapshots_for_an_hour_unless_configured(make_broker):
    """The broker creates `system.metrics` with a retention of an hour; a config made before
    it (POST /topics) is kept."""
    broker = make_broker(**FAST_METRICS)
    watcher = broker.ws()  # a replica with a connection sends snapshots
    wait_for(lambda: (broker.high_watermark("system.metrics") or 0) >= 1, 8, 0.05, "a snapshot stored")
    status, body = broker.http("GET", "/topics/system.metrics")
    assert status == 200 and body["config"]["retentionMs"] == 3_600_000, body
    watcher.close()

    other = make_broker(**FAST_METRICS)
    status, _ = other.http("POST", "/topics", {"topic": "system.metrics", "partitions": 1, "retentionMs": 60_000})
    assert status == 200
    watcher = other.ws()
    wait_for(lambda: (other.high_watermark("system.metrics") or 0) >= 1, 8, 0.05, "a snapshot stored")
    assert other.http("GET", "/topics/system.metrics")[1]["config"]["retentionMs"] == 60_000
    watcher.close()


def test_snapshots_stop_when_disabled(make_broker):
    """BUS_METRICS_INTERVAL_MS=0: no snapshot at all, however busy the replica is."""
    broker = make_broker(BUS_METRICS_INTERVAL_MS="0")
    topic = unique("snap-off")
    broker.create_topic(topic, partitions=1)
    watcher = broker.ws()
    watcher.subscribe("system.metrics", from_={"kind": "earliest"})
    broker.http_publish(topic, {"n": 1})
    watcher.expect_nothing(1.0)
    assert broker.high_watermark("system.metrics") in (None, 0)
    watcher.close()

