"""Check ``make bench``'s speed-ups against each runner timed alone, in a fresh process of its own.

``benchmarks.run`` times PyTorch eager and every candidate in interleaved rounds, each runner in a
worker process of its own (:mod:`vxdeploy.components.select.isolated`) while the measuring process says
which one runs when. This script checks that the ratios it reports hold up: it times eager and
each candidate *alone*, each in a new Python process started after the previous one exited, at
every batch size the bench reported, one batch size at a time in the sequence eager, candidate,
eager, next candidate, eager... (a candidate's alone-ratio is to the geometric mean of the eager
runs just before and just after it, so both sides see the same load; the order reverses on every
other repeat), ``--repeats`` times, and compares the median alone-ratio with the interleaved one for
every (runner, batch) pair. A ratio is consistent when the two agree within ``--tolerance``
(20 %); the exit status is 1 when any pair does not. The table is printed and the figures go to
``results/<model>_isolation.json``.

Usage::

    .venv/bin/python -m benchmarks.run --models minilm --keep-work /tmp/vx-bench
    .venv/bin/python -m benchmarks.isolation --work /tmp/vx-bench/minilm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.common.stage import markdown_table, write_json
from vxdeploy.components.select.isolated import MEASUREMENT_ENV

RESULTS = Path(__file__).resolve().parent / "results"
EAGER = "pytorch_eager"


def child(work: Path, runner_name: str, batches: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Time one runner alone at each of ``batches`` (this process runs nothing else)."""
    from benchmarks.models import EAGER_FILE, EVAL_FILE, eager_runner
    from vxdeploy.components.common.data import Dataset
    from vxdeploy.components.compile.candidates import read_manifest
    from vxdeploy.components.select.benchmark import batch_feeds, measure_latency
    from vxdeploy.components.select.runners import load_candidate_runner
    from vxdeploy.components.verify.runners import Runner

    manifest = read_manifest(work / "candidates")
    signature = manifest.model_signature()
    with np.load(work / EVAL_FILE) as npz:
        data = Dataset({k: npz[k] for k in npz.files})
    runner: Runner
    if runner_name == EAGER:
        runner = eager_runner(str(work / EAGER_FILE), signature)
    else:
        cand = next(c for c in manifest.candidates if c.name == runner_name)
        runner = load_candidate_runner(cand, work / "candidates", signature)
    out: dict[str, Any] = {"runner": runner_name, "batches": {}}
    try:
        for b in batches:
            if runner.max_batch is not None and b > runner.max_batch:
                continue
            lat = measure_latency(
                runner,
                batch_feeds(data, b),
                warmup=args.warmup,
                min_iterations=args.min_iterations,
                min_seconds=args.min_seconds,
            )
            out["batches"][str(b)] = {
                "p50_ms": lat.p50_ms,
                "throughput": lat.throughput,
                "iqr_pct": lat.iqr_pct,
            }
    finally:
        runner.close()
    return out


def _time_alone(work: Path, runner_name: str, batches: list[int], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.isolation",
        "--child",
        runner_name,
        "--work",
        str(work),
        "--batches",
        *[str(b) for b in batches],
        "--warmup",
        str(args.warmup),
        "--min-iterations",
        str(args.min_iterations),
        "--min-seconds",
        str(args.min_seconds),
    ]
    env = {**os.environ, **MEASUREMENT_ENV}  # as the bench's workers run
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"timing {runner_name} alone failed:\n{done.stderr[-2000:]}")
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    result: dict[str, Any] = json.loads(last)
    return result


def check(work: Path, results: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Alone-vs-interleaved ratios for every (candidate, batch) the bench reported."""
    bench = json.loads(results.read_text())
    interleaved: dict[str, dict[str, Any]] = {
        name: by_batch for name, by_batch in bench["ratios_vs_pytorch_eager"].items() if name != EAGER
    }
    if args.runners:
        interleaved = {n: v for n, v in interleaved.items() if n in args.runners}
    batches = sorted({int(b) for by_batch in interleaved.values() for b in by_batch})
    if args.batches:
        batches = [b for b in batches if b in args.batches]
    alone: dict[tuple[str, str], list[float]] = {}
    eager_runs: list[dict[str, float]] = []
    load: list[list[float]] = []
    for r in range(args.repeats):
        for b in batches:
            names = [n for n, by_batch in interleaved.items() if str(b) in by_batch]
            if r % 2:
                names.reverse()  # every candidate both early and late in a batch's sequence
            # Eager before and after each candidate, each in a fresh process: E C1 E C2 E ...; a
            # candidate's ratio is to the geometric mean of its two neighbours, so a load that
            # changes during the pair moves both sides alike.
            load.append([round(x, 2) for x in os.getloadavg()])
            before = _time_alone(work, EAGER, [b], args)["batches"].get(str(b))
            for name in names:
                cand = _time_alone(work, name, [b], args)["batches"].get(str(b))
                after = _time_alone(work, EAGER, [b], args)["batches"].get(str(b))
                if cand is None or before is None or after is None:
                    before = after
                    continue
                eager = float(np.sqrt(before["throughput"] * after["throughput"]))
                eager_runs.append({str(b): round(eager, 3)})
                ratio = cand["throughput"] / eager
                alone.setdefault((name, str(b)), []).append(ratio)
                print(
                    f"repeat {r + 1}: {name} b{b} alone {ratio:.2f}x eager "
                    f"(eager before/after {before['p50_ms']:.1f}/{after['p50_ms']:.1f} ms, "
                    f"load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
                before = after
    rows = []
    for (name, b), values in alone.items():
        inter = interleaved[name][b]
        ratio_alone = float(np.median(values))
        ratio_inter = float(inter["ratio"])
        deviation = ratio_inter / ratio_alone - 1.0
        rows.append(
            {
                "runner": name,
                "batch": int(b),
                "in_process_ratio": round(ratio_inter, 3),
                "in_process_iqr": f"{inter['p25']:.2f}-{inter['p75']:.2f}",
                "alone_ratio": round(ratio_alone, 3),
                "alone_ratios": [round(x, 3) for x in values],
                "diff_pct": round(100 * deviation, 1),
                "within_tolerance": abs(deviation) <= args.tolerance,
            }
        )
    rows.sort(key=lambda row: (row["runner"], row["batch"]))
    return {
        "model": work.name,
        "batches": batches,
        "repeats": args.repeats,
        "tolerance": args.tolerance,
        "bench_load_average": [bench.get("load_average_before"), bench.get("load_average_after")],
        "eager_alone_throughput": eager_runs,
        "load_average_per_pair": load,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "all_within_tolerance": bool(rows) and all(r["within_tolerance"] for r in rows),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--work", type=Path, required=True, help="a model's folder from benchmarks.run --keep-work"
    )
    p.add_argument(
        "--results", type=Path, default=None, help="its results JSON (default: results/<model>.json)"
    )
    p.add_argument("--batches", nargs="*", type=int, default=[], help="only these (default: all reported)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runners", nargs="*", default=[], help="only these candidates (default: all measured)")
    p.add_argument("--tolerance", type=float, default=0.20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-iterations", type=int, default=8)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.work, args.child, args.batches, args)))
        return 0
    results = args.results or args.out / f"{args.work.name}.json"
    outcome = check(args.work, results, args)
    table = [{k: v for k, v in row.items() if k != "alone_ratios"} for row in outcome["rows"]]
    print(markdown_table(table))
    print(
        f"load average per pair: {outcome['load_average_per_pair']}; "
        f"all within ±{100 * args.tolerance:.0f} %: {outcome['all_within_tolerance']}"
    )
    write_json(args.out / f"{args.work.name}_isolation.json", outcome)
    return 0 if outcome["all_within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
