"""Check ``make bench``'s speed-ups against each runner timed alone, in a fresh process of its own.

``benchmarks.run`` times PyTorch eager and every candidate in interleaved rounds in one process.
A speed-up measured that way could still be an artefact of sharing the process (allocator and
thread-pool state, one runtime's threads still spinning while the next runs). This script times
eager and each candidate *alone*, each in a new Python process, alternating eager and candidate
``--repeats`` times so that both see the same load, and compares the median alone-ratio with the
interleaved one. A ratio is consistent when the two agree within ``--tolerance`` (20 %).

Usage::

    .venv/bin/python -m benchmarks.run --models minilm --keep-work /tmp/vx-bench
    .venv/bin/python -m benchmarks.isolation --work /tmp/vx-bench/minilm --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from components.common.stage import markdown_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
EAGER = "pytorch_eager"


def _bench_model(name: str, batch: int) -> Any:
    """The same model and data ``benchmarks.run`` built (every builder is seeded)."""
    from benchmarks import run

    if name == "digits":
        return run.digits(max(batch, 8), Path(tempfile.mkdtemp(prefix="vx-iso-")))
    if name == "resnet50":
        return run.resnet50(max(batch, 8), int(os.environ.get("VX_IMAGE_SIZE", "224")))
    return run.transformer(name, max(batch, 8))


def child(work: Path, runner_name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time one runner alone at ``batch`` (this process runs nothing else)."""
    from components.common.data import Dataset
    from components.compile.candidates import read_manifest
    from components.select.benchmark import batch_feeds, measure_latency
    from components.select.runners import load_candidate_runner
    from components.verify.runners import Runner, TorchRunner

    manifest = read_manifest(work / "candidates")
    signature = manifest.model_signature()
    bm = _bench_model(work.name, batch)
    rename = dict(zip(list(bm.evaluation.inputs), signature.input_names, strict=True))
    data = Dataset({rename[k]: v for k, v in bm.evaluation.inputs.items()})
    runner: Runner
    if runner_name == EAGER:
        runner = TorchRunner(EAGER, bm.module, signature)
    else:
        cand = next(c for c in manifest.candidates if c.name == runner_name)
        runner = load_candidate_runner(cand, work / "candidates", signature)
    try:
        lat = measure_latency(
            runner,
            batch_feeds(data, batch),
            warmup=args.warmup,
            min_iterations=args.min_iterations,
            min_seconds=args.min_seconds,
        )
    finally:
        runner.close()
    return {"runner": runner_name, "p50_ms": lat.p50_ms, "throughput": lat.throughput, "iqr_pct": lat.iqr_pct}


def _time_alone(work: Path, runner_name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.isolation",
        "--child",
        runner_name,
        "--work",
        str(work),
        "--batch",
        str(batch),
        "--warmup",
        str(args.warmup),
        "--min-iterations",
        str(args.min_iterations),
        "--min-seconds",
        str(args.min_seconds),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"timing {runner_name} alone failed:\n{done.stderr[-2000:]}")
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    result: dict[str, Any] = json.loads(last)
    return result


def check(work: Path, results: Path, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Alone-vs-interleaved ratios for every candidate the bench measured at ``batch``."""
    bench = json.loads(results.read_text())
    interleaved = {
        name: by_batch[str(batch)]
        for name, by_batch in bench["ratios_vs_pytorch_eager"].items()
        if str(batch) in by_batch
    }
    names = [n for n in interleaved if n != EAGER]
    if args.runners:
        names = [n for n in names if n in args.runners]
    alone: dict[str, list[float]] = {n: [] for n in names}
    eager_runs: list[float] = []
    for r in range(args.repeats):
        for name in names:
            # Eager right before each candidate: the pair shares the machine's load of the moment.
            eager = _time_alone(work, EAGER, batch, args)["throughput"]
            cand = _time_alone(work, name, batch, args)["throughput"]
            eager_runs.append(eager)
            alone[name].append(cand / eager)
            print(f"repeat {r + 1}: {name} alone {cand / eager:.2f}x eager", flush=True)
    rows = []
    for name in names:
        ratio_alone = float(np.median(alone[name]))
        ratio_inter = float(interleaved[name]["ratio"])
        deviation = ratio_alone / ratio_inter - 1.0
        rows.append(
            {
                "runner": name,
                "interleaved_ratio": round(ratio_inter, 3),
                "interleaved_iqr": f"{interleaved[name]['p25']:.2f}-{interleaved[name]['p75']:.2f}",
                "alone_ratio_median": round(ratio_alone, 3),
                "alone_ratios": [round(x, 3) for x in alone[name]],
                "deviation_pct": round(100 * deviation, 1),
                "within_tolerance": abs(deviation) <= args.tolerance,
            }
        )
    return {
        "model": work.name,
        "batch": batch,
        "repeats": args.repeats,
        "tolerance": args.tolerance,
        "eager_alone_throughput": [round(x, 2) for x in eager_runs],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "all_within_tolerance": all(r["within_tolerance"] for r in rows),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--work", type=Path, required=True, help="a model's folder from benchmarks.run --keep-work"
    )
    p.add_argument(
        "--results", type=Path, default=None, help="its results JSON (default: results/<model>.json)"
    )
    p.add_argument("--batch", type=int, default=32)
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
        print(json.dumps(child(args.work, args.child, args.batch, args)))
        return 0
    results = args.results or args.out / f"{args.work.name}.json"
    outcome = check(args.work, results, args.batch, args)
    print(markdown_table(outcome["rows"]))
    print(
        f"load average: {outcome['load_average']}; all within ±{100 * args.tolerance:.0f} %: "
        f"{outcome['all_within_tolerance']}"
    )
    write_json(args.out / f"{args.work.name}_isolation_b{args.batch}.json", outcome)
    return 0 if outcome["all_within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
