"""The C allocator's policy for a long-running server (glibc only; elsewhere nothing happens).

glibc serves blocks above its mmap threshold with their own mappings, returned to the system
on ``free``. After the first such block is freed it raises the threshold (up to 32 MiB), so
later response bodies and count arrays come from the per-thread heaps instead, which keep
what is freed: measured under attack (``bench/results/abuse.md``), a server's resident memory
rose to ~1 GB and stayed there. A fixed threshold turns the raising off (same attack: peak
~400 MB, back to ~240 MB afterwards), and a periodic trim returns the heaps' free memory.

The threshold is 4 MiB, not glibc's starting 128 KiB: a block in a mapping of its own is
page-faulted in afresh every time, and a large body after a change (1.6 MB for
``skillIds=all&agentIds=all`` on ``large``, joined once, hashed, then copied into 256 KiB
slices to send) paid about 800 faults for it — 1-2 ms of a 5-6 ms request over HTTP
(docs/performance.md). Blocks up to 4 MiB now reuse the heaps' pages; what a burst leaves
there is returned by the trim within seconds, and larger blocks (reports, interval bodies of
tens of MB) still go back on ``free``.

The trim threshold is 4 MiB too, with at most two arenas. At glibc's 128 KiB, a body freed at
a heap's top went back to the system at once and the next body faulted its ~400 pages in
again: 0.5 ms of the 0.7 its join took, 1 ms of a 2.6 ms render in all (measured in-process,
``bench/after_change.py``). Raised, up to 4 MiB stays at each heap's top; ``malloc_trim``
does not give back a thread arena's top, so with glibc's default of eight arenas per core
that was 20-25 MB more at the end of ``bench/abuse.py``'s recovery, past its guarantee in
one run of two. Two arenas (the main one and one more, shared by every thread) bound it at
8 MiB; threads allocate mostly while holding the GIL, one at a time, so they seldom contend
for an arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # fixed: see the module's docstring
TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024
ARENA_MAX = 2


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - only glibc (and compatibles) have both
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def fix_mmap_threshold() -> bool:
    """Keep large blocks in their own mappings for the life of the process, and body-sized
    blocks freed at a heap's top there (two heaps at most). True if applied."""
    libc = _libc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    applied = applied and bool(libc.mallopt(M_ARENA_MAX, ARENA_MAX))
    applied = applied and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if not applied:
        log.warning("could not fix the allocator's mmap threshold; memory may not shrink")
    return applied


def trim() -> bool:
    """Give the heaps' free memory back to the system. True if any was returned."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
