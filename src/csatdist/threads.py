"""Waiting in async code without losing a cancellation.

Blocking calls from async code that a cancellation does not leave running behind
(:func:`finish_in_thread`), and an event waited for with a timeout (:func:`wait_event`).

``run_in_threadpool`` returns at once when the awaiting task is cancelled while the thread goes
on with the call. At shutdown that means a background job's store call can still be running when
the store is closed (on SQLite, a closed connection used by another thread can crash the
process). :func:`finish_in_thread` waits for the call to end before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")


async def finish_in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)`` in a worker thread; if cancelled, the call is still awaited to
    its end (its result or error dropped) before the cancellation propagates."""
    call = asyncio.ensure_future(run_in_threadpool(functools.partial(func, *args, **kwargs)))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await call
        raise


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed; whether it is set.

    Not ``asyncio.wait_for(event.wait(), seconds)``: on Python 3.11 that returns normally when
    a cancellation arrives just as the event is set or the time is up, so a loop around it
    never ends and a server's shutdown, which cancels it and waits, hangs for good (seen in
    CI). ``asyncio.timeout`` tells its own expiry from a cancellation by the cancel count.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
