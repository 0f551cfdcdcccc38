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
tens of MB) still go back on ``free``. The trim threshold stays glibc's 128 KiB: raised to
4 MiB, a body freed at a heap's top stayed there and the next faulted nothing in (about 1.5 ms
less over HTTP for the largest body), but ``malloc_trim`` does not give back a thread arena's
top, so up to 4 MiB per arena stayed resident: 20-25 MB more at the end of
``bench/abuse.py``'s recovery, past its guarantee in one run of two.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # fixed: see the module's docstring


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
    """Keep large blocks in their own mappings for the life of the process. True if applied."""
    libc = _libc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not applied:
        log.warning("could not fix the allocator's mmap threshold; memory may not shrink")
    return applied


def trim() -> bool:
    """Give the heaps' free memory back to the system. True if any was returned."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
