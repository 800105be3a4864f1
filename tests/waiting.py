"""Bounded waiting for a condition to become true, instead of sleeping and hoping.

Owns only polling with a deadline; it must not retry actions or swallow the
predicate's own exceptions (a crashing predicate is a test failure).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


def _timeout_error(message: str, timeout: float, last: object) -> AssertionError:
    what = message or "condition"
    return AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timeout_error(message, timeout, value)
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """The blocking twin of wait_until, for sync tests; the predicate must be sync."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: close it so Python does not warn about it
            raise TypeError("wait_until_sync got an awaitable; use `await wait_until(...)`")
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timeout_error(message, timeout, value)
        time.sleep(interval)
