"""The broker's audit topic (SPEC §8): decisions such as redeliveries, dead letters, gap skips
and lease moves, one record each."""

from __future__ import annotations

from support.broker import Broker

AUDIT_TOPIC = "system.bus.audit"


def audit(broker: Broker, kinds: tuple[str, ...], topic: str | None = None) -> list[dict]:
    """Audit payloads of the given kinds (optionally about `topic`), in offset order per
    partition."""
    status, body = broker.http("GET", f"/topics/{AUDIT_TOPIC}")
    if status == 404:
        return []
    assert status == 200, body
    out = []
    for p in body["partitions"]:
        for e in broker.read_all_events(AUDIT_TOPIC, p["partition"]):
            payload = e["payload"]
            if isinstance(payload, dict) and payload.get("kind") in kinds and (
                    topic is None or payload.get("topic") == topic):
                out.append(payload)
    return out
