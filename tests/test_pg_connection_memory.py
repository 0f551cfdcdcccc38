"""PostgreSQL connections do not keep the memory of a large change (issue 14: the server held
~100 MB more after bench/abuse.py's attack than before it, on PostgreSQL only).

libpq grows a connection's input and output buffers to the largest message it carried and keeps
them so until the connection is closed: after a 10,000-answer batch's change (~600 KB packed,
twice that as text) every pooled connection that wrote or read it held 1-2 MB more for the rest
of its life. A connection that carried a change over ``connection_keep_bytes`` is now closed
after use and the pool opens a new one. Measured here as the C heap in use (glibc's
``mallinfo2``) after the store has written and read such a change, against before."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc

import pytest

from csatdist.store.pg_async import AsyncPointReads
from csatdist.store.postgres import PostgresStore
from tests import test_pg_fold
from tests.test_store import ans

pytestmark = pytest.mark.postgresql

# The PostgreSQL fold tests' fixtures: a schema of its own, and no fold in the background.
url = test_pg_fold.url
no_background_fold = test_pg_fold.no_background_fold

MIB = 1024 * 1024
#: Distinct counters in the large batch: 10,000 rows of 64 bytes, the size of a full batch's
#: change in bench/abuse.py's ingest flood (578 KB measured there).
LARGE = 10_000


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap_in_use() -> int:
    """Bytes the C allocator has handed out and not had back (glibc's ``mallinfo2``): where
    libpq's buffers are, which Python's own accounting does not see."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc's mallinfo2")
    libc.mallinfo2.restype = _MallInfo2
    gc.collect()
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _large_batch() -> list[object]:
    return [ans(f"large-{n}", skill=n % 50, agent=n) for n in range(LARGE)]


@pytest.mark.usefixtures("no_background_fold")
def test_a_pooled_connection_does_not_keep_the_buffers_of_a_large_change(url: str) -> None:
    store = PostgresStore(url, pool_size=1)  # one connection: it carries every statement
    try:
        store.record_answers("acme", [ans("small")])  # the connection's ordinary buffers
        store.account_changes("acme", 0)
        before = _heap_in_use()
        batch = _large_batch()
        store.record_answers("acme", batch)  # type: ignore[arg-type]
        assert store.account_changes("acme", 1).version == 2
        del batch
        kept = _heap_in_use() - before
    finally:
        store.close()
    # Before: 2-3 MB (the change written, 640 KB, and read back as text, 1.3 MB, each
    # rounded up to a power of two in the connection's buffers).
    assert kept < MIB, f"{kept / MIB:.1f} MB kept after a large change"


@pytest.mark.usefixtures("no_background_fold")
def test_a_point_read_connection_does_not_keep_the_buffer_of_a_large_change(url: str) -> None:
    store = PostgresStore(url, pool_size=1)
    try:
        store.record_answers("acme", [ans("small")])
        store.record_answers("acme", _large_batch())  # type: ignore[arg-type]

        async def read() -> int:
            reads = AsyncPointReads(url, max_size=1, connect_timeout=5)
            await reads.open()
            try:
                await reads.account_changes("acme", 2)  # no change: ordinary buffers
                before = _heap_in_use()
                changes = await reads.account_changes("acme", 0)  # the large one
                assert changes.version == 2
                del changes
                return _heap_in_use() - before
            finally:
                await reads.close()

        kept = asyncio.run(read())
    finally:
        store.close()
    # Before: 2 MB (1.3 MB of text in a buffer doubled up to it).
    assert kept < MIB, f"{kept / MIB:.1f} MB kept after a large change"


@pytest.mark.usefixtures("no_background_fold")
def test_a_pooled_connection_does_not_keep_the_buffer_of_a_large_batchs_ids(url: str) -> None:
    """10,000 answers of one agent, skill and 5-minute bucket: a change of one counter, but
    the batch's ids go out as one array parameter (~400 KB), twice. Before: 0.5 MB kept (the
    output buffer doubled up to it); a kept connection's ordinary buffers are far below 256 KB."""
    store = PostgresStore(url, pool_size=1)
    try:
        store.record_answers("acme", [ans("small")])
        before = _heap_in_use()
        batch = [ans(f"one-counter-answer-with-a-long-id-{n:08d}") for n in range(LARGE)]
        store.record_answers("acme", batch)
        del batch
        kept = _heap_in_use() - before
    finally:
        store.close()
    assert kept < MIB // 4, f"{kept / MIB:.2f} MB kept after a large batch's ids"
