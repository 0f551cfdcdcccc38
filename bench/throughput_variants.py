"""Account-level throughput on ``tenants`` (SQLite, ``wrk -t1 -c8``, 10 s, ``--workers``: one
worker unless told): this code against the code in other source trees, in alternating rounds on
one database, so that a change of the machine's speed between two recorded runs is not taken
for a change of code.

    git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python bench/throughput_variants.py --variant before=/tmp/before/src --rounds 4

Each round starts ``csatdist serve --workers 1`` once per variant (``this``: this checkout's
code; ``NAME=SRC`` puts SRC first on the server's ``PYTHONPATH``; the order alternates), runs
``bench/run.py``'s ``wrk_throughput`` and stops it. Prints each run with the load average
before it and the median per variant; writes bench/results/throughput_variants.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bench.datasets import DATASETS, answers  # noqa: E402
from bench.run import (  # noqa: E402
    RESULTS,
    code_variants,
    ingest_direct,
    issue_tokens,
    load_average,
    throughput_with_workers,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    variants = code_variants(args.variant)
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        url = f"sqlite:///{tmp / 'tenants.db'}"
        data = list(answers(DATASETS["tenants"], int(time.time() * 1000)))
        print(ingest_direct(url, data), flush=True)
        tokens = issue_tokens(url, [account for account, _ in data])
        names = list(variants)
        for number in range(args.rounds):
            for name in names if number % 2 == 0 else names[::-1]:
                src = variants[name]
                load = load_average()
                measured = throughput_with_workers(
                    url,
                    tokens,
                    tmp / f"{name}.log",
                    args.workers,
                    10,
                    env={"PYTHONPATH": src} if src else None,
                )
                runs[name].append({"load_average": load, **measured})
                print(
                    name,
                    load,
                    measured.get("requests_per_s"),
                    measured.get("server_cpu_ms_per_request"),
                    flush=True,
                )
    result = {
        "dataset": "tenants",
        "workers": args.workers,
        "variants": variants,
        "median_requests_per_s": {
            name: statistics.median(float(r["requests_per_s"]) for r in measured_runs)
            for name, measured_runs in runs.items()
        },
        "runs": runs,
    }
    print(json.dumps(result["median_requests_per_s"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "throughput_variants.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
