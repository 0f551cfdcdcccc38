"""``bench/run.py``'s measurements of workers and restarts compute what they say, and
``bench/report.py`` renders them: the ratio of two workers to one and its ceiling from the CPU
figures, medians over restarts, the CPU accounting of a process tree from /proc, and the
tables of docs/performance.md. Quick: no server, no load; no timing is asserted."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run = _load("bench_run", ROOT / "bench" / "run.py")
report = _load("bench_report", ROOT / "bench" / "report.py")


def _run(requests_per_s: float, server_ms: float, **extra: float) -> dict[str, Any]:
    figures = {
        "requests_per_s": requests_per_s,
        "p50_ms": 2.0,
        "p99_ms": 9.0,
        "server_cpu_ms_per_request": server_ms,
        "client_cpu_ms_per_request": 0.1,
        "postgres_cpu_ms_per_request": 0.2,
        "server_cores": 0.9,
        "client_cores": 0.2,
        "postgres_cores": 0.0,
        "other_cores": 0.3,
        "machine_busy_cores": 1.4,
        "server_waited_for_cpu_s_per_s": 0.1,
        "rss_mb": 120.0,
        "seconds": 10,
        "load_average_before": [1.5, 1.0, 0.5],
    }
    return {**figures, **extra}


def _scaling(backend: str) -> dict[str, Any]:
    runs = {
        "1": [_run(2000.0, 0.4), _run(2200.0, 0.4), _run(1800.0, 0.5)],
        "2": [_run(3000.0, 0.45), _run(3600.0, 0.45), _run(3400.0, 0.5)],
    }
    return {"tool": "wrk", "rounds": 3, **run.scaling_summary(runs, backend), "runs": runs}


def test_scaling_ratio_and_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    sqlite = _scaling("sqlite")
    assert sqlite["median"]["1"]["requests_per_s"] == 2000
    assert sqlite["median"]["2"]["requests_per_s"] == 3400
    assert sqlite["ratio_2_to_1"] == 1.7
    assert sqlite["ratio_per_round"] == [1.5, 1.64, 1.89]
    # one worker: one core at 0.4 ms a request; two: 2 cores at 0.45 + 0.1 (wrk) ms a request
    assert sqlite["ratio_ceiling"] == round((2000 / 0.55) / (1000 / 0.4), 2)
    # on PostgreSQL the database's CPU shares the cores too
    one = min(1000 / 0.4, 2000 / 0.7)
    assert _scaling("postgresql")["ratio_ceiling"] == round((2000 / 0.75) / one, 2)


def test_restart_summary_takes_medians() -> None:
    entries = [
        {
            "listening_s": listening,
            "restart_to_ready_s": ready,
            "rss_mb": 100.0,
            "warm_up_progress": [[1.0, 10, 1001]],
            "first_query_ms": {"account_60": first, "t0000 account_60": 1.0},
        }
        for listening, ready, first in ((1.0, 4.0, 30.0), (1.2, 6.0, 10.0), (1.1, 5.0, 20.0))
    ]
    summary = run.restart_summary(entries)
    assert summary["restart_to_ready_s"] == 5.0
    assert summary["restart_to_ready_s_range"] == [4.0, 6.0]
    assert summary["listening_s"] == 1.1
    assert summary["warm_up_accounts"] == 1001
    assert summary["first_query_ms"] == {"account_60": 20.0, "t0000 account_60": 1.0}


def test_cpu_of_a_process_tree_from_proc() -> None:
    """The server's CPU counts its workers: a child burning CPU shows in its parent's tree."""
    burn = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'while 1: pass'])"
    parent = subprocess.Popen([sys.executable, "-c", burn])
    try:
        deadline = time.monotonic() + 10
        while len(run.process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = run.process_tree(parent.pid)
        assert tree[0] == parent.pid
        assert len(tree) == 2
        before = run.cpu_snapshot(parent.pid)
        time.sleep(0.5)
        after = run.cpu_snapshot(parent.pid)
        assert after["server_cpu_s"] > before["server_cpu_s"]
        assert after["machine_s"] > before["machine_s"]
        assert after["machine_busy_s"] >= before["machine_busy_s"]
    finally:
        for pid in reversed(run.process_tree(parent.pid)):
            os.kill(pid, 9)
        parent.wait(timeout=10)


def _machine() -> dict[str, Any]:
    return {"date": "2026-12-01", "cpus": 2, "python": "3.11", "sqlite": "3.40", "csatdist": "0"}


def test_report_renders_workers_and_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    tenants: dict[str, Any] = {"dataset": "tenants", "machine": _machine()}
    for backend in ("sqlite", "postgresql"):
        tenants[backend] = {
            "answers": 1_000_000,
            "load_average_start": [1.0, 0.5, 0.2],
            "load_average_end": [2.0, 1.5, 0.7],
            "throughput_workers": _scaling(backend),
        }
    lines = "\n".join(report.section(tenants))
    assert "load average (1 / 5 / 15 min) sqlite 1.0 / 0.5 / 0.2 at the start" in lines
    assert "| queries/s, 2 workers | 3400.0 | 3400.0 |" in lines
    assert "| 2 workers / 1 worker (target ≥ 1.7) | 1.7 ✓ | 1.7 ✓ |" in lines
    assert "| … each round | 1.5, 1.64, 1.89 | 1.5, 1.64, 1.89 |" in lines

    summary = run.restart_summary(
        [
            {
                "listening_s": 1.0,
                "restart_to_ready_s": 12.0,
                "rss_mb": 200.0,
                "first_query_ms": {"account_60": 20.0, "t0000 account_60": 1.5},
            }
        ]
    )
    combined: dict[str, Any] = {"dataset": "large+tenants", "machine": _machine()}
    combined["sqlite"] = {
        "answers": 2_000_000,
        "accounts": 1001,
        "ingest_direct": {"large": {"seconds": 30.0}, "tenants": {"seconds": 45.0}},
        "restart": {"warm_up": summary, "no_warm_up": {**summary, "restart_to_ready_s": 2.0}},
    }
    lines = "\n".join(report.large_tenants_section(combined))
    assert "(2,000,000 answers, 1,001 accounts)" in lines
    assert "| restart to ready (s), median (fastest to slowest) | 12.0 (12.0 to 12.0) ✗ |" in lines
    assert "| first account_60 on `large` (ms) | 20.0 | 20.0 |" in lines
    assert "| first t0000 account_60 (ms) | 1.5 | 1.5 |" in lines

    combined["before"] = {
        "commit": "870789d",
        "change": "the batched warm-up",
        "sqlite": {
            "restart_to_ready_s": 14.0,
            "restart_to_ready_s_range": [13.5, 14.5],
            "listening_s": 1.5,
            "load_averages": [1.0, 2.5],
        },
    }
    lines = " ".join(report.large_tenants_section(combined))
    assert (
        "Before the batched warm-up (870789d), the same command run just before these restarts:"
        " ready in sqlite 14.0 s (13.5 to 14.5; listening at 1.5 s; 1-minute load 1.0 to 2.5)"
        " with the warm-up"
    ) in lines


def test_a_run_of_the_tenants_without_wrk_is_refused_before_anything_is_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without wrk the tenants' throughput would be recorded as skipped over the last run's
    figures in bench/results: refused at once, naming the package."""
    monkeypatch.setattr(run.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "argv", ["run.py", "--set", "quick", "--datasets", "tenants"])
    monkeypatch.setattr(run, "run_dataset", lambda *a, **k: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as refused:
        run.main()
    assert refused.value.code == 2
    assert "apt-get install wrk" in capsys.readouterr().err


def test_a_run_on_one_store_keeps_the_other_stores_figures(tmp_path: Path) -> None:
    import orjson

    path = tmp_path / "tenants.json"
    assert run.kept_results(path, ["sqlite"]) == {}  # nothing recorded yet
    path.write_bytes(
        orjson.dumps({"dataset": "tenants", "sqlite": {"a": 1}, "postgresql": {"b": 2}})
    )
    assert run.kept_results(path, ["sqlite"]) == {"postgresql": {"b": 2}}
    assert run.kept_results(path, ["postgresql"]) == {"sqlite": {"a": 1}}
    assert run.kept_results(path, ["sqlite", "postgresql"]) == {}


def test_the_targets_table_marks_each_store_and_survives_missing_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    lines = report.targets_section()
    assert "| `tenants`, 2 workers / 1 worker | 1 process only | - | - |" in lines  # none run

    tenants: dict[str, Any] = {"dataset": "tenants", "machine": _machine()}
    for backend in ("sqlite", "postgresql"):
        tenants[backend] = {"throughput_workers": _scaling(backend)}
    tenants["postgresql"]["throughput_workers"]["median"]["1"]["requests_per_s"] = 1200.0
    large: dict[str, Any] = {"dataset": "large", "machine": _machine()}
    large["sqlite"] = {
        "ingest_http_ndjson": {"answers_per_s": 81_000},
        "server_rss_mb": 420.0,
        "http_queries_after_change": {
            "account_60": {"p50_ms": 1.0, "p99_ms": 2.0},
            "both_all_1440": {"p50_ms": 5.5, "p99_ms": 9.0},
        },
    }
    (tmp_path / "tenants.json").write_bytes(report.orjson.dumps(tenants))
    (tmp_path / "large.json").write_bytes(report.orjson.dumps(large))
    lines = report.targets_section()
    assert (
        "| `tenants`, 2 workers / 1 worker | 1 process only | 1.7 ✓ (≥ 1.7) | 1.7 ✓ (≥ 1.7) |"
        in (lines)
    )
    assert (
        "| `tenants`, one worker (requests/s) | PostgreSQL 608 | 2,000 | 1,200 ✗ (≥ 1,333) |"
        in (lines)
    )
    assert any("| 81,000 ✓ (≥ 80,000) | - |" in line for line in lines)
    assert any("p50 (ms) | 12.1 | 5.5 ✗ (≤ 5) | - |" in line for line in lines)
    assert "| server RSS on `large`, one worker (MB) | 144 | 420 ✗ (≤ 400) | - |" in lines
