"""Waiting on conditions with deadlines.

Waiting is always done on a condition with a deadline (`wait_for`); fixed sleeps are used only
to assert that something does *not* happen within a short window (`WS.expect_nothing`).
"""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_for(cond, timeout: float = 5.0, interval: float = 0.02, message: str = "condition"):
    """Poll `cond()` until it returns a truthy value; return that value. Fail at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except AssertionError as exc:  # allow conditions written as assertions
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last assertion: {last_exc})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)
