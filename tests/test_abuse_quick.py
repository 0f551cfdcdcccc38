"""The quick variant of ``bench/abuse.py``: issue 14's attacks all at once (garbage ingests, a
login flood, stalled readers of large bodies, an ingest flood on one account) against a real
``csatdist serve`` while a victim account polls and ingests. Only the guarantees are checked
here; latencies depend on the machine and are reported by the full benchmark.

One run (about 25 s) serves every test of the module, with one worker and with two (serve's
default on two cores; each worker's memory counted, and what each keeps by design).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[1, 2], ids=["one worker", "two workers"])
def attacked(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("abuse")
    output = tmp / "abuse.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "abuse.py"),
            "--quick",
            "--workers",
            str(request.param),
            "--output",
            str(output),
            "--cache-dir",
            str(tmp / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert output.exists(), completed.stdout[-3000:] + completed.stderr[-3000:]
    run: dict[str, Any] = orjson.loads(output.read_bytes())["sqlite"]["runs"][0]
    run["_output"] = completed.stdout[-4000:]
    return run


def holds(run: dict[str, Any], name: str) -> None:
    check = run["verdict"][name]
    assert check["holds"], f"{name}: {check.get('measured')}\n{run['_output']}"


def test_no_500_under_attack(attacked: dict[str, Any]) -> None:
    holds(attacked, "no 500 responses")
    holds(attacked, "server stays up and answers the victim")


def test_the_victims_counts_are_exact(attacked: dict[str, Any]) -> None:
    holds(attacked, "victim counts exact")
    counts = attacked["victim_counts"]
    assert counts["acknowledged"] > 0, counts  # the victim did ingest under attack


def test_every_attack_ran(attacked: dict[str, Any]) -> None:
    attackers = attacked["phases"]["attack"]["attackers"]
    assert set(attackers) == {
        "garbage_ingest",
        "login_flood",
        "stalled_reader",
        "big_reader",
        "ingest_flood",
    }
    for kind, tally in attackers.items():
        assert tally["requests"] > 0, kind


def test_server_memory_peak_is_bounded(attacked: dict[str, Any]) -> None:
    holds(attacked, "RSS peak <= 1 GB")


def test_server_memory_comes_back_after_the_attack(attacked: dict[str, Any]) -> None:
    holds(attacked, "memory in use back within 10 % of its start plus the bounded caches")
