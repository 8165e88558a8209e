"""`sbctl` (SPEC §13) against a real broker: every subcommand, its JSON lines, and its exit
statuses (0 success, 1 an ERROR from the broker or no broker, 2 bad usage). `sbctl bench --quick`
runs its workloads to completion; its numbers are printed, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.broker import DEFAULT_BIN
from support.mongo import store_mode
from support.names import unique
from support.net import free_port
from support.waits import wait_for

SBCTL = Path(os.environ.get("SBCTL_BIN", str(Path(os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN))).parent / "sbctl")))


def sbctl(broker, *args, stdin: str | None = None, timeout: float = 60, url: bool = True) -> subprocess.CompletedProcess:
    if not SBCTL.exists():
        pytest.fail(f"sbctl not found: {SBCTL} (build it with `swift build` or set SBCTL_BIN)")
    argv = [str(SBCTL), *args]
    env = dict(os.environ)
    env.pop("BUS_URL", None)
    if broker is not None and url:
        env["BUS_URL"] = broker.ws_url
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


def ok(broker, *args, **kw) -> list[dict]:
    """Runs sbctl, expects exit 0, returns its JSON lines."""
    done = sbctl(broker, *args, **kw)
    assert done.returncode == 0, f"sbctl {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# pub / sub


def test_pub_then_sub_round_trip(broker):
    """pub prints the PUBLISHED fields; sub prints each envelope as a line and acks it."""
    topic = unique("cli")
    first = ok(broker, "pub", topic, '{"n":1}', "--key", "cust-7", "--header", "ct=json", "--header", "eq=a=b")
    assert first == [{"topic": topic, "partition": 0, "offset": 1, "id": first[0]["id"], "duplicate": False}]
    ok(broker, "pub", topic, "[1,2,3]", "--id", "order-2")
    ok(broker, "pub", topic, "-", stdin='{"from":"stdin"}\n')

    envelopes = ok(broker, "sub", topic, "--group", "billing", "--from", "earliest", "--count", "3", "--wait", "20")
    assert [e["offset"] for e in envelopes] == [1, 2, 3]
    assert [e["payload"] for e in envelopes] == [{"n": 1}, [1, 2, 3], {"from": "stdin"}]
    assert envelopes[0]["key"] == "cust-7"
    assert envelopes[0]["headers"] == {"ct": "json", "eq": "a=b"}, "a header value may hold '='"
    assert envelopes[0]["id"] == first[0]["id"] and envelopes[1]["id"] == "order-2"
    broker.wait_committed(topic, "billing", 3)  # acked, and the acks reached the broker before sbctl exited


def test_pub_with_the_same_id_is_a_duplicate(broker):
    topic = unique("cli")
    a = ok(broker, "pub", topic, '{"n":1}', "--id", "same")
    b = ok(broker, "pub", topic, '{"n":1}', "--id", "same")
    assert a[0]["duplicate"] is False and b[0]["duplicate"] is True
    assert a[0]["offset"] == b[0]["offset"] == 1
    assert broker.high_watermark(topic) == 1


def test_sub_no_ack_leaves_messages_to_the_group(broker):
    """--no-ack: the group gets the same messages again; --count takes exactly that many, so the
    broker never held more for the first sub (the next ones are first attempts)."""
    topic = unique("cli")
    for i in range(5):
        ok(broker, "pub", topic, json.dumps({"i": i}))
    unacked = ok(broker, "sub", topic, "--group", "g", "--from", "earliest", "--count", "2", "--no-ack", "--wait", "20")
    assert [e["offset"] for e in unacked] == [1, 2]
    again = ok(broker, "sub", topic, "--group", "g", "--count", "5", "--wait", "20")
    assert sorted(e["offset"] for e in again) == [1, 2, 3, 4, 5]
    broker.wait_committed(topic, "g", 5)
    stats = broker.http("GET", "/stats")[1]
    row = next(g for g in stats["groups"] if g["topic"] == topic and g["group"] == "g")
    assert row["redeliveries"] == 2, "only the two unacked messages came back"


def test_sub_ephemeral_tail_from_an_offset(broker):
    topic = unique("cli")
    for i in range(4):
        ok(broker, "pub", topic, json.dumps({"i": i}))
    tail = ok(broker, "sub", topic, "--from", "offset:3", "--count", "2", "--wait", "20")
    assert [e["offset"] for e in tail] == [3, 4]
    assert broker.offsets(topic)["groups"] == [], "a tail commits nothing"


def test_pretty_output_is_indented_json(broker):
    topic = unique("cli")
    done = sbctl(broker, "pub", topic, '{"n":1}', "--pretty")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") > 3
    assert json.loads(done.stdout)["offset"] == 1


# --------------------------------------------------------------------------------------------
# topics / groups


def test_topics_create_describe_list(broker):
    topic = unique("cli")
    created = ok(
        broker, "topics", "create", topic, "--partitions", "3", "--max-attempts", "2", "--ack-timeout-ms", "5000",
        "--retention-ms", "60000", "--redelivery-backoff-ms", "100,200",
    )
    assert created == [
        {"topic": topic, "partitions": 3, "retentionMs": 60000, "maxAttempts": 2, "ackTimeoutMs": 5000, "redeliveryBackoffMs": [100, 200]}
    ]
    ok(broker, "pub", topic, '{"n":1}', "--key", "k")
    described = ok(broker, "topics", "describe", topic)
    assert described[0]["config"] == created[0]
    assert len(described[0]["partitions"]) == 3
    assert sum(p["highWatermark"] for p in described[0]["partitions"]) == 1
    listed = ok(broker, "topics", "list")
    assert created[0] in listed


def test_groups_offsets_then_reset_replays(broker):
    topic = unique("cli")
    for i in range(4):
        ok(broker, "pub", topic, json.dumps({"i": i}))
    ok(broker, "sub", topic, "--group", "g", "--from", "earliest", "--count", "4", "--wait", "20")
    broker.wait_committed(topic, "g", 4)
    assert ok(broker, "groups", "offsets", topic) == [
        {"topic": topic, "group": "g", "partition": 0, "committed": 4, "highWatermark": 4, "lag": 0}
    ]
    reset = ok(broker, "groups", "reset", "g", topic, "--to", "offset:2")
    assert reset == [{"topic": topic, "group": "g", "partitions": [{"partition": 0, "committed": 1}]}]
    replayed = ok(broker, "sub", topic, "--group", "g", "--count", "3", "--wait", "20")
    assert [e["offset"] for e in replayed] == [2, 3, 4]


# --------------------------------------------------------------------------------------------
# dlq


def _dead_letters(broker, topic, n):
    """n events that fail their only attempt (maxAttempts 1, delivered and never acked)."""
    ok(broker, "topics", "create", topic, "--max-attempts", "1")
    for i in range(n):
        ok(broker, "pub", topic, json.dumps({"i": i}), "--key", f"k{i}", "--header", "ct=json")
    ok(broker, "sub", topic, "--group", "work", "--from", "earliest", "--count", str(n), "--no-ack", "--wait", "20")


def test_dlq_list_and_redrive_twice(broker):
    topic = unique("cli")
    _dead_letters(broker, topic, 2)
    wait_for(lambda: broker.high_watermark(f"{topic}.DLQ") == 2, timeout=10)

    listed = ok(broker, "dlq", "list", topic)
    assert [d["offset"] for d in listed] == [1, 2]
    by_origin = sorted(listed, key=lambda d: d["headers"]["x-original-offset"])  # dead-lettered in any order
    assert [d["payload"] for d in by_origin] == [{"i": 0}, {"i": 1}]
    assert [d["headers"]["x-original-offset"] for d in by_origin] == ["1", "2"]
    assert all(d["headers"]["x-original-topic"] == topic and d["headers"]["x-attempts"] == "1" for d in listed)
    assert ok(broker, "dlq", "list", topic, "--limit", "1") == listed[:1]

    assert ok(broker, "dlq", "list", topic, "--group", "work") == listed
    assert ok(broker, "dlq", "list", topic, "--group", "other") == []

    redriven = ok(broker, "dlq", "redrive", topic)
    assert sorted(r["deadLetter"]["offset"] for r in redriven) == [1, 2]
    assert all(r["published"]["duplicate"] is False and r["published"]["topic"] == topic for r in redriven)
    assert broker.high_watermark(topic) == 4
    back = broker.read_events(topic, from_=3)
    assert sorted(e["payload"]["i"] for e in back) == [0, 1]
    assert {e["key"] for e in back} == {"k0", "k1"}
    assert all(e["headers"] == {"ct": "json"} for e in back), "the dead-letter headers are dropped, the others kept"

    again = ok(broker, "dlq", "redrive", topic, "--group", "work")
    assert len(again) == 2 and all(r["published"]["duplicate"] for r in again), "derived ids: stored once"
    assert ok(broker, "dlq", "redrive", topic, "--group", "other") == []
    assert broker.high_watermark(topic) == 4

    assert ok(broker, "dlq", "purge", topic) == [{"topic": topic, "purged": 2}]
    assert ok(broker, "dlq", "list", topic) == []
    assert ok(broker, "dlq", "redrive", topic) == []


def test_dlq_of_a_topic_without_dead_letters(broker):
    topic = unique("cli")
    ok(broker, "pub", topic, "1")
    assert ok(broker, "dlq", "list", topic) == []
    assert ok(broker, "dlq", "redrive", topic) == []
    assert ok(broker, "dlq", "purge", topic) == [{"topic": topic, "purged": 0}]
    for command in ("list", "redrive", "purge"):
        missing = sbctl(broker, "dlq", command, unique("nosuch"))
        assert missing.returncode == 1 and "not_found" in missing.stderr, (command, missing.stderr)


# --------------------------------------------------------------------------------------------
# exit statuses


@pytest.mark.parametrize(
    "args, says",
    [
        (["pub"], "Missing expected argument"),
        (["pub", "t", "{not json"], "not valid JSON"),
        (["pub", "t", "1", "--header", "novalue"], "name=value"),
        (["sub", "t", "--from", "yesterday"], "--from"),
        (["sub", "t", "--count", "0"], "--count"),
        (["sub", "t", "--wait", "3"], "--wait needs --count"),
        (["topics", "describe", "bad/name"], "may only hold"),
        (["topics", "create", "t", "--redelivery-backoff-ms", "1,x"], "comma-separated"),
        (["groups", "reset", "g", "t"], "--to"),
        (["pub", "t", "1", "--url", "ftp://host"], "scheme"),
        (["bench", "--compare", "/bin/true"], "--compare needs --broker"),
        (["bench", "--runs", "0"], "--runs must be at least 1"),
        (["nosuch"], "Unexpected argument"),
    ],
)
def test_bad_usage_exits_2(args, says):
    done = sbctl(None, *args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert says in done.stderr
    assert done.stdout == ""


def test_help_exits_0():
    done = sbctl(None, "--help")
    assert done.returncode == 0 and "pub" in done.stdout and "bench" in done.stdout


def test_broker_errors_exit_1_with_the_code(broker):
    bad = sbctl(broker, "pub", "bad topic", "1")
    assert bad.returncode == 1 and bad.stderr.startswith("error: bad_request:"), bad.stderr
    missing = sbctl(broker, "topics", "describe", unique("nosuch"))
    assert missing.returncode == 1 and missing.stderr.startswith("error: not_found:"), missing.stderr
    refused = sbctl(broker, "topics", "create", unique("cli"), "--partitions", "0")
    assert refused.returncode == 1 and refused.stderr.startswith("error: bad_request:"), refused.stderr
    assert bad.stdout == missing.stdout == refused.stdout == ""


def test_no_broker_exits_1(broker):
    port = free_port()
    done = sbctl(None, "pub", "t", "1", "--url", f"ws://127.0.0.1:{port}/ws", "--timeout", "1")
    assert done.returncode == 1 and "error: unavailable:" in done.stderr, done.stderr
    done = sbctl(None, "topics", "list", "--url", f"http://127.0.0.1:{port}", "--timeout", "1")
    assert done.returncode == 1 and "error: unavailable:" in done.stderr, done.stderr
    done = sbctl(None, "bench", "w1", "--quick", "--url", f"ws://127.0.0.1:{port}/ws", "--timeout", "1")
    assert done.returncode == 1 and "error: unavailable:" in done.stderr, done.stderr


# --------------------------------------------------------------------------------------------
# bench


def _bench_lines(done) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.skipif(store_mode() != "sqlite", reason="starts its own brokers on the embedded store; MongoDB mode runs the --url form")
def test_bench_quick_starts_two_brokers_and_compares():
    """W1, W2, W3 at --quick sizes on two broker processes started by sbctl, with ratios."""
    binary = os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN))
    done = sbctl(None, "bench", "--quick", "--broker", binary, "--compare", binary, timeout=300)
    print(done.stdout)  # the figures, for the log; never asserted
    lines = _bench_lines(done)
    assert [(line["workload"], "ratio" in line) for line in lines] == [
        (w, r) for w in ("w1", "w2", "w3") for r in (False, False, True)
    ]
    runs = [line for line in lines if "ratio" not in line]
    w1, w2, w3 = runs[0], runs[2], runs[4]
    assert w1["events"] == 5000 and "broker_cpu_us_per_event" in w1 and "p99" in w1["latency_ms"]
    assert w2["missing"] == 0 and "broker_cpu_us_per_delivery" in w2
    assert w3["missing"] == 0 and w3["connections"] == 200 and "broker_kb_per_connection" in w3
    # Context switches are read from the broker's threads in /proc: its event loops sleep
    # between W2's paced events, so there are some in every workload that waits.
    assert w1["broker_context_switches_per_event"] > 0
    assert w2["broker_context_switches_per_delivery"] > 0
    assert w3["broker_context_switches_per_delivery"] > 0


@pytest.mark.skipif(store_mode() != "sqlite", reason="starts its own brokers on the embedded store; MongoDB mode runs the --url form")
def test_bench_runs_take_turns_and_end_with_median_min_max():
    """--runs 2: each run's two brokers and ratio, then a summary per binary and of the ratios."""
    binary = os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN))
    done = sbctl(None, "bench", "w1", "--quick", "--events", "1000", "--runs", "2", "--broker", binary, "--compare", binary, timeout=300)
    print(done.stdout)
    lines = _bench_lines(done)
    assert [(line.get("run"), line.get("summary"), "ratio" in line) for line in lines] == [
        (1, None, False), (1, None, False), (1, None, True),
        (2, None, False), (2, None, False), (2, None, True),
        (None, "broker", False), (None, "compare", False), (None, "ratio", False),
    ]
    runs = [line for line in lines if "run" in line and "ratio" not in line]
    assert all(line["events"] == 1000 for line in runs)
    broker_summary = lines[6]
    assert broker_summary["runs"] == 2 and broker_summary["binary"] == binary
    cpu = [line["broker_cpu_us_per_event"] for line in runs]
    figure = broker_summary["broker_cpu_us_per_event"]
    # Both binaries are the same file: the summary of "broker" covers the runs it made.
    assert figure["min"] <= figure["median"] <= figure["max"]
    assert min(cpu) <= figure["min"] and figure["max"] <= max(cpu)
    p99 = lines[8]["latency_ms"]["p99"]
    assert p99["min"] <= p99["median"] <= p99["max"]


def test_bench_quick_against_a_url(broker):
    """W1 and W2 against a running broker (on MongoDB in that mode): no CPU figures then."""
    for workload in ("w1", "w2"):
        done = sbctl(broker, "bench", workload, "--quick", timeout=300)
        print(done.stdout)
        [line] = _bench_lines(done)
        assert line["workload"] == workload and line["url"] == broker.ws_url
        assert "broker_cpu_s" not in line and not any(key.startswith("broker_context_switches") for key in line)
        assert line.get("missing", 0) == 0
