"""Blocking calls from async code that a cancellation does not leave running behind.

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
