"""Unique names for topics and groups, and the key -> partition rule (SPEC §2)."""

from __future__ import annotations

import uuid


def unique(prefix: str = "t") -> str:
    """A unique, valid topic / group name."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def js_hash(key: str) -> int:
    """The sketch's JavaScript hash: h = (h<<5)-h+c | 0 over UTF-16 code units (signed 32-bit)."""
    data = key.encode("utf-16-le")
    h = 0
    for i in range(0, len(data), 2):
        c = data[i] | (data[i + 1] << 8)
        h = (h * 31 + c) & 0xFFFFFFFF
    return h - (1 << 32) if h >= (1 << 31) else h


def partition_for(key: str, partitions: int) -> int:
    return abs(js_hash(key)) % partitions


def keys_for_partitions(partitions: int, per_partition: int = 5) -> list[str]:
    """Keys covering every partition evenly (`per_partition` keys each)."""
    by_p: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(v) < per_partition for v in by_p.values()):
        k = f"key-{i}"
        p = partition_for(k, partitions)
        if len(by_p[p]) < per_partition:
            by_p[p].append(k)
        i += 1
    return [k for p in range(partitions) for k in by_p[p]]
