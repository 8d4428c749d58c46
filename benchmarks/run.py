"""``make bench``: PyTorch eager FP32 against every serving candidate, on this machine.

Models: the embedded digits CNN; a ResNet-50 trained on the bundled digits upsampled to 224 px;
all-MiniLM-L6-v2's pretrained sentence encoder at sequence 128 (``minilm``) and the same architecture
with random weights (``transformer``). For each the same steps as the pipeline run: torch.export ->
ONNX export with parity check -> INT8 calibration (static Q/DQ; dynamic INT8 for transformers) ->
every candidate built -> accuracy of every candidate, then eager and every candidate timed in
interleaved rounds, each runner in a worker process of its own -> the selection policy. A table is
printed and the figures, each ratio to PyTorch eager with its round-by-round spread, go to
``benchmarks/results/``.

Usage::

    .venv/bin/python -m benchmarks.run                      # digits, resnet50, minilm
    .venv/bin/python -m benchmarks.run --models minilm --keep-work /tmp/vx-bench
    .venv/bin/python -m benchmarks.isolation --work /tmp/vx-bench/minilm   # each runner alone
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.models import (
    EAGER_FILE,
    EVAL_FILE,
    digits_images,
    eager_runner,
    minilm_pretrained,
    resnet50_digits,
    sentence_batch,
    transformer_encoder,
)
from vxdeploy.components.common import builtin
from vxdeploy.components.common.config import (
    CompilationConfig,
    DataConfig,
    ExportConfig,
    QuantizationConfig,
    SelectionConfig,
)
from vxdeploy.components.common.data import Dataset, load_dataset
from vxdeploy.components.common.signature import signature_from_exported_program
from vxdeploy.components.common.stage import markdown_table, write_json, write_text_atomic
from vxdeploy.components.compile.build import CompileSources, build_candidates
from vxdeploy.components.select.benchmark import BenchmarkResult
from vxdeploy.components.select.policy import SelectionDecision, select_candidate
from vxdeploy.components.select.table import decision_markdown
from vxdeploy.components.verify.accuracy import resolve_output_metrics
from vxdeploy.components.verify.runners import TorchRunner

RESULTS = Path(__file__).resolve().parent / "results"
CANDIDATES = [
    "onnxruntime_fp32",
    "onnxruntime_int8",
    "onnxruntime_int8_dynamic",
    "aoti",
    "tensorrt_fp32",
    "tensorrt_fp16",
    "tensorrt_int8",
]
TARGET_BATCH = 32
TARGET_SPEEDUP = {"resnet50": 3.0, "minilm": 2.0, "transformer": 2.0}
"""The issue's goals: selected candidate vs eager at batch 32 (others: 2x)."""
TARGET_COSINE = 0.99
SEQ_LEN = 128

log = logging.getLogger("benchmarks")


@dataclass
class BenchModel:
    """A model to benchmark: the eager module, how to export it, and its data.

    ``args`` / ``kwargs`` are the example call (kwargs for Hugging Face style models) and
    ``dynamic`` the dims of each input that are dynamic (``{name: {axis: torch.export.Dim}}``).
    """

    name: str
    module: nn.Module
    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, torch.Tensor]
    dynamic: dict[str, dict[int, Any]]
    evaluation: Dataset
    calibration: Dataset
    task: str = "classification"
    weights: str = ""


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
    (name,) = signature.input_names
    return BenchModel(
        "digits",
        module,
        (torch.zeros(2, 1, 8, 8),),
        {},
        {name: {0: torch.export.Dim("batch", min=1, max=1024)}},
        evaluation.take(eval_samples),
        calibration,
        weights="trained (embedded digits CNN)",
    )


def resnet50(eval_samples: int, size: int) -> BenchModel:
    """ResNet-50 trained on the bundled digits upsampled to ``size`` (:func:`resnet50_digits`).

    Evaluated on the builtin's held-out digits with their labels; calibrated on training digits.
    """
    module, accuracy = resnet50_digits(size)
    x_train, _, x_eval, y_eval = builtin.digits_split()
    images = digits_images(x_eval[:eval_samples], size)
    calibration = digits_images(x_train[:64], size)
    return BenchModel(
        "resnet50",
        module,
        (torch.zeros(2, 3, size, size),),
        {},
        {"x": {0: torch.export.Dim("batch", min=1, max=64)}},
        Dataset({"x": images.numpy()}, y_eval[:eval_samples]),
        Dataset({"x": calibration.numpy()}),
        weights=(
            f"trained on the bundled 8x8 digits upsampled to {size} px "
            f"(FP32 top-1 {accuracy:.1%} on the {len(y_eval)} held-out digits)"
        ),
    )


def transformer(name: str, eval_samples: int) -> BenchModel:
    """A MiniLM-sized BERT encoder called with input_ids/attention_mask at sequence 128.

    ``minilm``: all-MiniLM-L6-v2's pretrained weights; ``transformer``: random weights. Inputs are
    pseudo-sentences (:func:`benchmarks.models.sentence_batch`); the task is embedding (cosine to FP32).
    """
    module = minilm_pretrained() if name == "minilm" else transformer_encoder()
    batch = torch.export.Dim("batch", min=1, max=64)

    def data(n: int, seed: int) -> dict[str, Any]:
        return {k: v.numpy() for k, v in sentence_batch(n, SEQ_LEN, seed=seed).items()}

    return BenchModel(
        name,
        module,
        (),
        dict(sentence_batch(2, SEQ_LEN, seed=0)),
        {"input_ids": {0: batch}, "attention_mask": {0: batch}},
        Dataset(data(eval_samples, 1)),
        Dataset(data(128, 2)),
        task="embedding",
        weights="pretrained all-MiniLM-L6-v2" if name == "minilm" else "random init (quantizes worse)",
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
    from vxdeploy.components.calibrate.int8 import calibrate_int8
    from vxdeploy.components.export.onnx_export import export_onnx

    timings: dict[str, float] = {}
    start = time.perf_counter()
    names = (
        list(bm.kwargs)
        or [p for p in inspect.signature(bm.module.forward).parameters if p != "self"][: len(bm.args)]
    )
    shapes: Any = (
        {k: bm.dynamic.get(k) for k in bm.kwargs} if bm.kwargs else tuple(bm.dynamic.get(n) for n in names)
    )
    program = torch.export.export(bm.module, bm.args, kwargs=bm.kwargs or None, dynamic_shapes=shapes)
    pt2 = work / "model.pt2"
    torch.export.save(program, str(pt2))
    signature = resolve_output_metrics(
        signature_from_exported_program(program), bm.task, {}, labels=bm.evaluation.labels is not None
    )
    timings["torch_export_s"] = time.perf_counter() - start
    # The data is keyed by the model's own input names (a module's forward argument names).
    rename = dict(zip(list(bm.evaluation.inputs), signature.input_names, strict=True))
    bm.evaluation = Dataset({rename[k]: v for k, v in bm.evaluation.inputs.items()}, bm.evaluation.labels)
    bm.calibration = Dataset({rename[k]: v for k, v in bm.calibration.inputs.items()}, bm.calibration.labels)

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
        task=bm.task,
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
        dynamic_path=None if calibrated.dynamic is None else calibrated.dynamic.model_path,
    )
    dynamic = calibrated.dynamic
    calibration = {
        "accepted": calibrated.accepted,
        "reason": calibrated.reason,
        "summary": calibrated.summary(),
        "excluded_layers": calibrated.excluded_layers,
        "timings_s": calibrated.timings_s,
        "dynamic": None
        if dynamic is None
        else {
            "accepted": dynamic.accepted,
            "reason": dynamic.reason,
            "min_cosine": dynamic.chosen.min_cosine,
            "excluded_layers": list(dynamic.chosen.excluded_layers),
            "fused_operators": dynamic.fused_operators,
        },
    }
    return sources, {"timings": {k: round(v, 2) for k, v in timings.items()}, "calibration": calibration}


def save_eager(bm: BenchModel, work: Path) -> Path:
    """The eager module (whole, pickled) and the evaluation inputs, for runners timed in other processes."""
    path = work / EAGER_FILE
    torch.save(bm.module, str(path))
    np.savez(work / EVAL_FILE, **bm.evaluation.inputs)  # type: ignore[arg-type]
    return path


def ratios(result: BenchmarkResult) -> dict[str, dict[str, dict[str, Any]]]:
    """Each runner's throughput ratio to PyTorch eager per batch size, from the same interleaved rounds.

    ``ratio`` is the median over rounds, ``p25``/``p75`` its interquartile range and ``verdict``
    whether the spread allows a claim (``faster`` / ``slower`` / ``not distinguishable``).
    """
    return {
        f.name: {
            str(b): {
                "ratio": round(v.ratio, 3),
                "p25": round(v.ratio_p25, 3),
                "p75": round(v.ratio_p75, 3),
                "verdict": v.verdict,
            }
            for b, v in sorted(f.speedup.items())
        }
        for f in result.figures
        if f.speedup
    }


def bench_model(bm: BenchModel, args: argparse.Namespace) -> dict[str, Any]:
    """Every step for one model; returns what goes to its JSON file."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix=f"vx-bench-{bm.name}-") as tmp:
        work = Path(tmp) if args.keep_work is None else args.keep_work / bm.name
        work.mkdir(parents=True, exist_ok=True)
        quantization = QuantizationConfig(
            method=args.calibration_method,
            gate_samples=args.eval_samples,
            max_excluded_layers=args.max_excluded_layers,
        )
        sources, prep = prepare(bm, work, quantization)
        compilation = CompilationConfig(candidates=args.candidates, aoti_freezing=args.aoti_freezing)
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
        from vxdeploy.components.select.benchmark import benchmark_candidates

        signature = manifest.model_signature()
        reference = TorchRunner("pytorch_eager", bm.module, signature)
        # Eager is timed in a process of its own like every candidate: saved whole, loaded there.
        eager_path = save_eager(bm, work)
        start = time.perf_counter()
        result = benchmark_candidates(
            manifest,
            work / "candidates",
            reference,
            bm.evaluation,
            selection,
            reference_opener=partial(eager_runner, str(eager_path), signature),
        )
        measure_s = time.perf_counter() - start
        decision = select_candidate(result.figures, selection)
    load_after = os.getloadavg()
    return {
        "model": bm.name,
        "weights": bm.weights,
        "task": bm.task,
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
        "work": str(work) if args.keep_work is not None else "",
        "_result": result,
        "_decision": decision,
    }


def target_check(name: str, result: BenchmarkResult, decision: SelectionDecision) -> dict[str, Any]:
    """The issue's goal: the selected candidate >= the target x eager at batch 32, outside the spread."""
    target = TARGET_SPEEDUP.get(name, 2.0)
    chosen = next((f for f in result.figures if f.name == decision.selected), None)
    if chosen is None or TARGET_BATCH not in chosen.speedup:
        return {
            "met": False,
            "target": target,
            "why": "no selected candidate measured against eager at batch 32",
        }
    versus = chosen.speedup[TARGET_BATCH]
    cosine = chosen.accuracy.cosine_mean if chosen.accuracy else 0.0
    return {
        "selected": chosen.name,
        "target": target,
        "speedup_b32": round(versus.ratio, 3),
        "speedup_b32_iqr": [round(versus.ratio_p25, 3), round(versus.ratio_p75, 3)],
        "verdict": versus.verdict,
        "cosine": round(cosine, 6),
        "met": versus.ratio_p25 >= target and cosine >= TARGET_COSINE,
    }


def summary_rows(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for out in outcomes:
        for name, by_batch in out["ratios_vs_pytorch_eager"].items():
            row: dict[str, Any] = {"model": out["model"], "runner": name}
            for b, v in by_batch.items():
                text = f"{v['ratio']:.2f}x ({v['p25']:.2f}-{v['p75']:.2f})"
                row[f"x eager b{b}"] = text if v["verdict"] != "not distinguishable" else f"~{text} n.d."
            row["selected"] = "yes" if name == out["decision"]["selected"] else ""
            rows.append(row)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--models",
        nargs="+",
        default=["digits", "resnet50", "minilm"],
        choices=["digits", "resnet50", "minilm", "transformer"],
    )
    p.add_argument(
        "--candidates",
        nargs="+",
        default=CANDIDATES,
        choices=CANDIDATES,
        help="serving candidates to build and time (default: all; TensorRT ones skip without a GPU)",
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--image-size", type=int, default=224, help="ResNet-50 input height and width")
    p.add_argument("--eval-samples", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-iterations", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument(
        "--max-excluded-layers", type=int, default=8, help="INT8 calibration's layer fallback limit"
    )
    p.add_argument("--aoti-freezing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--calibration-method",
        choices=["max", "entropy", "percentile"],
        default="max",
        help="INT8 calibration method (max: fastest; entropy took 2.5 min on ResNet-50 here)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--keep-work",
        type=Path,
        default=None,
        help="keep each model's work folder (candidates, manifest) here, for benchmarks.isolation",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="vx-bench-data-") as data_dir:
        for name in args.models:
            if name == "digits":
                bm = digits(args.eval_samples, Path(data_dir))
            elif name == "resnet50":
                bm = resnet50(args.eval_samples, args.image_size)
            else:
                bm = transformer(name, args.eval_samples)
            print(f"\n## {name}\n", flush=True)
            outcome = bench_model(bm, args)
            result, decision = outcome.pop("_result"), outcome.pop("_decision")
            outcome["target"] = target_check(name, result, decision)
            print(outcome["table_markdown"], flush=True)
            before, after = outcome["load_average_before"], outcome["load_average_after"]
            print(f"load average before/after: {before} / {after}")
            print(
                f"target (selected >= {outcome['target']['target']}x eager at batch {TARGET_BATCH} "
                f"outside the spread, cosine >= {TARGET_COSINE}): {outcome['target']}",
                flush=True,
            )
            write_json(args.out / f"{name}.json", outcome)
            outcomes.append(outcome)
    summary = markdown_table(summary_rows(outcomes))
    write_text_atomic(args.out / "summary.md", summary)
    print("\n## Throughput vs PyTorch eager (same run, interleaved rounds; IQR in brackets)\n\n" + summary)
    print(f"results: {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
