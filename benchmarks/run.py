"""``make bench``: PyTorch eager FP32 against every serving candidate, on this machine.

For each model (the embedded digits CNN and a ResNet-50-sized CNN with random weights) the same
steps as the pipeline run: torch.export -> ONNX export with parity check -> INT8 Q/DQ
calibration -> every candidate built -> every candidate measured through the selection harness
against PyTorch eager in the same process -> the selection policy. A table is printed and the
figures, with ratios to PyTorch eager measured in the same run, go to ``benchmarks/results/``.

Usage::

    .venv/bin/python -m benchmarks.run                      # both models
    .venv/bin/python -m benchmarks.run --models resnet50 --min-iterations 5
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.models import resnet50_random, synthetic_images
from components.common import builtin
from components.common.config import (
    CompilationConfig,
    DataConfig,
    ExportConfig,
    QuantizationConfig,
    SelectionConfig,
)
from components.common.data import Dataset, load_dataset
from components.common.signature import signature_from_exported_program
from components.common.stage import markdown_table, write_json, write_text_atomic
from components.compile.build import CompileSources, build_candidates
from components.select.benchmark import BenchmarkResult
from components.select.policy import SelectionDecision, select_candidate
from components.select.runners import TorchRunner
from components.select.table import decision_markdown

RESULTS = Path(__file__).resolve().parent / "results"
CANDIDATES = [
    "onnxruntime_fp32",
    "onnxruntime_int8",
    "aoti",
    "tensorrt_fp32",
    "tensorrt_fp16",
    "tensorrt_int8",
]
TARGET_BATCH = 32
TARGET_SPEEDUP = 2.0
TARGET_COSINE = 0.99

log = logging.getLogger("benchmarks")


@dataclass
class BenchModel:
    """A model to benchmark: the eager module, an example input, and its data."""

    name: str
    module: nn.Module
    example: torch.Tensor
    evaluation: Dataset
    calibration: Dataset
    max_batch: int


def digits(eval_samples: int, work: Path) -> BenchModel:
    """The embedded digits CNN, its real held-out digits (with labels) and calibration digits."""
    pt2 = builtin.write_builtin("builtin://digits-cnn", work)
    program = torch.export.load(str(pt2))
    module = builtin.build_digits_cnn()
    assert isinstance(module, nn.Module)
    module.load_state_dict(program.state_dict)
    module.eval()
    signature = signature_from_exported_program(program)
    evaluation = load_dataset(builtin.write_builtin("builtin://digits-eval", work), signature, what="eval")
    calibration = load_dataset(
        builtin.write_builtin("builtin://digits-calibration", work), signature, what="calib"
    )
    return BenchModel(
        "digits", module, torch.zeros(2, 1, 8, 8), evaluation.take(eval_samples), calibration, max_batch=1024
    )


def resnet50(eval_samples: int, size: int) -> BenchModel:
    """ResNet-50's layout with random weights; smooth synthetic images (no labels)."""
    evaluation = Dataset({"input": synthetic_images(eval_samples, size, seed=1).numpy()})
    calibration = Dataset({"input": synthetic_images(64, size, seed=2).numpy()})
    return BenchModel(
        "resnet50", resnet50_random(size), torch.zeros(2, 3, size, size), evaluation, calibration, 64
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on, load included: the machine is shared."""
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def prepare(
    bm: BenchModel, work: Path, quantization: QuantizationConfig
) -> tuple[CompileSources, dict[str, Any]]:
    """torch.export, ONNX export (parity-checked) and INT8 calibration, as the pipeline does them."""
    from components.calibrate.int8 import calibrate_int8
    from components.export.onnx_export import export_onnx

    timings: dict[str, float] = {}
    start = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=bm.max_batch)
    program = torch.export.export(bm.module, (bm.example,), dynamic_shapes=({0: batch},))
    pt2 = work / "model.pt2"
    torch.export.save(program, str(pt2))
    signature = signature_from_exported_program(program)
    timings["torch_export_s"] = time.perf_counter() - start
    # The data is keyed by the model's own input name (a module's forward argument name).
    (name,) = signature.input_names
    bm.evaluation = Dataset({name: bm.evaluation.inputs["input"]}, bm.evaluation.labels)
    bm.calibration = Dataset({name: bm.calibration.inputs["input"]}, bm.calibration.labels)

    start = time.perf_counter()
    exported = export_onnx(pt2, "torch_export", signature, work / "onnx" / "model.onnx", ExportConfig(), None)
    timings["onnx_export_s"] = time.perf_counter() - start

    start = time.perf_counter()
    data_cfg = DataConfig(min_calibration_samples=1, warn_calibration_samples=1)
    calibrated = calibrate_int8(
        exported.onnx_path,
        exported.signature,
        bm.calibration,
        bm.evaluation,
        work / "qdq",
        quantization,
        data_cfg,
    )
    timings["calibration_s"] = time.perf_counter() - start
    # The benchmark measures the Q/DQ model even when calibration's gate rejected it: the
    # selection's own accuracy gate then decides, and the table shows by how much it missed.
    sources = CompileSources(
        exported.signature,
        exported.onnx_path,
        calibrated.model_path,
        source_path=pt2,
        source_format="torch_export",
    )
    calibration = {
        "accepted": calibrated.accepted,
        "reason": calibrated.reason,
        "summary": calibrated.summary(),
        "excluded_layers": calibrated.excluded_layers,
    }
    return sources, {"timings": {k: round(v, 2) for k, v in timings.items()}, "calibration": calibration}


def ratios(result: BenchmarkResult) -> dict[str, dict[str, float]]:
    """Throughput of each runner divided by PyTorch eager's at the same batch size, same run."""
    ref = result.reference
    if ref is None:
        return {}
    return {
        f.name: {
            str(b): round(lat.throughput / ref.latency[b].throughput, 3)
            for b, lat in sorted(f.latency.items())
            if b in ref.latency
        }
        for f in result.figures
        if f.latency
    }


def bench_model(bm: BenchModel, args: argparse.Namespace) -> dict[str, Any]:
    """Every step for one model; returns what goes to its JSON file."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix=f"vx-bench-{bm.name}-") as tmp:
        work = Path(tmp)
        quantization = QuantizationConfig(
            method=args.calibration_method,
            gate_samples=args.eval_samples,
            max_excluded_layers=args.max_excluded_layers,
            sensitivity_candidates=max(args.max_excluded_layers, 1) * 2,
        )
        sources, prep = prepare(bm, work, quantization)
        compilation = CompilationConfig(candidates=CANDIDATES, aoti_freezing=args.aoti_freezing)  # type: ignore[arg-type]
        start = time.perf_counter()
        manifest = build_candidates(work / "candidates", compilation, sources)
        build_s = time.perf_counter() - start
        selection = SelectionConfig(
            batch_sizes=args.batch_sizes,
            warmup_iterations=args.warmup,
            min_iterations=args.min_iterations,
            min_seconds=args.min_seconds,
            max_eval_samples=args.eval_samples,
        )
        from components.select.benchmark import benchmark_candidates

        reference = TorchRunner("pytorch_eager", bm.module, "cpu", list(bm.evaluation.inputs))
        start = time.perf_counter()
        result = benchmark_candidates(manifest, work / "candidates", reference, bm.evaluation, selection)
        measure_s = time.perf_counter() - start
        decision = select_candidate(result.figures, selection)
    load_after = os.getloadavg()
    return {
        "model": bm.name,
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "settings": {k: v for k, v in vars(args).items() if k != "models"},
        "preparation": prep,
        "build_s": round(build_s, 2),
        "measure_s": round(measure_s, 2),
        "candidates": [c.to_dict() for c in manifest.candidates],
        "ratios_vs_pytorch_eager": ratios(result),
        "benchmark": result.to_dict(),
        "decision": decision.to_dict(),
        "table_markdown": decision_markdown(result.figures, decision, result.batch_sizes),
        "_result": result,
        "_decision": decision,
    }


def target_check(result: BenchmarkResult, decision: SelectionDecision) -> dict[str, Any]:
    """The issue's target: the selected candidate >= 2x eager throughput at batch 32, cosine >= 0.99."""
    chosen = next((f for f in result.figures if f.name == decision.selected), None)
    ref = result.reference
    if chosen is None or ref is None or TARGET_BATCH not in chosen.latency or TARGET_BATCH not in ref.latency:
        return {"met": False, "why": "no selected candidate measured at batch 32"}
    speedup = chosen.latency[TARGET_BATCH].throughput / ref.latency[TARGET_BATCH].throughput
    cosine = chosen.accuracy.cosine_mean if chosen.accuracy else 0.0
    return {
        "selected": chosen.name,
        "speedup_b32": round(speedup, 3),
        "cosine": round(cosine, 6),
        "met": speedup >= TARGET_SPEEDUP and cosine >= TARGET_COSINE,
    }


def summary_rows(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for out in outcomes:
        for name, by_batch in out["ratios_vs_pytorch_eager"].items():
            row: dict[str, Any] = {"model": out["model"], "runner": name}
            row.update({f"x eager b{b}": v for b, v in by_batch.items()})
            row["selected"] = "yes" if name == out["decision"]["selected"] else ""
            rows.append(row)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--models", nargs="+", default=["digits", "resnet50"], choices=["digits", "resnet50"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--image-size", type=int, default=224, help="ResNet-50 input height and width")
    p.add_argument("--eval-samples", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-iterations", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument(
        "--max-excluded-layers", type=int, default=4, help="INT8 calibration's layer fallback limit"
    )
    p.add_argument("--aoti-freezing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--calibration-method",
        choices=["max", "entropy", "percentile"],
        default="max",
        help="INT8 calibration method (max: fastest; entropy took 2.5 min on ResNet-50 here)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="vx-bench-data-") as data_dir:
        for name in args.models:
            bm = (
                digits(args.eval_samples, Path(data_dir))
                if name == "digits"
                else resnet50(args.eval_samples, args.image_size)
            )
            print(f"\n## {name}\n", flush=True)
            outcome = bench_model(bm, args)
            result, decision = outcome.pop("_result"), outcome.pop("_decision")
            outcome["target"] = target_check(result, decision)
            print(outcome["table_markdown"], flush=True)
            before, after = outcome["load_average_before"], outcome["load_average_after"]
            print(f"load average before/after: {before} / {after}")
            print(
                f"target (selected >= {TARGET_SPEEDUP}x eager at batch {TARGET_BATCH}, "
                f"cosine >= {TARGET_COSINE}): {outcome['target']}",
                flush=True,
            )
            write_json(args.out / f"{name}.json", outcome)
            outcomes.append(outcome)
    summary = markdown_table(summary_rows(outcomes))
    write_text_atomic(args.out / "summary.md", summary)
    print("\n## Throughput vs PyTorch eager (same run)\n\n" + summary)
    print(f"results: {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
