"""Decoding and validating an ingest body, in-process: microseconds per answer for NDJSON bodies
of 5,000 answers of ``large`` (``answers.decode_body`` then ``validate_all``, what an ingest
does before its store write), for this code and the code in other source trees, in
alternating rounds of subprocesses so that both see the same machine.

    git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python bench/validate.py --variant before=/tmp/before/src --rounds 5

Prints each round and the median per variant (with the 1-minute load average before each
run); writes bench/results/validate.json. Nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bench.run import RESULTS, code_variants, load_average  # noqa: E402

ANSWERS = 100_000
BATCH = 5_000


def measure() -> dict[str, float]:
    """This process's code (whatever ``csatdist`` imports as): µs per answer, best of 3."""
    import orjson
    from bench.datasets import DATASETS, answers

    from csatdist.answers import AcceptanceWindow, decode_body, validate_all

    now_ms = int(time.time() * 1000)
    ((_, rows),) = answers(DATASETS["large"], now_ms)
    bodies = [
        b"\n".join(orjson.dumps(r) for r in rows[start : start + BATCH])
        for start in range(0, ANSWERS, BATCH)
    ]
    window = AcceptanceWindow(now_ms, 1445)
    best: dict[str, float] = {}
    for _ in range(3):
        decoding = validating = 0.0
        for body in bodies:
            started = time.perf_counter()
            items = decode_body(body, "application/x-ndjson", BATCH).items
            decoded = time.perf_counter()
            valid, rejected = validate_all(items, window)
            validating += time.perf_counter() - decoded
            decoding += decoded - started
            if len(valid) != len(items) or rejected:
                raise SystemExit(f"{len(rejected)} answers rejected: {rejected[:3]}")
        for name, seconds in (("decode_us", decoding), ("validate_us", validating)):
            best[name] = min(best.get(name, float("inf")), round(seconds * 1e6 / ANSWERS, 3))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure()))
        return
    variants = code_variants(args.variant)
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
    names = list(variants)
    for number in range(args.rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            src = variants[name]
            env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
            load = load_average()
            output = subprocess.run(
                [sys.executable, __file__, "--measure"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            figures = json.loads(output.strip().splitlines()[-1])
            runs[name].append({"load_average": load, **figures})
            print(name, load, figures, flush=True)
    result = {
        "answers": ANSWERS,
        "batch": BATCH,
        "variants": variants,
        "median": {
            name: {
                key: statistics.median(float(r[key]) for r in measured)  # type: ignore[arg-type]
                for key in ("decode_us", "validate_us")
            }
            for name, measured in runs.items()
        },
        "runs": runs,
    }
    for name, medians in result["median"].items():  # type: ignore[attr-defined]
        print(f"{name:10s} median µs per answer: {medians}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "validate.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
