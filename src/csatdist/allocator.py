"""The C allocator's policy for a long-running server (glibc only; elsewhere nothing happens).

glibc serves blocks above its mmap threshold with their own mappings, returned to the system
on ``free``. After the first such block is freed it raises the threshold (up to 32 MiB), so
later response bodies and count arrays come from the per-thread heaps instead, which keep
what is freed: measured under attack (``bench/results/abuse.md``), a server's resident memory
rose to ~1 GB and stayed there. A fixed threshold turns the raising off (same attack: peak
~400 MB, back to ~240 MB afterwards), and a periodic trim returns the heaps' free tops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed


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
