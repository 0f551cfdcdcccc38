"""What a query's slot costs a worker of ``serve --workers N``: ``SharedLimiter.take`` then
``give_back`` (the file lock taken twice each), in a loop in one process, for one account again
and again and for 1,000 accounts in a random order (the ``tenants`` pattern), against other
source trees in alternating rounds (each round a fresh subprocess per variant).

    git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python bench/shared_limiter.py --variant before=/tmp/before/src --rounds 5

Prints each run and the medians (µs per take and give back); writes
bench/results/shared_limiter.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bench.run import RESULTS, code_variants, load_average  # noqa: E402

#: Run in a subprocess, with a variant's tree first on its path: prints {pattern: µs}.
_LOOP = """
import json, os, random, sys, tempfile, time
from pathlib import Path
from csatdist.shared import SharedLimiter
directory = Path(tempfile.mkdtemp())
name = f"csatdist-bench-{os.getpid()}"
owner = SharedLimiter(name, 10, 1000, directory / "l.lock", create=True)
worker = SharedLimiter(name, 10, 1000, directory / "l.lock")
accounts = [f"t{i:04d}" for i in range(1000)]
rng = random.Random(1)
patterns = {
    "one_account": ["t0001"] * 50000,
    "tenants": [rng.choice(accounts) for _ in range(50000)],
}
result = {}
for pattern, sequence in patterns.items():
    started = time.perf_counter()
    for account in sequence:
        worker.take(account)
        worker.give_back(account)
    result[pattern] = round((time.perf_counter() - started) / len(sequence) * 1e6, 2)
worker._close()
owner.unlink()
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    variants = code_variants(args.variant)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    names = list(variants)
    for number in range(args.rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            env = dict(os.environ)
            if variants[name]:
                env["PYTHONPATH"] = f"{variants[name]}{os.pathsep}{env.get('PYTHONPATH', '')}"
            output = subprocess.run(
                [sys.executable, "-c", _LOOP], env=env, capture_output=True, text=True, check=True
            ).stdout
            measured = {**json.loads(output), "load_average": load_average()}
            runs[name].append(measured)
            print(name, json.dumps(measured), flush=True)
    medians = {
        name: {
            pattern: statistics.median(run[pattern] for run in these)
            for pattern in ("one_account", "tenants")
        }
        for name, these in runs.items()
    }
    print("medians, µs per take and give back:", json.dumps(medians))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shared_limiter.json").write_text(
        json.dumps({"rounds": args.rounds, "medians": medians, "runs": runs}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
