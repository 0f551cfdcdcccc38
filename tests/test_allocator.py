"""The server's allocator policy gives freed response-sized blocks back to the system.

Each case runs in a fresh interpreter: a large block freed first (glibc then raises its mmap
threshold to that size), then 300 MiB of blocks with every tenth kept, as a burst of response
bodies leaves them: 1 MiB blocks (a large body, below the fixed threshold: from the heaps) or
5 MiB (above it: mappings of their own). Resident memory is read from /proc.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from csatdist import allocator

pytestmark = pytest.mark.skipif(
    allocator._libc() is None, reason="the C library is not glibc: nothing to tune"
)

SCRIPT = """
import json, os, sys
from csatdist import allocator
fixed = allocator.fix_mmap_threshold() if sys.argv[1] == "fix" else False
size = int(sys.argv[2])
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
start = rss_mb()
big = bytearray(16 * 2**20)
del big
blocks = [bytearray(size) for _ in range(300 * 2**20 // size)]
kept = blocks[::10]
del blocks
after_free = rss_mb()
allocator.trim()
after_trim = rss_mb()
print(json.dumps(dict(fixed=fixed, start=start, after_free=after_free, after_trim=after_trim)))
"""


def _run(mode: str, block_bytes: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(block_bytes)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


ABOVE = allocator.MMAP_THRESHOLD_BYTES + 2**20


def test_freed_blocks_stay_resident_by_default_until_trimmed() -> None:
    """The problem the policy exists for (and the control that shows this test can fail)."""
    measured = _run("default", ABOVE)
    assert measured["after_free"] - measured["start"] > 200, measured
    assert measured["after_trim"] - measured["start"] < 80, measured


def test_fixed_threshold_returns_freed_blocks_above_it_at_once() -> None:
    measured = _run("fix", ABOVE)
    assert measured["fixed"]
    assert measured["after_free"] - measured["start"] < 80, measured


def test_fixed_threshold_keeps_body_sized_blocks_in_the_heaps_until_trimmed() -> None:
    """A large body (1.6 MB on `large`) reuses the heaps' pages instead of faulting in a new
    mapping each time; what a burst leaves there goes back at the next trim."""
    assert allocator.MMAP_THRESHOLD_BYTES > 2**20
    measured = _run("fix", 2**20)
    assert measured["fixed"]
    assert measured["after_free"] - measured["start"] > 200, measured
    assert measured["after_trim"] - measured["start"] < 80, measured


FAULTS_SCRIPT = """
import ctypes, ctypes.util, json, os, resource, sys
from csatdist import allocator
if sys.argv[1] == "fix":
    allocator.fix_mmap_threshold()
else:  # the threshold alone, as before the trim threshold was raised
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(allocator.M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD_BYTES)
parts = [os.urandom(200) for _ in range(8_000)]  # a 1.6 MB body's entries
body = b"".join(parts)
del body
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):  # each body freed (its memory replaced) before the next is joined
    body = b"".join(parts)
    del body
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults_per_body": faults / 50}))
"""


def _faults(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return float(json.loads(out.stdout)["faults_per_body"])


def test_a_body_freed_at_the_heaps_top_leaves_its_pages_for_the_next() -> None:
    """A large body after a change is joined where the last one was freed: with glibc's trim
    threshold its ~400 pages went back and were faulted in again (0.5 ms of 1.6 MB), with the
    raised one they stay (at most the trim threshold per arena, two arenas)."""
    assert _faults("threshold-only") > 300  # the control: every page faulted in again
    assert _faults("fix") < 20
