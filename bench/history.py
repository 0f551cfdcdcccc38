"""History reports (issue 16, deliverable 6): a year and more of history loaded through the store's
bulk path, then ``GET …/csat/report`` measured over HTTP against a real ``csatdist serve``.

    .venv/bin/python bench/history.py                          # 400 days x 20,000/day, SQLite
    .venv/bin/python bench/history.py --backends sqlite,postgresql
    .venv/bin/python bench/history.py --quick                  # 30 days x 2,000/day, < 1 min

The dataset: ``--days`` x ``--per-day`` answers (every day the same count, so the totals are
known), ``--agents`` agents and ``--skills`` skills, generated with NumPy from a fixed seed:
answer times follow a daytime curve (UTC), busier agents take more answers, each agent answers
mostly in a home skill, and scores lean to 4-5. The answers are aggregated to 5-minute bucket
rows (bucket end, skill, agent, s1..s5) and added with ``store.import_history`` a few days at a
time, which is what the demo's ``seed_history`` does.

Reports are not cached by the server (the report route renders every request afresh; only the
distribution reuses rendered responses), so every timed request is a full computation; ``to``
still moves by 15 minutes from one request to the next so that no cache could answer.

PostgreSQL runs in a database of its own (``csatdist_histbench_<pid>`` on
``--postgres-url``'s server), dropped at the end. Results: bench/results/history.json (the
quick mode writes history-quick.json), and docs/performance.md's "History reports" section
through bench/report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from csatdist import __version__  # noqa: E402
from csatdist.buckets import BUCKET_MS, MINUTE_MS  # noqa: E402
from csatdist.store import Store, open_store  # noqa: E402

ACCOUNT = "histbench"
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
QUARTER_MS = 15 * MINUTE_MS
#: Answers per hour of the day (UTC): night, a morning ramp, a business-day plateau, evening.
HOUR_WEIGHTS = np.array(
    [1, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 12, 11, 12, 12, 11, 10, 8, 6, 5, 4, 3, 2, 1],
    dtype=np.float64,
)
SCORE_WEIGHTS = np.array([0.04, 0.04, 0.08, 0.26, 0.58])
TARGETS = {  # issue 16: p50 of (a) and (b) on SQLite; PostgreSQL within 1.5x; server RSS
    "a_skills_90d_day_berlin": 50.0,
    "b_account_400d_month": 20.0,
}
RSS_TARGET_MB = 400.0
PG_FACTOR = 1.5


# the dataset --------------------------------------------------------------------------------


@dataclass
class Dataset:
    days: int
    per_day: int
    agents: int
    skills: int
    end_ms: int
    seed: int = 16
    chunk_days: int = 5
    #: filled by :func:`generate`: counts of scores 1..5 over everything generated
    totals: np.ndarray = field(default_factory=lambda: np.zeros(5, dtype=np.int64))
    bucket_rows: int = 0

    @property
    def start_ms(self) -> int:
        return self.end_ms - self.days * DAY_MS

    @property
    def answers(self) -> int:
        return self.days * self.per_day

    def skill_ids(self) -> np.ndarray:
        return 1 + np.arange(self.skills, dtype=np.int64)

    def agent_ids(self) -> np.ndarray:
        return 1000 + np.arange(self.agents, dtype=np.int64)


def generate(data: Dataset) -> Iterator[np.ndarray]:
    """Bucket rows (bucket end, skill, agent, s1..s5), ``chunk_days`` days at a time, sorted;
    adds to ``data.totals`` and ``data.bucket_rows``."""
    rng = np.random.default_rng(data.seed)
    home = rng.integers(0, data.skills, data.agents)
    other = rng.integers(0, data.skills, data.agents)
    agent_weights = rng.permutation(1.0 / (np.arange(data.agents) + 20.0) ** 0.7)
    agent_weights /= agent_weights.sum()
    hour_p = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
    skill_ids, agent_ids = data.skill_ids(), data.agent_ids()
    data.totals[:] = 0
    data.bucket_rows = 0
    for first_day in range(0, data.days, data.chunk_days):
        n_days = min(data.chunk_days, data.days - first_day)
        n = n_days * data.per_day
        day = np.repeat(np.arange(first_day, first_day + n_days, dtype=np.int64), data.per_day)
        hour = rng.choice(24, n, p=hour_p).astype(np.int64)
        time_ms = data.start_ms + day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, n)
        agent = rng.choice(data.agents, n, p=agent_weights)
        skill = np.where(rng.random(n) < 0.85, home[agent], other[agent])
        score = rng.choice(5, n, p=SCORE_WEIGHTS)
        bucket = (time_ms - data.start_ms) // BUCKET_MS  # start_ms is 5-minute aligned
        key = (bucket * data.skills + skill) * data.agents + agent
        unique, inverse = np.unique(key, return_inverse=True)
        counts = np.bincount(inverse * 5 + score, minlength=len(unique) * 5).reshape(-1, 5)
        agent_of, rest = unique % data.agents, unique // data.agents
        skill_of, bucket_of = rest % data.skills, rest // data.skills
        rows = np.column_stack(
            (
                data.start_ms + (bucket_of + 1) * BUCKET_MS,
                skill_ids[skill_of],
                agent_ids[agent_of],
                counts,
            )
        ).astype(np.int64)
        data.totals += counts.sum(axis=0)
        data.bucket_rows += len(rows)
        yield rows


def load(store: Store, data: Dataset, account_id: str = ACCOUNT) -> dict[str, Any]:
    """Generate and import the dataset; the seconds spent generating and in import_history."""
    generating = importing = 0.0
    chunks = generate(data)
    while True:
        t0 = time.perf_counter()
        rows = next(chunks, None)
        generating += time.perf_counter() - t0
        if rows is None:
            break
        t0 = time.perf_counter()
        store.import_history(account_id, rows.tolist())
        importing += time.perf_counter() - t0
    return {
        "answers": int(data.totals.sum()),
        "bucket_rows": data.bucket_rows,
        "generate_s": round(generating, 1),
        "import_history_s": round(importing, 1),
        "load_s": round(generating + importing, 1),
        "answers_per_s": round(int(data.totals.sum()) / importing) if importing else None,
    }


# the queries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    days: int
    params: dict[str, str]
    #: a body of megabytes: the quick mode times fewer
    heavy: bool = False


CASES = [
    Case(
        "a_skills_90d_day_berlin",
        "(a) 90 days by day, `skillIds=all`, Europe/Berlin (a DST change inside)",
        90,
        {"granularity": "day", "tz": "Europe/Berlin", "skillIds": "all"},
    ),
    Case(
        "b_account_400d_month",
        "(b) 400 days by month, account level, UTC",
        400,
        {"granularity": "month", "tz": "UTC"},
    ),
    # 168 hours x 2,001 series (the account and 2,000 agents) = 336,168 entries: more than the
    # report's MAX_SERIES_ENTRIES (100,000), so the server refuses it with a 400 (after counting
    # the first 595 agents, before summing; bench/report_refusal.py times that in-process);
    # timed as it is, and c2 is the longest hourly agentIds=all report that fits.
    Case(
        "c_agents_7d_hour",
        "(c) 7 days by hour, `agentIds=all` (refused: 336,168 series entries > 100,000)",
        7,
        {"granularity": "hour", "tz": "UTC", "agentIds": "all"},
    ),
    Case(
        "c2_agents_2d_hour",
        "(c2) 2 days by hour, `agentIds=all` (96,048 entries, 28 MB of JSON)",
        2,
        {"granularity": "hour", "tz": "UTC", "agentIds": "all"},
        heavy=True,
    ),
    Case(
        "d_account_30d_day_compare",
        "(d) 30 days by day, `compare=previous`, UTC",
        30,
        {"granularity": "day", "compare": "previous"},
    ),
    Case(
        "e_account_90d_day_kathmandu",
        "(e) 90 days by day, Asia/Kathmandu (+05:45)",
        90,
        {"granularity": "day", "tz": "Asia/Kathmandu"},
    ),
]


def ceil_quarter(t: int) -> int:
    return -(-t // QUARTER_MS) * QUARTER_MS


def query_params(case: Case, i: int, now_ms: int) -> dict[str, str]:
    """The i-th request of a case: ``to`` at the next quarter after now plus i quarters (so
    ``from`` is within the retained history even for 400 days), ``from`` ``days`` before."""
    to = ceil_quarter(now_ms) + i * QUARTER_MS
    return {"from": str(to - case.days * DAY_MS), "to": str(to), **case.params}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
        "n": len(ordered),
    }


def timed_get(client: httpx.Client, path: str, params: dict[str, str]) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    response = client.get(path, params=params)
    body = response.content
    return (time.perf_counter() - t0) * 1000, response.status_code, len(body)


def measure_http(
    url: str, token: str, cases: list[Case], warmup: int, timed: int, heavy_timed: int
) -> dict[str, Any]:
    path = f"/api/account/{ACCOUNT}/csat/report"
    results: dict[str, Any] = {}
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as client:
        now = int(time.time() * 1000)
        cold_ms, status, size = timed_get(client, path, query_params(cases[0], 0, now))
        results["cold_first_request"] = {
            "case": cases[0].name,
            "ms": round(cold_ms, 2),
            "status": status,
        }
        for case in cases:
            now = int(time.time() * 1000)
            first_ms, status, size = timed_get(client, path, query_params(case, 1, now))
            for i in range(warmup):
                timed_get(client, path, query_params(case, 2 + i, now))
            samples, statuses = [], set()
            for i in range(heavy_timed if case.heavy else timed):
                ms, status, size = timed_get(client, path, query_params(case, 2 + warmup + i, now))
                samples.append(ms)
                statuses.add(status)
            results[case.name] = {
                **percentiles(samples),
                "first_ms": round(first_ms, 2),
                "status": sorted(statuses),
                "body_bytes": size,
                "load_during": [round(x, 2) for x in os.getloadavg()],
            }
            print(f"  {case.name:30} {results[case.name]}", flush=True)
    return results


# the server, its memory, the storage --------------------------------------------------------


def memory_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    value = {
        line.split(":")[0]: int(line.split()[1]) / 1024
        for line in status.splitlines()
        if line.startswith(("VmRSS:", "VmHWM:"))
    }
    return {"rss_mb": round(value["VmRSS"], 1), "peak_rss_mb": round(value["VmHWM"], 1)}


def create_read_key(database: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "csatdist",
            "keys",
            "create",
            "--account",
            ACCOUNT,
            "--scopes",
            "read",
            "--label",
            "history bench",
            "--json",
            "--database",
            database,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    created = json.loads(out)
    token = created.get("token") or created.get("key") or created.get("secret")
    if not isinstance(token, str):
        raise RuntimeError(f"no token in `keys create --json`: {sorted(created)}")
    return token


def sqlite_storage(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables: dict[str, int] = {}
        with contextlib.suppress(sqlite3.OperationalError):  # dbstat is optional
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                if name.startswith("history"):
                    tables[name] = int(size)
        rows = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("history", "history_pairs")
        }
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    total = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return {
        "database_bytes": total,
        "history_tables_bytes": sum(tables.values()) if tables else None,
        "tables_bytes": tables,
        "rows": rows,
    }


def postgres_storage(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE history")
        conn.execute("VACUUM ANALYZE history_pairs")
        tables = {
            t: int(conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0])  # type: ignore[index]
            for t in ("history", "history_pairs")
        }
        rows = {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in ("history", "history_pairs")
        }
        database = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return {
        "database_bytes": int(database[0]) if database else None,
        "history_tables_bytes": sum(tables.values()),
        "tables_bytes": tables,
        "rows": rows,
    }


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A new database on the server, dropped afterwards."""
    import psycopg

    name = f"csatdist_histbench_{os.getpid()}"
    base = server_url.rsplit("/", 1)[0]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# a run --------------------------------------------------------------------------------------


def run_backend(
    backend: str, database: str, sqlite_file: Path | None, data: Dataset, args: argparse.Namespace
) -> dict[str, Any]:
    from tests.helpers import start_server

    result: dict[str, Any] = {"load_before": [round(x, 2) for x in os.getloadavg()]}
    store = open_store(database)
    try:
        result["load"] = load(store, data)
    finally:
        store.close()
    print(f"  loaded: {result['load']}", flush=True)
    storage = postgres_storage(database) if sqlite_file is None else sqlite_storage(sqlite_file)
    per_million = 1_000_000 / data.answers
    storage["database_mb_per_million_answers"] = round(
        storage["database_bytes"] * per_million / 2**20, 1
    )
    if storage["history_tables_bytes"] is not None:
        storage["history_mb_per_million_answers"] = round(
            storage["history_tables_bytes"] * per_million / 2**20, 1
        )
    result["storage"] = storage
    print(f"  storage: {storage}", flush=True)
    token = create_read_key(database)
    log_path = Path(args.tmp) / f"server-{backend}.log"
    server = start_server(database, log_path, "--workers", "1", "--log-level", "warning")
    try:
        result["server_started"] = memory_mb(server.process.pid)
        result["http"] = measure_http(
            server.url,
            token,
            CASES,
            warmup=args.warmup,
            timed=args.requests,
            heavy_timed=args.heavy_requests,
        )
        result["server"] = memory_mb(server.process.pid)
    finally:
        server.stop()
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sqlite = result.get("sqlite")
    for backend in ("sqlite", "postgresql"):
        if backend not in result:
            continue
        run = result[backend]
        for case, target in TARGETS.items():
            p50 = run["http"][case]["p50_ms"]
            limit = target * (PG_FACTOR if backend == "postgresql" else 1.0)
            out[f"{backend}.{case}.p50_le_{limit:g}ms"] = {"p50_ms": p50, "met": p50 <= limit}
        peak = run["server"]["peak_rss_mb"]
        out[f"{backend}.server_peak_rss_le_{RSS_TARGET_MB:g}mb"] = {
            "peak_rss_mb": peak,
            "met": peak <= RSS_TARGET_MB,
        }
        if backend == "postgresql" and sqlite:
            for case in TARGETS:
                ratio = run["http"][case]["p50_ms"] / sqlite["http"][case]["p50_ms"]
                out[f"postgresql.{case}.within_{PG_FACTOR:g}x_sqlite"] = {
                    "ratio": round(ratio, 2),
                    "met": ratio <= PG_FACTOR,
                }
    return out


def machine() -> dict[str, Any]:
    return {
        "csatdist": __version__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def table(result: dict[str, Any]) -> list[str]:
    backends = [b for b in ("sqlite", "postgresql") if b in result]
    lines = ["| | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]

    def row(label: str, get: Any) -> None:
        cells = []
        for backend in backends:
            try:
                cells.append(str(get(result[backend])))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("load through import_history (s)", lambda r: r["load"]["load_s"])
    row("… answers/s", lambda r: f"{r['load']['answers_per_s']:,}")
    row(
        "history rows (history + pairs)",
        lambda r: "{history:,} + {history_pairs:,}".format(**r["storage"]["rows"]),
    )
    row(
        "storage per 1,000,000 answers (MB): history tables / database",
        lambda r: (
            f"{r['storage'].get('history_mb_per_million_answers', '-')} / "
            f"{r['storage']['database_mb_per_million_answers']}"
        ),
    )
    row(
        "cold first request, (a) (ms)",
        lambda r: r["http"]["cold_first_request"]["ms"],
    )
    for case in CASES:

        def cell(r: dict[str, Any], case: Case = case) -> str:
            h = r["http"][case.name]
            status = "" if h["status"] == [200] else f" (HTTP {h['status']})"
            mark = ""
            if case.name in TARGETS:
                slack = PG_FACTOR if r is result.get("postgresql") else 1.0
                limit = TARGETS[case.name] * slack
                mark = " ✓" if h["p50_ms"] <= limit else f" ✗ (target {limit:g})"
            return f"{h['p50_ms']} / {h['p90_ms']} / {h['p99_ms']}{status}{mark}"

        row(f"{case.label}: p50 / p90 / p99 (ms)", cell)
    row(
        "server RSS after / peak (MB)",
        lambda r: (
            f"{r['server']['rss_mb']} / {r['server']['peak_rss_mb']}"
            + (" ✓" if r["server"]["peak_rss_mb"] <= RSS_TARGET_MB else " ✗ (target 400)")
        ),
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--per-day", type=int, default=20_000)
    parser.add_argument("--agents", type=int, default=2_000)
    parser.add_argument("--skills", type=int, default=50)
    parser.add_argument("--backends", default="sqlite", help="sqlite, postgresql or both")
    parser.add_argument("--quick", action="store_true", help="30 days x 2,000/day, few requests")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--heavy-requests", type=int, default=30, help="for c2 (28 MB a reply)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CSATDIST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="A database on the server to connect to while creating and dropping the bench's own.",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.days, args.per_day = 30, 2000
        args.warmup, args.requests, args.heavy_requests = 2, 10, 3
    if bad := set(args.backends.split(",")) - {"sqlite", "postgresql"}:
        parser.error(f"unknown backends {sorted(bad)}")
    output = args.output or RESULTS / ("history-quick.json" if args.quick else "history.json")
    now = int(time.time() * 1000)
    end_ms = now - now % QUARTER_MS
    result: dict[str, Any] = {
        "dataset": {
            "days": args.days,
            "per_day": args.per_day,
            "answers": args.days * args.per_day,
            "agents": args.agents,
            "skills": args.skills,
            "end_ms": end_ms,
            "quick": args.quick,
        },
        "machine": machine(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "responses_cached": False,
        "targets": {
            **{f"{case}_p50_ms": t for case, t in TARGETS.items()},
            "server_peak_rss_mb": RSS_TARGET_MB,
            "postgresql_factor": PG_FACTOR,
        },
    }
    with tempfile.TemporaryDirectory(prefix="histbench-") as tmp:
        args.tmp = tmp
        for backend in args.backends.split(","):
            data = Dataset(args.days, args.per_day, args.agents, args.skills, end_ms)
            print(f"== {backend}: {data.answers:,} answers", flush=True)
            if backend == "sqlite":
                path = Path(tmp) / "history.db"
                result[backend] = run_backend(backend, str(path), path, data, args)
                path.unlink()
            else:
                with postgres_database(args.postgres_url) as url:
                    result[backend] = run_backend(backend, url, None, data, args)
            if result[backend]["load"]["answers"] != data.answers:
                raise SystemExit("the generated answers do not add up to days x per-day")
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["verdicts"] = verdicts(result)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print("\n".join(table(result)))
    for name, verdict in result["verdicts"].items():
        print(f"{'met ' if verdict['met'] else 'MISSED'} {name}: {verdict}")
    print(f"wrote {output}")
    if output == RESULTS / "history.json":  # docs/performance.md's "History reports"
        subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], check=True)


if __name__ == "__main__":
    main()
