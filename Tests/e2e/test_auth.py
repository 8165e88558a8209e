"""Authentication and authorization (SPEC §12, issue 10) against real brokers in each mode:
`BUS_AUTH=token` (a hashed tokens file) and `BUS_AUTH=jwt` with HS256, RS256 and ES256 keys
made in the test. Credentials on the WebSocket upgrade, in AUTH frames and on HTTP; patterns,
group limits, topic ACLs and admin routes; JWT expiry and refresh; tokens file reloads; the
trusted `x-bus-principal` header; per-principal publish rates; audit records and metrics of
refusals; configuration errors at start.

Auth does not depend on the store: every test here runs in both E2E_STORE modes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from support.auth import (
    MODES,
    Credentials,
    HTTPAs,
    assert_error,
    auth_frame,
    error_log_lines,
    new_token,
    refusals,
    request,
    sha256_hex,
    upgrade_status,
    wait_close,
    write_file_atomically,
    write_tokens_file,
    ws_authed,
    ws_with_header,
)
from support.broker import DEFAULT_BIN
from support.net import free_port
from support.waits import wait_for
from support.ws import WS

JWT_MODES = tuple(m for m in MODES if m != "token")
AUTH_TIMEOUT_S = 0.8  # BUS_AUTH_TIMEOUT_MS in Credentials.env()
AUDIT_TOPIC = "system.bus.audit"

ADMIN = {"publish": [">"], "subscribe": [">"], "admin": True}
BILLING = {
    "publish": ["orders.*", "ledger.>"],
    "subscribe": ["orders.*", "payments"],
    "groups": ["billing", "billing.>"],
}


def start(make_broker, tmp_path, mode: str, principals: dict[str, dict] | None = None, **env):
    """A broker in `mode` with an `admin` principal plus `principals` (name -> permissions);
    returns (broker, credentials, admin HTTP client)."""
    creds = Credentials(mode, tmp_path / f"creds-{mode}")
    creds.add("admin", **ADMIN)
    for name, perms in (principals or {}).items():
        creds.add(name, **perms)
    broker = make_broker(**creds.env(**env))
    return broker, creds, HTTPAs(broker, creds.tokens["admin"])


def publish_frame(topic: str, payload=None, headers: dict | None = None) -> dict:
    frame = {"type": "PUBLISH", "topic": topic, "payload": {"n": 1} if payload is None else payload}
    if headers is not None:
        frame["headers"] = headers
    return frame


def subscribe_frame(topic: str, group: str | None = None) -> dict:
    frame = {"type": "SUBSCRIBE", "topic": topic, "from": {"kind": "earliest"}}
    if group is not None:
        frame["group"] = group
    return frame


def assert_http_error(result, status: int, code: str):
    got_status, _, body = result if len(result) == 3 else (result[0], None, result[1])
    assert got_status == status, f"expected HTTP {status}, got {got_status} {body}"
    assert isinstance(body, dict) and body.get("error", {}).get("code") == code, body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    return body


# --------------------------------------------------------------------------------------------
# no credential, bad credentials, good credentials (each mode)


@pytest.mark.parametrize("mode", MODES)
def test_no_credential_is_refused(make_broker, tmp_path, mode):
    """Without a credential every WS frame gets ERROR unauthorized (rid echoed), the socket is
    closed with 1008 once BUS_AUTH_TIMEOUT_MS has passed (also one that sends nothing), every
    HTTP route but the open ones answers 401, and nothing is stored."""
    b, creds, admin = start(make_broker, tmp_path, mode)
    topic = "orders.created"

    idle = b.ws()
    root = WS(f"ws://127.0.0.1:{b.port}/")  # the sketch's path: the same rules
    b._clients.append(root)
    ws = b.ws()
    opened = time.monotonic()
    assert_error(request(root, publish_frame(topic)), "unauthorized")
    for frame in (publish_frame(topic), subscribe_frame(topic, "billing"),
                  subscribe_frame(topic), {"type": "UNSUBSCRIBE", "topic": topic, "group": "billing"}):
        reply = request(ws, frame)
        assert_error(reply, "unauthorized", frame.get("rid"))
    ws.send({"type": "ACK", "topic": topic, "partition": 0, "group": "billing", "offset": 1})
    assert_error(ws.recv(), "unauthorized")
    code, _, frames = wait_close(ws, timeout=AUTH_TIMEOUT_S + 5)
    assert code == 1008, (code, frames)
    assert time.monotonic() - opened >= AUTH_TIMEOUT_S * 0.6, "closed long before BUS_AUTH_TIMEOUT_MS"
    assert all(f.get("code") == "unauthorized" for f in frames), frames

    for other in (idle, root):
        code, _, frames = wait_close(other, timeout=AUTH_TIMEOUT_S + 5)
        assert code == 1008, (code, frames)

    anonymous = HTTPAs(b, None)
    for method, path, body in [
        ("GET", "/stats", None),
        ("GET", "/topics", None),
        ("GET", f"/topics/{topic}", None),
        ("GET", f"/topics/{topic}/offsets", None),
        ("GET", f"/topics/{topic}/events?partition=0&from=1&limit=10", None),
        ("POST", f"/topics/{topic}/events", {"payload": {"n": 1}}),
        ("POST", "/topics", {"topic": topic, "partitions": 2}),
        ("POST", f"/groups/billing/topics/{topic}/reset", {"from": {"kind": "earliest"}}),
    ]:
        assert_http_error(anonymous.raw(method, path, body), 401, "unauthorized")
    # a credential in another scheme is no credential
    assert_http_error(anonymous.raw("GET", "/topics", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}),
                      401, "unauthorized")
    assert admin.stored(topic) == 0


@pytest.mark.parametrize("mode", MODES)
def test_bad_credentials_are_refused(make_broker, tmp_path, mode):
    """Unknown tokens, bad signatures, tampered claims, expired JWTs, JWTs without exp or sub,
    alg none and (RS256/ES256) an HMAC made with the public key: the upgrade gets 401, HTTP 401,
    an AUTH frame ERROR unauthorized (rid echoed); the connection may then try again."""
    b, creds, admin = start(make_broker, tmp_path, mode, {"billing": BILLING})
    ws = b.ws()
    bad = creds.bad_tokens("billing")
    for label, token in bad:
        if token:  # "Bearer " with nothing after it is a missing credential, not a bad one
            assert upgrade_status(b, token) == 401, label
        assert_http_error(HTTPAs(b, token).raw("GET", "/topics"), 401, "unauthorized")
        assert_http_error(HTTPAs(b, token).publish("orders.created", {"forged": label}), 401, "unauthorized")
        reply = request(ws, {"type": "AUTH", "token": token, "rid": f"auth-{label}"})
        if token:
            assert_error(reply, "unauthorized", f"auth-{label}")
        else:  # an AUTH frame without a token is a malformed frame as much as a bad credential
            assert reply["type"] == "ERROR" and reply["code"] in ("unauthorized", "bad_request"), reply
            assert reply["rid"] == f"auth-{label}", reply
    # still not authenticated after all those ...
    assert_error(request(ws, publish_frame("orders.created")), "unauthorized")
    # ... and a good AUTH on the same connection works
    reply = auth_frame(ws, creds.tokens["billing"])
    assert reply["type"] == "AUTHED" and reply["principal"] == "billing", reply
    assert request(ws, publish_frame("orders.created"))["type"] == "PUBLISHED"
    assert admin.stored("orders.created") == 1


@pytest.mark.parametrize("mode", MODES)
def test_good_credentials_on_upgrade_in_auth_frame_and_http(make_broker, tmp_path, mode):
    """A good credential on the upgrade authenticates the connection from the start (no AUTHED
    frame); an AUTH frame gets AUTHED {principal, expires (JWT exp in ms, null for a token), rid};
    sending AUTH again is answered again; HTTP requests with it pass."""
    exp = int(time.time()) + 3600
    b, creds, admin = start(make_broker, tmp_path, mode, {"billing": BILLING})
    token = creds.jwt("billing", exp=exp, **BILLING) if creds.is_jwt else creds.tokens["billing"]

    hdr = ws_with_header(b, token)
    assert request(hdr, publish_frame("orders.created"))["type"] == "PUBLISHED"
    hdr.expect_nothing(0.2)

    ws = b.ws()
    reply = request(ws, {"type": "AUTH", "token": token, "rid": "r1"})
    assert reply == {"type": "AUTHED", "principal": "billing",
                     "expires": exp * 1000 if creds.is_jwt else None, "rid": "r1"}, reply
    assert request(ws, publish_frame("orders.created"))["type"] == "PUBLISHED"
    time.sleep(AUTH_TIMEOUT_S + 0.4)  # authenticated in time: the auth timeout does not close it
    assert request(ws, publish_frame("orders.created"))["type"] == "PUBLISHED"
    assert request(hdr, publish_frame("orders.created"))["type"] == "PUBLISHED"
    again = request(ws, {"type": "AUTH", "token": token, "rid": "r2"})
    assert again["type"] == "AUTHED" and again["principal"] == "billing" and again["rid"] == "r2", again

    user = HTTPAs(b, token)
    for path in ("/stats", "/topics", "/topics/orders.created", "/topics/orders.created/offsets",
                 "/topics/orders.created/events?partition=0&from=1&limit=10"):
        status, body = user.http("GET", path)
        assert status == 200, (path, status, body)
    status, _, body = user.publish("orders.created", {"via": "http"})
    assert status == 200, body
    assert admin.stored("orders.created") == 5


def test_none_mode_allows_everything_and_answers_auth_with_anonymous(broker):
    """BUS_AUTH=none (the default): no credential needed; an AUTH frame gets AUTHED with
    principal "anonymous"."""
    ws = broker.ws()
    assert request(ws, publish_frame("orders.created"))["type"] == "PUBLISHED"
    reply = request(ws, {"type": "AUTH", "token": "anything", "rid": "a1"})
    assert reply["type"] == "AUTHED" and reply["principal"] == "anonymous" and reply["rid"] == "a1", reply
    assert broker.http("GET", "/topics")[0] == 200
    assert broker.http("POST", "/topics", {"topic": "orders.created", "partitions": 2})[0] == 200


def test_repeated_bad_auth_frames_count_as_bad_frames(make_broker, tmp_path):
    """Each refused AUTH counts as a bad frame: past BUS_MAX_BAD_FRAMES the connection is closed
    with 1008."""
    b, creds, _ = start(make_broker, tmp_path, "token", BUS_MAX_BAD_FRAMES="5", BUS_AUTH_TIMEOUT_MS="20000")
    ws = b.ws()
    for i in range(12):
        try:
            ws.send({"type": "AUTH", "token": new_token(), "rid": f"bad-{i}"})
        except Exception:
            break
    code, _, frames = wait_close(ws, timeout=5)
    assert code == 1008, (code, frames)
    assert 1 <= len(frames) < 12, frames
    assert all(f.get("code") == "unauthorized" for f in frames), frames


# --------------------------------------------------------------------------------------------
# patterns, group limits, topic ACLs, admin routes (each mode)


@pytest.mark.parametrize("mode", MODES)
def test_publish_patterns(make_broker, tmp_path, mode):
    """publish ["orders.*", "ledger.>"]: `*` matches exactly one segment, `>` one or more;
    anything else is ERROR forbidden naming principal and topic (HTTP 403) and nothing is
    stored. A principal without `publish` may publish nothing."""
    b, creds, admin = start(make_broker, tmp_path, mode, {"billing": BILLING, "nobody": {}})
    ws = ws_authed(b, creds.tokens["billing"])
    http = HTTPAs(b, creds.tokens["billing"])
    allowed = ["orders.created", "orders.x_y-z", "ledger.a", "ledger.a.b.c"]
    forbidden = ["orders", "orders.created.eu", "ledger", "ordersx.created", "ledgers.a",
                 "payments", "other.orders.created", "x.ledger.a"]
    for topic in allowed:
        assert request(ws, publish_frame(topic))["type"] == "PUBLISHED", topic
        status, _, body = http.publish(topic, {"via": "http"})
        assert status == 200, (topic, body)
    for topic in forbidden:
        reply = assert_error(request(ws, publish_frame(topic, {"refused": True})), "forbidden")
        assert "billing" in reply["message"] and f"'{topic}'" in reply["message"] \
            and "publish" in reply["message"], reply
        body = assert_http_error(http.publish(topic, {"refused": True}), 403, "forbidden")
        assert topic in body["error"]["message"], body
    assert request(ws, publish_frame("ledger.z"))["type"] == "PUBLISHED"  # still connected
    for topic in allowed:
        assert admin.stored(topic) == 2, topic
    for topic in forbidden:
        assert admin.stored(topic) == 0, topic

    nobody = ws_authed(b, creds.tokens["nobody"])
    assert_error(request(nobody, publish_frame("orders.created")), "forbidden")
    assert_error(request(nobody, subscribe_frame("orders.created", "billing")), "forbidden")
    assert_http_error(HTTPAs(b, creds.tokens["nobody"]).publish("orders.created", 1), 403, "forbidden")
    assert admin.stored("orders.created") == 2


@pytest.mark.parametrize("mode", MODES)
def test_subscribe_patterns_and_group_limits(make_broker, tmp_path, mode):
    """subscribe ["orders.*", "payments"] with groups ["billing", "billing.>"]: allowed
    subscriptions receive events; other topics are forbidden ("may not subscribe to topic"),
    other groups too ("may not join group"), and a refused subscription receives nothing. A
    principal without `groups` may join any group."""
    b, creds, admin = start(make_broker, tmp_path, mode,
                            {"billing": BILLING, "reader": {"subscribe": [">"]}})
    producer = ws_authed(b, creds.tokens["admin"])

    ok = [("orders.created", "billing"), ("payments", "billing.eu"), ("orders.paid", "billing.eu.west")]
    subs = []
    for topic, group in ok:
        ws = ws_authed(b, creds.tokens["billing"])
        reply = request(ws, subscribe_frame(topic, group))
        assert reply["type"] == "SUBSCRIBED", (topic, group, reply)
        subs.append((ws, topic))

    refused = b.ws()
    assert auth_frame(refused, creds.tokens["billing"])["type"] == "AUTHED"
    for topic, group in [("orders.created.eu", "billing"), ("orders", "billing"), ("payments.x", "billing"),
                         ("ledger.a", "billing"), ("paymentsx", "billing")]:
        reply = assert_error(request(refused, subscribe_frame(topic, group)), "forbidden")
        assert "billing" in reply["message"] and f"'{topic}'" in reply["message"] \
            and "subscribe" in reply["message"], reply
    for group in ("shipping", "billingx", "billing-eu", "x.billing"):
        reply = assert_error(request(refused, subscribe_frame("orders.created", group)), "forbidden")
        assert f"'{group}'" in reply["message"] and "group" in reply["message"], reply

    for topic in ("orders.created", "payments", "orders.paid", "orders.created.eu", "ledger.a"):
        assert request(producer, publish_frame(topic, {"t": topic}))["type"] == "PUBLISHED"
    for ws, topic in subs:
        m = ws.recv_type("MESSAGE")
        assert m["topic"] == topic and m["envelope"]["payload"] == {"t": topic}, m
    refused.expect_nothing(0.5)

    reader = ws_authed(b, creds.tokens["reader"])
    assert request(reader, subscribe_frame("orders.created", "any.group.name"))["type"] == "SUBSCRIBED"
    assert reader.recv_type("MESSAGE")["envelope"]["payload"] == {"t": "orders.created"}


@pytest.mark.parametrize("mode", MODES)
def test_topic_acl_allow_and_deny(make_broker, tmp_path, mode):
    """A topic's `acl` limits principals on top of their patterns: deny wins over allow, an
    allow list admits only its members, no acl adds no limit; GET /topics/{t} shows the acl;
    an update takes effect; a malformed acl is 400; nothing is stored when refused."""
    everything = {"publish": [">"], "subscribe": [">"]}
    b, creds, admin = start(make_broker, tmp_path, mode,
                            {"alice": everything, "bob": everything, "carol": everything})
    acl = {"publish": {"allow": ["alice", "bob"], "deny": ["bob"]}, "subscribe": {"deny": ["alice"]}}
    admin.create_topic("acl.t", acl=acl)
    status, body = admin.http("GET", "/topics/acl.t")
    assert status == 200, body
    shown = body["config"]["acl"]
    assert shown["publish"]["allow"] == ["alice", "bob"] and shown["publish"]["deny"] == ["bob"], shown
    assert shown["subscribe"]["deny"] == ["alice"], shown

    ws = {n: ws_authed(b, creds.tokens[n]) for n in ("alice", "bob", "carol")}
    http = {n: HTTPAs(b, creds.tokens[n]) for n in ("alice", "bob", "carol")}
    assert request(ws["alice"], publish_frame("acl.t"))["type"] == "PUBLISHED"
    assert http["alice"].publish("acl.t", 1)[0] == 200
    for name in ("bob", "carol"):  # bob: denied although allowed; carol: not in the allow list
        reply = assert_error(request(ws[name], publish_frame("acl.t", {"from": name})), "forbidden")
        assert name in reply["message"] and "acl.t" in reply["message"], reply
        assert_http_error(http[name].publish("acl.t", {"from": name}), 403, "forbidden")
    assert admin.stored("acl.t") == 2

    reply = assert_error(request(ws["alice"], subscribe_frame("acl.t", "g-alice")), "forbidden")
    assert "alice" in reply["message"] and "subscribe" in reply["message"], reply
    assert request(ws["bob"], subscribe_frame("acl.t", "g-bob"))["type"] == "SUBSCRIBED"
    assert request(ws["carol"], subscribe_frame("acl.t"))["type"] == "SUBSCRIBED"
    assert ws["bob"].recv_type("MESSAGE")["offset"] == 1

    # no acl: no extra limit
    assert request(ws["carol"], publish_frame("acl.open"))["type"] == "PUBLISHED"

    # an update replaces the acl
    admin.create_topic("acl.t", acl={"publish": {"deny": ["carol"]}})
    assert request(ws["bob"], publish_frame("acl.t", {"from": "bob"}))["type"] == "PUBLISHED"
    assert_error(request(ws["carol"], publish_frame("acl.t", {"from": "carol"})), "forbidden")
    assert request(ws["alice"], subscribe_frame("acl.t", "g-alice"))["type"] == "SUBSCRIBED"
    assert admin.stored("acl.t") == 3
    senders = {e["payload"].get("from") if isinstance(e["payload"], dict) else None for e in admin.events("acl.t")}
    assert senders <= {None, "bob"}, senders

    for bad in ("alice", ["alice"], {"publish": {"allow": "alice"}}, {"publish": {"allow": [1]}},
                {"publish": {"grant": ["alice"]}}, {"produce": {"allow": ["alice"]}},
                {"subscribe": ["alice"]}):
        status, body = admin.http("POST", "/topics", {"topic": "acl.bad", "acl": bad})
        assert status == 400, (bad, status, body)
    assert admin.http("GET", "/topics/acl.bad")[0] == 404


@pytest.mark.parametrize("mode", MODES)
def test_admin_routes_and_open_routes(make_broker, tmp_path, mode):
    """POST /topics and group resets need `admin` (403 forbidden otherwise); GET /stats and
    /topics, /topics/{t}, /offsets need any valid credential, even one with no permissions;
    reading events needs subscribe permission; /healthz, /readyz and /metrics answer without one."""
    b, creds, admin = start(make_broker, tmp_path, mode, {"billing": BILLING, "nobody": {}})
    admin.publish("orders.created", {"n": 1})
    for name in ("billing", "nobody"):
        user = HTTPAs(b, creds.tokens[name])
        assert_http_error(user.raw("POST", "/topics", {"topic": "orders.created", "partitions": 4}),
                          403, "forbidden")
        assert_http_error(user.raw("POST", "/groups/billing/topics/orders.created/reset",
                                   {"from": {"kind": "earliest"}}), 403, "forbidden")
        for path in ("/stats", "/topics", "/topics/orders.created", "/topics/orders.created/offsets"):
            status, body = user.http("GET", path)
            assert status == 200, (name, path, status, body)
    # Reading a topic's events is a subscribe: its patterns apply.
    events = "/topics/orders.created/events?partition=0&from=1&limit=10"
    status, body = HTTPAs(b, creds.tokens["billing"]).http("GET", events)
    assert status == 200 and len(body["events"]) == 1, body
    assert_http_error(HTTPAs(b, creds.tokens["nobody"]).raw("GET", events), 403, "forbidden")
    assert_http_error(HTTPAs(b, creds.tokens["billing"]).raw("GET", "/topics/system.bus.audit/events"), 403, "forbidden")
    status, body = admin.http("GET", "/topics/orders.created")
    assert body["config"]["partitions"] == 1, body

    assert admin.create_topic("orders.created", partitions=2)["partitions"] == 2
    status, body = admin.http("POST", "/groups/billing/topics/orders.created/reset", {"from": {"kind": "earliest"}})
    assert status == 200, body

    anonymous = HTTPAs(b, None)
    assert anonymous.http("GET", "/healthz")[0] == 200
    wait_for(lambda: anonymous.http("GET", "/readyz")[0] == 200, 10, message="/readyz 200 without a credential")
    status, headers, _ = anonymous.raw("GET", "/metrics")
    assert status == 200 and headers.get("Content-Type", "").startswith("text/plain")


@pytest.mark.parametrize("mode", ("token", "hs256"))
def test_refresh_keeps_the_principal_resets_need_admin_system_topics_are_the_brokers(make_broker, tmp_path, mode):
    """A refresh AUTH naming another principal is refused and the connection stays who it was;
    a SUBSCRIBE with reset for a group needs admin (an ephemeral reset does not); no
    authenticated client may publish to a `system.` topic, admins included."""
    b, creds, admin = start(make_broker, tmp_path, mode, {"billing": BILLING, "other": BILLING})
    admin.publish("orders.created", {"n": 1})
    ws = ws_authed(b, creds.tokens["billing"])
    assert_error(auth_frame(ws, creds.tokens["other"]), "unauthorized")
    published = request(ws, publish_frame("orders.created"))
    assert published["type"] == "PUBLISHED", published
    event = admin.http("GET", f"/topics/orders.created/events?partition=0&from={published['offset']}&limit=1")[1]["events"][0]
    assert event["headers"]["x-bus-principal"] == "billing", event

    reset = dict(subscribe_frame("orders.created", "billing"), reset=True)
    assert_error(request(ws, reset), "forbidden")
    offsets = admin.http("GET", "/topics/orders.created/offsets")[1]
    assert all(g["group"] != "billing" for g in offsets["groups"]), offsets
    assert request(ws, dict(subscribe_frame("orders.created"), reset=True))["type"] == "SUBSCRIBED"
    root = ws_authed(b, creds.tokens["admin"])
    assert request(root, reset)["type"] == "SUBSCRIBED"

    for client in (ws, root):
        assert_error(request(client, publish_frame("system.bus.audit", {"kind": "forged"})), "forbidden")
    assert_http_error(admin.raw("POST", "/topics/system.metrics/events", {"payload": {"forged": True}}), 403, "forbidden")
    audit = admin.http("GET", "/topics/system.bus.audit/events?partition=0&from=1&limit=1000")[1]["events"]
    assert not any(e["payload"].get("kind") == "forged" for e in audit)


# --------------------------------------------------------------------------------------------
# JWT expiry, refresh and clock skew


@pytest.mark.parametrize("mode", JWT_MODES)
def test_jwt_connection_closed_at_exp_unless_refreshed(make_broker, tmp_path, mode):
    """With BUS_JWT_SKEW_MS=0, connections authenticated with a JWT (by AUTH frame or upgrade
    header) are closed with 1008 "token expired" at exp; one that sent an AUTH with a later exp
    stays open; afterwards the old JWT is refused everywhere."""
    b, creds, admin = start(make_broker, tmp_path, mode, BUS_JWT_SKEW_MS="0")
    exp = int(time.time()) + 3
    short = creds.jwt("billing", exp=exp, **BILLING)
    later = creds.jwt("billing", exp=exp + 600, **BILLING)

    framed = b.ws()
    reply = request(framed, {"type": "AUTH", "token": short, "rid": "e1"})
    assert reply == {"type": "AUTHED", "principal": "billing", "expires": exp * 1000, "rid": "e1"}, reply
    header = ws_with_header(b, short)
    refreshed = ws_authed(b, short)
    reply = auth_frame(refreshed, later)
    assert reply["type"] == "AUTHED" and reply["expires"] == (exp + 600) * 1000, reply
    extended = ws_authed(b, short)  # refreshed with a JWT that expires 2 s after the first
    reply = auth_frame(extended, creds.jwt("billing", exp=exp + 2, **BILLING))
    assert reply["type"] == "AUTHED" and reply["expires"] == (exp + 2) * 1000, reply
    assert HTTPAs(b, short).http("GET", "/topics")[0] == 200
    for ws in (framed, header, refreshed, extended):
        assert request(ws, publish_frame("orders.created"))["type"] == "PUBLISHED"

    for ws in (framed, header):
        code, reason, frames = wait_close(ws, timeout=exp - time.time() + 6)
        closed_at = time.time()
        assert code == 1008 and "expired" in (reason or ""), (code, reason, frames)
        assert closed_at >= exp - 1.0, f"closed {exp - closed_at:.1f}s before exp"
    assert request(extended, publish_frame("orders.created"))["type"] == "PUBLISHED"
    code, reason, frames = wait_close(extended, timeout=exp + 2 - time.time() + 6)
    closed_at = time.time()
    assert code == 1008 and "expired" in (reason or ""), (code, reason, frames)
    assert closed_at >= exp + 1.0, f"closed {exp + 2 - closed_at:.1f}s before its refreshed exp"
    assert request(refreshed, publish_frame("orders.created"))["type"] == "PUBLISHED"

    assert upgrade_status(b, short) == 401
    assert_http_error(HTTPAs(b, short).raw("GET", "/topics"), 401, "unauthorized")
    assert_error(auth_frame(b.ws(), short), "unauthorized")
    assert admin.stored("orders.created") == 6


def test_jwt_clock_skew(make_broker, tmp_path):
    """A JWT is accepted while now < exp + BUS_JWT_SKEW_MS (default 5000): two seconds past exp
    passes with the default (and the connection is closed at exp + skew), not with a skew of 0;
    long past exp is refused."""
    lenient, lcreds, _ = start(make_broker, tmp_path / "lenient", "hs256")
    strict, screds, _ = start(make_broker, tmp_path / "strict", "hs256", BUS_JWT_SKEW_MS="0")
    now = int(time.time())
    recent = lcreds.jwt("billing", exp=now - 2, **BILLING)
    late = lenient.ws()
    reply = auth_frame(late, recent)
    assert reply["type"] == "AUTHED" and reply["principal"] == "billing", reply
    assert HTTPAs(lenient, recent).http("GET", "/topics")[0] == 200
    assert_error(auth_frame(lenient.ws(), lcreds.jwt("billing", exp=now - 30, **BILLING)), "unauthorized")

    recent = screds.jwt("billing", exp=now - 2, **BILLING)
    assert_error(auth_frame(strict.ws(), recent), "unauthorized")
    assert upgrade_status(strict, recent) == 401
    assert_http_error(HTTPAs(strict, recent).raw("GET", "/topics"), 401, "unauthorized")

    code, reason, frames = wait_close(late, timeout=now + 3 - time.time() + 6)
    closed_at = time.time()
    assert code == 1008 and "expired" in (reason or ""), (code, reason, frames)
    assert closed_at >= now - 2 + 5 - 1.0, f"closed {now + 3 - closed_at:.1f}s before exp + skew"


@pytest.mark.parametrize("mode", JWT_MODES)
def test_jwt_without_bus_claim_may_do_nothing(make_broker, tmp_path, mode):
    """A valid JWT without a `bus` claim authenticates (GETs pass) but allows no publish,
    subscribe or admin route."""
    b, creds, admin = start(make_broker, tmp_path, mode)
    token = creds.jwt("plain", bus=False)
    ws = b.ws()
    reply = auth_frame(ws, token)
    assert reply["type"] == "AUTHED" and reply["principal"] == "plain", reply
    assert_error(request(ws, publish_frame("orders.created")), "forbidden")
    assert_error(request(ws, subscribe_frame("orders.created", "g")), "forbidden")
    user = HTTPAs(b, token)
    assert user.http("GET", "/topics")[0] == 200
    assert_http_error(user.publish("orders.created", 1), 403, "forbidden")
    assert_http_error(user.raw("POST", "/topics", {"topic": "orders.created"}), 403, "forbidden")
    assert admin.stored("orders.created") == 0


# --------------------------------------------------------------------------------------------
# tokens file reloads


def _status(broker, token, path="/topics") -> int:
    return HTTPAs(broker, token).http("GET", path)[0]


def test_tokens_file_reloaded_on_sighup(make_broker, tmp_path):
    """SIGHUP re-reads the tokens file: a new token works, a removed one is refused and its
    WebSocket connections (AUTH frame or upgrade header) are closed with 1008 "token revoked";
    other connections are untouched."""
    pub = {"publish": [">"], "subscribe": [">"]}
    b, creds, admin = start(make_broker, tmp_path, "token", {"alpha": pub, "beta": pub})
    beta_token = creds.tokens["beta"]
    beta_frame = ws_authed(b, beta_token)
    beta_header = ws_with_header(b, beta_token)
    alpha = ws_authed(b, creds.tokens["alpha"])
    for ws in (beta_frame, beta_header, alpha):
        assert request(ws, publish_frame("reload.t"))["type"] == "PUBLISHED"

    creds.remove("beta")
    gamma = creds.add("gamma", **pub)
    creds.write()
    os.kill(b.proc.pid, signal.SIGHUP)

    for ws in (beta_frame, beta_header):
        code, reason, frames = wait_close(ws, timeout=5)
        assert code == 1008 and "revoked" in (reason or ""), (code, reason, frames)
    wait_for(lambda: _status(b, gamma) == 200, 5, message="the new token accepted after SIGHUP")
    assert_http_error(HTTPAs(b, beta_token).raw("GET", "/topics"), 401, "unauthorized")
    assert upgrade_status(b, beta_token) == 401
    assert_error(auth_frame(b.ws(), beta_token), "unauthorized")

    g = ws_authed(b, gamma)
    assert request(g, publish_frame("reload.t"))["type"] == "PUBLISHED"
    assert request(alpha, publish_frame("reload.t"))["type"] == "PUBLISHED"
    assert b.running
    assert admin.stored("reload.t") == 5


def test_tokens_file_reloaded_on_change_without_signal(make_broker, tmp_path):
    """The broker notices a changed tokens file by itself (about once a second): an added token
    starts to work, a removed one stops and its connection is closed with 1008."""
    pub = {"publish": [">"]}
    b, creds, _ = start(make_broker, tmp_path, "token", {"alpha": pub})
    alpha_token = creds.tokens["alpha"]
    alpha = ws_authed(b, alpha_token)

    delta = creds.add("delta", **pub)
    creds.write()
    wait_for(lambda: _status(b, delta) == 200, 8, 0.1, "the added token accepted without a signal")

    creds.remove("alpha")
    creds.write()
    wait_for(lambda: _status(b, alpha_token) == 401, 8, 0.1, "the removed token refused without a signal")
    code, reason, _ = wait_close(alpha, timeout=5)
    assert code == 1008, (code, reason)
    assert request(ws_authed(b, delta), publish_frame("change.t"))["type"] == "PUBLISHED"


def test_broken_tokens_file_on_reload_keeps_old_table(make_broker, tmp_path):
    """A reload that finds a file that does not parse, or has a bad pattern, or a bad hash,
    logs an error and keeps the old table: old tokens keep working (new and existing
    connections), the new file's tokens do not; a good file later is picked up again."""
    pub = {"publish": [">"]}
    b, creds, admin = start(make_broker, tmp_path, "token", {"alpha": pub})
    alpha_token = creds.tokens["alpha"]
    alpha = ws_authed(b, alpha_token)
    zeta = new_token()
    good_entries = list(creds.entries.values())
    brokens = [
        "{ this is not json",
        json.dumps({"tokens": good_entries + [{"name": "zeta", "sha256": sha256_hex(zeta),
                                               "publish": ["orders.>.x"]}]}),
        json.dumps({"tokens": good_entries + [{"name": "zeta", "sha256": sha256_hex(zeta)[:40],
                                               "publish": [">"]}]}),
    ]
    for text in brokens:
        before = len(error_log_lines(b))
        write_file_atomically(creds.tokens_file, text)
        os.kill(b.proc.pid, signal.SIGHUP)
        wait_for(lambda: len(error_log_lines(b)) > before, 5, 0.05, f"an error logged for {text[:40]!r}")
        time.sleep(1.2)  # a change check may also come by: still the old table after it
        assert b.running
        assert _status(b, alpha_token) == 200
        assert _status(b, zeta) == 401
        assert request(alpha, publish_frame("broken.t"))["type"] == "PUBLISHED"
        assert request(ws_authed(b, alpha_token), publish_frame("broken.t"))["type"] == "PUBLISHED"
    assert any("token" in line.lower() for line in error_log_lines(b)), error_log_lines(b)

    write_tokens_file(creds.tokens_file, good_entries + [{"name": "zeta", "sha256": sha256_hex(zeta),
                                                          "publish": [">"]}])
    os.kill(b.proc.pid, signal.SIGHUP)
    wait_for(lambda: _status(b, zeta) == 200, 5, message="a good file accepted after broken ones")
    assert _status(b, alpha_token) == 200
    assert admin.stored("broken.t") == 6


# --------------------------------------------------------------------------------------------
# trusted identity


@pytest.mark.parametrize("mode", MODES)
def test_principal_header_on_delivered_events(make_broker, tmp_path, mode):
    """Events published by an authenticated client (WS, by frame or header, and HTTP) carry
    `x-bus-principal: <name>` next to the client's own headers, as delivered and as stored."""
    b, creds, admin = start(make_broker, tmp_path, mode, {"billing": BILLING})
    sub = ws_authed(b, creds.tokens["admin"])
    assert request(sub, subscribe_frame("orders.created", "watch"))["type"] == "SUBSCRIBED"

    by_frame = ws_authed(b, creds.tokens["billing"])
    assert request(by_frame, publish_frame("orders.created", {"via": "frame"}, {"trace": "t1"}))["type"] == "PUBLISHED"
    by_header = ws_with_header(b, creds.tokens["billing"])
    assert request(by_header, publish_frame("orders.created", {"via": "header"}))["type"] == "PUBLISHED"
    status, _, body = HTTPAs(b, creds.tokens["billing"]).publish("orders.created", {"via": "http"}, {"src": "curl"})
    assert status == 200, body
    assert request(sub, publish_frame("orders.created", {"via": "admin"}))["type"] == "PUBLISHED"

    want = {
        "frame": {"trace": "t1", "x-bus-principal": "billing"},
        "header": {"x-bus-principal": "billing"},
        "http": {"src": "curl", "x-bus-principal": "billing"},
        "admin": {"x-bus-principal": "admin"},
    }
    delivered = {m["envelope"]["payload"]["via"]: m["envelope"].get("headers") for m in sub.recv_messages(4)}
    assert delivered == want, delivered
    stored = {e["payload"]["via"]: e.get("headers") for e in admin.events("orders.created")}
    assert stored == want, stored


@pytest.mark.parametrize("mode", ("none",) + MODES)
def test_forged_bus_headers_refused(make_broker, tmp_path, mode):
    """A PUBLISH (WS or HTTP) with a header named `x-bus-…` (in any letter case) is bad_request
    in every mode, also BUS_AUTH=none; nothing is stored and the connection keeps working."""
    if mode == "none":
        b = make_broker()
        ws, http, reader = b.ws(), HTTPAs(b, None), HTTPAs(b, None)
    else:
        b, creds, reader = start(make_broker, tmp_path, mode, {"billing": BILLING})
        ws, http = ws_authed(b, creds.tokens["billing"]), HTTPAs(b, creds.tokens["billing"])
    for headers in ({"x-bus-principal": "admin"}, {"x-bus-principal": "billing"},
                    {"trace": "t", "x-bus-anything": "1"}, {"x-bus-": "v"},
                    {"X-Bus-Principal": "admin"}, {"x-BUS-principal": "admin"}):  # header names: any case
        reply = request(ws, publish_frame("orders.created", {"forged": True}, headers))
        assert_error(reply, "bad_request")
        assert_http_error(http.publish("orders.created", {"forged": True}, headers), 400, "bad_request")
    assert reader.stored("orders.created") == 0
    assert request(ws, publish_frame("orders.created", {"ok": True}, {"x-busy": "fine"}))["type"] == "PUBLISHED"
    assert reader.stored("orders.created") == 1


# --------------------------------------------------------------------------------------------
# rate limits


@pytest.mark.parametrize("mode", ("token", "es256"))
def test_publish_rate_limit(make_broker, tmp_path, mode):
    """`rate` publishes per second per principal (token bucket, burst = rate): beyond it a WS
    PUBLISH gets ERROR rate_limited with retry_after_ms (rid echoed) and an HTTP publish 429
    with retry_after_ms and Retry-After; the bucket is shared by the principal's connections;
    waiting retry_after_ms lifts it; refused publishes store nothing; no `rate` = unlimited."""
    b, creds, admin = start(make_broker, tmp_path, mode, {
        "fast": {"publish": [">"], "rate": 2},
        "slow": {"publish": [">"], "rate": 1},
        "free": {"publish": [">"]},
    })
    ws = ws_authed(b, creds.tokens["fast"])
    rids = [f"rl-{i}" for i in range(8)]
    for rid in rids:
        ws.send({**publish_frame("rate.ws", {"rid": rid}), "rid": rid})
    replies = [ws._await_reply(("PUBLISHED", "ERROR"), 5.0) for _ in rids]
    assert sorted(r["rid"] for r in replies) == sorted(rids)
    accepted = [r for r in replies if r["type"] == "PUBLISHED"]
    limited = [r for r in replies if r["type"] == "ERROR"]
    assert 2 <= len(accepted) < 8 and limited, replies
    for r in limited:
        assert r["code"] == "rate_limited" and isinstance(r.get("retry_after_ms"), int), r
        assert 0 < r["retry_after_ms"] <= 2000, r
    assert admin.stored("rate.ws") == len(accepted)

    time.sleep(limited[-1]["retry_after_ms"] / 1000 + 0.05)
    assert request(ws, publish_frame("rate.ws"))["type"] == "PUBLISHED"

    # two connections of one principal share its bucket
    a, c = ws_authed(b, creds.tokens["fast"]), ws_authed(b, creds.tokens["fast"])
    time.sleep(1.1)  # a full bucket: 2
    for conn in (a, c):
        for i in range(3):
            conn.send({**publish_frame("rate.shared"), "rid": f"sh-{i}"})
    both = [conn._await_reply(("PUBLISHED", "ERROR"), 5.0) for conn in (a, c) for _ in range(3)]
    assert sum(r["type"] == "PUBLISHED" for r in both) < 6, both
    assert all(r["type"] == "PUBLISHED" or r["code"] == "rate_limited" for r in both), both

    slow = HTTPAs(b, creds.tokens["slow"])
    results = [slow.publish("rate.http", {"i": i}) for i in range(5)]
    ok = [r for r in results if r[0] == 200]
    over = [r for r in results if r[0] == 429]
    assert ok and over and len(ok) + len(over) == 5, [(r[0], r[2]) for r in results]
    status, headers, body = over[-1]
    assert body["error"]["code"] == "rate_limited" and 0 < body["error"]["retry_after_ms"] <= 2000, body
    assert int(headers.get("Retry-After", "0")) >= 1, dict(headers)
    time.sleep(body["error"]["retry_after_ms"] / 1000 + 0.05)
    assert slow.publish("rate.http", {"after": True})[0] == 200
    assert admin.stored("rate.http") == len(ok) + 1

    free = ws_authed(b, creds.tokens["free"])
    assert len(free.publish_many("rate.free", [{"i": i} for i in range(50)])) == 50
    wait_for(lambda: refusals(b).get("rate_limited", 0) >= len(limited) + len(over), 5, 0.1,
             "bus_auth_refusals_total{reason=rate_limited} counting the refusals")


# --------------------------------------------------------------------------------------------
# audit and metrics


def _audit(admin: HTTPAs) -> list[dict]:
    return [e["payload"] for e in admin.events(AUDIT_TOPIC)
            if isinstance(e["payload"], dict) and e["payload"].get("kind") == "auth.refused"]


def test_refusals_audited_with_rate_limit_and_counted(make_broker, tmp_path):
    """Refusals are recorded on system.bus.audit (kind auth.refused with principal or address,
    reason, action, topic) — frames, HTTP requests and admin routes alike — but a flood of 200
    refused frames makes far fewer than 200 records (a later record carries `suppressed`);
    bus_auth_refusals_total counts every one of them."""
    b, creds, admin = start(make_broker, tmp_path, "token", {"billing": BILLING},
                            BUS_AUTH_TIMEOUT_MS="30000")
    before = refusals(b)

    # unauthenticated: HTTP and WS, recorded by address
    assert_http_error(HTTPAs(b, None).raw("GET", "/topics"), 401, "unauthorized")
    anon = b.ws()
    for i in range(200):
        anon.send({**publish_frame("secret.anon"), "rid": f"a-{i}"})
    assert all(anon._await_reply(("ERROR",), 5.0)["code"] == "unauthorized" for _ in range(200))

    # authenticated: forbidden, recorded by principal
    ws = ws_authed(b, creds.tokens["billing"])
    assert_error(request(ws, publish_frame("secret.one")), "forbidden")
    for i in range(200):
        ws.send({**publish_frame("secret.flood"), "rid": f"f-{i}"})
    assert all(ws._await_reply(("ERROR",), 5.0)["code"] == "forbidden" for _ in range(200))
    time.sleep(1.2)
    assert_error(request(ws, publish_frame("secret.flood")), "forbidden")
    assert_error(request(ws, subscribe_frame("secret.sub", "billing")), "forbidden")
    assert_http_error(HTTPAs(b, creds.tokens["billing"]).raw("POST", "/topics", {"topic": "secret.cfg"}),
                      403, "forbidden")

    def records():
        recs = _audit(admin)
        assert any(r.get("principal") == "billing" and r.get("topic") == "secret.sub" for r in recs), recs
        # the refused POST /topics (its record may name the topic or none)
        assert any(r.get("principal") == "billing" and r.get("topic") in (None, "", "secret.cfg")
                   and r.get("reason") and r.get("action") for r in recs), recs[-3:]
        return recs

    recs = wait_for(records, 5, 0.1, "the audit records of the refusals")
    for r in recs:
        assert r.get("principal") or r.get("address"), r
        assert r.get("reason"), r
    one = [r for r in recs if r.get("topic") == "secret.one"]
    assert one and one[0]["principal"] == "billing" and "publish" in str(one[0].get("action")), one
    assert any(r.get("address") and not r.get("principal") for r in recs), recs
    sub = [r for r in recs if r.get("topic") == "secret.sub"][0]
    assert "subscribe" in str(sub.get("action")), sub

    flood = [r for r in recs if r.get("principal") == "billing"]
    assert 1 <= len(flood) <= 40, f"{len(flood)} audit records for ~203 refusals: {flood[:5]}"
    assert any(int(r.get("suppressed") or 0) > 0 for r in flood), flood
    by_address = [r for r in recs if r.get("address")]
    assert 1 <= len(by_address) <= 40, f"{len(by_address)} audit records for 201 refusals"

    after = wait_for(lambda: (m := refusals(b)) and m.get("forbidden", 0) - before.get("forbidden", 0) >= 204 and m,
                     5, 0.1, "bus_auth_refusals_total{reason=forbidden} up by the 204 refusals")
    assert after.get("unauthorized", 0) - before.get("unauthorized", 0) >= 201, (before, after)


# --------------------------------------------------------------------------------------------
# configuration errors


def _run(env_overrides: dict, tmp_path) -> tuple[int, str]:
    binary = os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN))
    env = dict(os.environ, BUS_HOST="127.0.0.1", BUS_PORT=str(free_port()), BUS_DATA_DIR=str(tmp_path))
    env.pop("MONGO_URL", None)
    for k in [k for k in env if k.startswith(("BUS_AUTH", "BUS_TOKENS", "BUS_JWT", "BUS_TLS"))]:
        env.pop(k)
    env.update(env_overrides)
    proc = subprocess.run([binary], env=env, capture_output=True, text=True, timeout=20)
    return proc.returncode, proc.stderr + proc.stdout


def _tokens(tmp_path, content) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _entry(**over) -> dict:
    return {"name": "billing", "sha256": sha256_hex("secret"), "publish": ["orders.>"], **over}


JWT_SECRET_OK = "s3cret-" * 6  # long enough: these cases are about another variable

CONFIG_ERRORS = {
    "token without file": (lambda p: {"BUS_AUTH": "token"}, ("BUS_TOKENS_FILE",)),
    "tokens file missing": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": str(p / "nope.json")},
                            ("BUS_TOKENS_FILE",)),
    "tokens file is a directory": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": str(p)}, ("BUS_TOKENS_FILE",)),
    "tokens file not json": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": _tokens(p, "{tokens: [")},
                             ("BUS_TOKENS_FILE",)),
    "tokens not a list": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": _tokens(p, {"tokens": "x"})},
                          ("BUS_TOKENS_FILE",)),
    "entry without sha256": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": _tokens(
        p, {"tokens": [{"name": "billing", "publish": [">"]}]})}, ("BUS_TOKENS_FILE",)),
    "sha256 not 64 hex": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": _tokens(
        p, {"tokens": [_entry(sha256="abc123")]})}, ("BUS_TOKENS_FILE",)),
    "pattern > not last": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": _tokens(
        p, {"tokens": [_entry(publish=["orders.>.x"])]})}, ("BUS_TOKENS_FILE",)),
    "pattern empty segment": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": _tokens(
        p, {"tokens": [_entry(subscribe=["orders..created"])]})}, ("BUS_TOKENS_FILE",)),
    "pattern wildcard inside a segment": (lambda p: {"BUS_AUTH": "token", "BUS_TOKENS_FILE": _tokens(
        p, {"tokens": [_entry(groups=["bill*"])]})}, ("BUS_TOKENS_FILE",)),
    "jwt without a key": (lambda p: {"BUS_AUTH": "jwt"}, ("BUS_JWT_SECRET", "BUS_JWT_PUBLIC_KEY_FILE")),
    "jwt with both keys": (lambda p: {"BUS_AUTH": "jwt", "BUS_JWT_SECRET": JWT_SECRET_OK,
                                      "BUS_JWT_PUBLIC_KEY_FILE": str(p / "k.pem")},
                           ("BUS_JWT_SECRET", "BUS_JWT_PUBLIC_KEY_FILE")),
    "jwt secret too short": (lambda p: {"BUS_AUTH": "jwt", "BUS_JWT_SECRET": "short"}, ("BUS_JWT_SECRET",)),
    "key file missing": (lambda p: {"BUS_AUTH": "jwt", "BUS_JWT_PUBLIC_KEY_FILE": str(p / "missing.pem")},
                         ("BUS_JWT_PUBLIC_KEY_FILE",)),
    "key file unreadable (a directory)": (lambda p: {"BUS_AUTH": "jwt", "BUS_JWT_PUBLIC_KEY_FILE": str(p)},
                                          ("BUS_JWT_PUBLIC_KEY_FILE",)),
    "key file not a key": (lambda p: {"BUS_AUTH": "jwt", "BUS_JWT_PUBLIC_KEY_FILE": _tokens(p, "not a pem")},
                           ("BUS_JWT_PUBLIC_KEY_FILE",)),
    "auth timeout not a number": (lambda p: {"BUS_AUTH": "jwt", "BUS_JWT_SECRET": JWT_SECRET_OK,
                                             "BUS_AUTH_TIMEOUT_MS": "soon"}, ("BUS_AUTH_TIMEOUT_MS",)),
    "negative skew": (lambda p: {"BUS_AUTH": "jwt", "BUS_JWT_SECRET": JWT_SECRET_OK,
                                 "BUS_JWT_SKEW_MS": "-1"}, ("BUS_JWT_SKEW_MS",)),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_configuration_errors_exit_2_naming_the_variable(case, tmp_path):
    """A missing or broken tokens file, a bad pattern or hash in it, a JWT mode without exactly
    one key, an unreadable or non-PEM key file, a bad timeout or skew: exit status 2 and
    "configuration error" naming the variable, before serving anything."""
    make_env, named = CONFIG_ERRORS[case]
    code, output = _run(make_env(tmp_path), tmp_path)
    assert code == 2, (code, output)
    assert "configuration error" in output and any(n in output for n in named), output
