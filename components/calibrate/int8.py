"""Explicit Q/DQ INT8 post-training quantization on real samples, gated on accuracy against FP32.

When the first Q/DQ model is over the accuracy budget, each quantized layer is tried in FP32
alone (leave-one-out) to rank the layers by how much keeping them in FP32 recovers; the
most sensitive are then excluded one more at a time until the budget holds or
``quantization.max_excluded_layers`` is reached. A model that cannot meet the budget is still
written, marked not accepted with the reason, so the run goes on without INT8.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.calibrate.backends import (
    NUM_QUANTIZED_BINS,
    CalibrationRanges,
    compute_ranges,
    qdq_activation_ranges,
    quantize_modelopt,
    quantize_onnxruntime,
    resolve_backend,
)
from components.calibrate.gate import GateMeasure, activation_errors, badness, measure, quantized_layers
from components.calibrate.samples import check_calibration_samples
from components.common.config import DataConfig, QuantizationConfig
from components.common.data import Dataset, check_inputs
from components.common.errors import DataError
from components.common.signature import ModelSignature
from components.common.stage import markdown_table, write_json, write_text_atomic
from components.export.runners import onnxruntime_session, run_onnxruntime

log = logging.getLogger(__name__)

QDQ_FILE = "model.onnx"
RANGES_FILE = "calibration_ranges.json"
TABLE_JSON = "accuracy.json"
TABLE_MD = "accuracy.md"


@dataclass
class CalibrationResult:
    """What calibration produced and whether the accuracy gate accepted it."""

    accepted: bool
    reason: str
    backend: str
    method: str
    out_dir: Path
    model_path: Path | None
    steps: list[GateMeasure]
    chosen_step: int
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    calibration_samples: int = 0
    eval_samples: int = 0
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def chosen(self) -> GateMeasure:
        return self.steps[self.chosen_step]

    @property
    def excluded_layers(self) -> list[str]:
        return list(self.chosen.excluded_layers)

    def table_rows(self) -> list[dict[str, Any]]:
        return [m.row(i) for i, m in enumerate(self.steps)]

    def summary(self) -> dict[str, Any]:
        """Headline figures (Metrics, the report's summary, the artifact's metadata)."""
        m = self.chosen
        return {
            "accepted": self.accepted,
            "backend": self.backend,
            "method": self.method,
            "fp32_accuracy": m.fp32_accuracy,
            "int8_accuracy": m.int8_accuracy,
            "top1_agreement": m.top1_agreement,
            "accuracy_drop_points": m.drop_points,
            "min_cosine": m.min_cosine,
            "excluded_layers": len(m.excluded_layers),
            "calibration_samples": self.calibration_samples,
            "eval_samples": self.eval_samples,
        }


def calibrate_int8(
    fp32_path: str | Path,
    signature: ModelSignature,
    calibration: Dataset,
    evaluation: Dataset,
    out_dir: str | Path,
    cfg: QuantizationConfig,
    data_cfg: DataConfig,
    *,
    accuracy_budget: float = 0.5,
    min_cosine: float = 0.99,
    task: str = "classification",
) -> CalibrationResult:
    """Quantize an FP32 ONNX model to explicit Q/DQ INT8 and gate it on accuracy.

    Args:
        fp32_path: The FP32 ONNX model (from the export stage).
        signature: Its signature; calibration and evaluation arrays must fit it.
        calibration: Calibration samples (capped at ``data.max_calibration_samples``).
        evaluation: Held-out samples, with labels when the task has them.
        out_dir: Receives ``model.onnx``, ``calibration_ranges.json``, ``accuracy.json`` and ``accuracy.md``.
        cfg: Backend, method, bins, per-channel, activation type, exclusion limits.
        data_cfg: Minimum, warning and maximum calibration sample counts.
        accuracy_budget: Largest drop allowed vs FP32, in percentage points.
        min_cosine: Smallest cosine similarity vs FP32 allowed on any output.
        task: ``classification`` measures top-1 (and accuracy with labels); other tasks cosine only.

    Returns:
        The result; ``accepted`` is False (with ``reason``) when the budget cannot be met.

    Raises:
        DataError: too few calibration samples, NaN/Inf, or arrays that do not fit the signature.
        ConfigError: a backend or method that cannot run here.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calib, notes = check_calibration_samples(
        calibration,
        signature,
        min_samples=data_cfg.min_calibration_samples,
        warn_samples=data_cfg.warn_calibration_samples,
        max_samples=data_cfg.max_calibration_samples,
    )
    eval_inputs = check_inputs(evaluation.take(cfg.gate_samples).inputs, signature, what="data.eval_uri")
    labels = None if evaluation.labels is None else np.asarray(evaluation.labels[: cfg.gate_samples])
    fixed = _static_batch(signature)
    if fixed is not None:
        # A model exported with a fixed batch only runs in batches of exactly that size.
        cfg = cfg.model_copy(update={"calibration_batch_size": fixed})
        calib = Dataset(_trim(calib.inputs, fixed), None)
        eval_inputs = _trim(eval_inputs, fixed)
        labels = None if labels is None else labels[: len(next(iter(eval_inputs.values())))]
    batch = (cfg.calibration_batch_size,)
    if cfg.activation_type == "int8" and not cpu_has_vnni():
        notes.append(
            "quantization.activation_type='int8' on a CPU without VNNI: ONNX Runtime's S8S8 kernels may "
            "saturate; the accuracy gate decides"
        )
    backend = resolve_backend(cfg)
    session = onnxruntime_session(fp32_path)
    reference = run_onnxruntime(session, eval_inputs, batch)
    timings["fp32_eval"] = time.perf_counter() - clock

    with tempfile.TemporaryDirectory(prefix="vx-int8-") as tmp:
        work = Path(tmp)
        clock = time.perf_counter()
        ranges: CalibrationRanges | None = None
        if backend == "onnxruntime":
            # Calibrate once; every exclusion step re-quantizes from these cached ranges.
            ranges = compute_ranges(fp32_path, calib.inputs, cfg, work / "ort_calibration_cache.json")
        range_table = ranges.ranges if ranges is not None else {}

        def quantize(excluded: Sequence[str], path: Path) -> Path:
            if ranges is not None:
                return quantize_onnxruntime(fp32_path, path, ranges, cfg, excluded)
            return quantize_modelopt(fp32_path, path, calib.inputs, cfg, excluded)

        timings["calibration"] = time.perf_counter() - clock

        attempts: dict[tuple[str, ...], tuple[GateMeasure, Path]] = {}

        def attempt(excluded: Sequence[str]) -> GateMeasure:
            key = tuple(excluded)
            if key not in attempts:
                path = quantize(key, work / f"qdq_{len(attempts)}.onnx")
                candidate = run_onnxruntime(path, eval_inputs, batch)
                attempts[key] = (
                    measure(
                        reference,
                        candidate,
                        labels,
                        task=task,
                        accuracy_budget=accuracy_budget,
                        min_cosine=min_cosine,
                        excluded_layers=key,
                    ),
                    path,
                )
            return attempts[key][0]

        clock = time.perf_counter()
        steps = [attempt(())]
        first_path = attempts[()][1]
        if not range_table:
            range_table = qdq_activation_ranges(first_path)
        timings["quantize_and_gate"] = time.perf_counter() - clock

        sensitivity: list[dict[str, Any]] = []
        if not steps[0].within_budget and cfg.max_excluded_layers > 0:
            clock = time.perf_counter()
            ranked, sensitivity = _rank_layers(first_path, fp32_path, eval_inputs, range_table, cfg, attempt)
            for k in range(1, min(cfg.max_excluded_layers, len(ranked)) + 1):
                m = attempt(ranked[:k])
                steps.append(m)
                log.info("excluding %s: drop %s, cosine %.5f", ranked[:k], m.drop_points, m.min_cosine)
                if m.within_budget:
                    break
            timings["sensitivity"] = time.perf_counter() - clock

        passing = [i for i, m in enumerate(steps) if m.within_budget]
        chosen = passing[0] if passing else min(range(len(steps)), key=lambda i: badness(steps[i]))
        accepted = bool(passing)
        reason = "" if accepted else _rejection_reason(steps, chosen, cfg, accuracy_budget, min_cosine)
        model_path = out / QDQ_FILE
        tmp_model = model_path.with_name(model_path.name + ".part")
        tmp_model.write_bytes(attempts[steps[chosen].excluded_layers][1].read_bytes())
        tmp_model.replace(model_path)

    result = CalibrationResult(
        accepted=accepted,
        reason=reason,
        backend=backend,
        method=cfg.method,
        out_dir=out,
        model_path=model_path,
        steps=steps,
        chosen_step=chosen,
        sensitivity=sensitivity,
        calibration_samples=len(calib),
        eval_samples=len(next(iter(eval_inputs.values()))),
        notes=notes,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
    _write_outputs(result, range_table, cfg)
    return result


def _rank_layers(
    first_path: Path,
    fp32_path: str | Path,
    eval_inputs: dict[str, np.ndarray],
    range_table: dict[str, tuple[list[float], list[float]]],
    cfg: QuantizationConfig,
    attempt: Callable[[Sequence[str]], GateMeasure],
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rank quantized layers by how much keeping each alone in FP32 helps (leave-one-out)."""
    layers = quantized_layers(first_path)
    probe_n = max(cfg.calibration_batch_size, 64 - 64 % cfg.calibration_batch_size)
    probe = {k: v[:probe_n] for k, v in eval_inputs.items()}
    errors = activation_errors(
        fp32_path, probe, range_table, layers, cfg.activation_type, (cfg.calibration_batch_size,)
    )
    # Too many layers to try each: try those whose input activations quantize worst first.
    tried = sorted(layers, key=lambda n: -errors.get(n, 0.0))[: cfg.sensitivity_candidates]
    measured = {name: attempt([name]) for name in tried}
    ranked = sorted(tried, key=lambda n: (*badness(measured[n]), -errors.get(n, 0.0)))
    table = [
        {
            "layer": n,
            "drop_points_when_fp32": measured[n].drop_points,
            "min_cosine_when_fp32": measured[n].min_cosine,
            "activation_error": round(errors.get(n, 0.0), 6),
        }
        for n in ranked
    ]
    return ranked, table


def _static_batch(signature: ModelSignature) -> int | None:
    firsts = {t.shape[0] for t in signature.inputs if t.shape and isinstance(t.shape[0], int)}
    return int(max(firsts)) if firsts else None


def _trim(inputs: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    n = len(next(iter(inputs.values())))
    if n < multiple:
        raise DataError(f"the model's batch is fixed at {multiple} but only {n} samples were given")
    return {k: v[: n - n % multiple] for k, v in inputs.items()}


def _rejection_reason(
    steps: list[GateMeasure], chosen: int, cfg: QuantizationConfig, budget: float, min_cosine: float
) -> str:
    best = steps[chosen]
    drop = "n/a" if best.drop_points is None else f"{best.drop_points:.2f}"
    tried = len(steps) - 1
    limit = (
        "quantization.max_excluded_layers=0 allows no fallback"
        if cfg.max_excluded_layers == 0
        else f"after excluding up to {tried} layer(s) "
        f"(quantization.max_excluded_layers={cfg.max_excluded_layers})"
    )
    return (
        f"INT8 misses the accuracy gate {limit}: best drop {drop} points (budget {budget:g}), "
        f"min cosine {best.min_cosine:.5f} (needs >= {min_cosine:g}); INT8 is dropped from the candidates"
    )


def _write_outputs(
    result: CalibrationResult, ranges: dict[str, tuple[list[float], list[float]]], cfg: QuantizationConfig
) -> None:
    write_json(
        result.out_dir / RANGES_FILE,
        {
            "backend": result.backend,
            "method": cfg.method,
            "num_bins": cfg.num_bins if cfg.method != "max" else None,
            "num_quantized_bins": NUM_QUANTIZED_BINS if cfg.method == "entropy" else None,
            "percentile": cfg.percentile if cfg.method == "percentile" else None,
            "calibration_samples": result.calibration_samples,
            "tensors": {k: {"min": lo, "max": hi} for k, (lo, hi) in sorted(ranges.items())},
        },
    )
    write_json(
        result.out_dir / TABLE_JSON,
        {
            "accepted": result.accepted,
            "reason": result.reason,
            "chosen_step": result.chosen_step,
            "steps": [m.to_dict() for m in result.steps],
            "sensitivity": result.sensitivity,
        },
    )
    write_text_atomic(result.out_dir / TABLE_MD, accuracy_markdown(result))


def accuracy_markdown(result: CalibrationResult) -> str:
    """The accuracy table at each exclusion step, with the verdict."""
    verdict = "accepted" if result.accepted else f"**not accepted**: {result.reason}"
    head = (
        f"# INT8 accuracy gate ({result.backend}, {result.method})\n\n"
        f"Verdict: {verdict}. Chosen step: {result.chosen_step}.\n\n"
    )
    body = markdown_table(result.table_rows())
    if result.sensitivity:
        body += "\n## Layer sensitivity (each layer alone in FP32)\n\n" + markdown_table(result.sensitivity)
    return head + body


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-VNNI or AVX512-VNNI (integer dot products without int16 saturation)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: do not warn
    return "avx512_vnni" in flags or "avx_vnni" in flags


def load_ranges(out_dir: str | Path) -> dict[str, Any]:
    """Read a calibration_ranges.json written by :func:`calibrate_int8`."""
    data: dict[str, Any] = json.loads((Path(out_dir) / RANGES_FILE).read_text())
    return data
