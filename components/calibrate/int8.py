"""INT8 post-training quantization on real samples, gated on accuracy against FP32.

Operator-aware: on graphs with attention only MatMul, Gemm and Conv get Q/DQ (softmax, layer
norm and the mask arithmetic stay float); CNNs quantize every operator ONNX Runtime can. On
graphs with attention a dynamically quantized model (INT8 weights, activations quantized per
call, after fusing attention/LayerNorm/GELU) is written and gated beside the static Q/DQ one.

When a model is over the accuracy budget, its quantized layers are grouped by role (the same
operator, weight shape and input kind: a transformer's feed-forward down-projections, its
query/key/value projections...) and each group is kept in float once: a handful of
quantize-and-measure rounds instead of one per layer. Groups are added most helpful first until
the budget holds (at most ``quantization.max_excluded_layers`` layers), then the set is bisected
down by each layer's quantization error (measured in one FP32 pass). A model that cannot meet
the budget is still written, marked not accepted with the reason, so the run goes on without it.
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

from vxdeploy.components.calibrate.backends import (
    DYNAMIC_OP_TYPES,
    NUM_QUANTIZED_BINS,
    CalibrationRanges,
    compute_ranges,
    cpu_has_vnni,
    fuse_transformer,
    fusion_mismatch,
    qdq_activation_ranges,
    quantize_dynamic_onnxruntime,
    quantize_modelopt,
    quantize_onnxruntime,
    resolve_backend,
)
from vxdeploy.components.calibrate.gate import (
    GateMeasure,
    activation_errors,
    badness,
    measure,
    quantized_layers,
)
from vxdeploy.components.calibrate.samples import check_calibration_samples
from vxdeploy.components.common.config import DataConfig, QuantizationConfig
from vxdeploy.components.common.data import Dataset, check_inputs
from vxdeploy.components.common.errors import DataError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.common.stage import markdown_table, write_json, write_text_atomic
from vxdeploy.components.verify.accuracy import output_metrics
from vxdeploy.components.verify.runners import onnxruntime_session, run_onnxruntime

log = logging.getLogger(__name__)

QDQ_FILE = "model.onnx"
DYNAMIC_FILE = "model.dynamic.onnx"
ATTENTION_OPS = frozenset({"Softmax", "Attention", "MultiHeadAttention"})
"""Operators that mark a graph with attention (a transformer)."""
MATMUL_OP_TYPES = ("MatMul", "Gemm", "Conv")
"""What ``quantization.operators='matmul'`` quantizes."""
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
    op_types: list[str] | None = None
    unquantizable: dict[str, float] = field(default_factory=dict)
    dynamic: DynamicResult | None = None

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
            "operators": "all" if self.op_types is None else ",".join(self.op_types),
            "dynamic_accepted": None if self.dynamic is None else self.dynamic.accepted,
            "dynamic_min_cosine": None if self.dynamic is None else self.dynamic.chosen.min_cosine,
        }


@dataclass
class DynamicResult:
    """The dynamically quantized model and its gate (the ``onnxruntime_int8_dynamic`` candidate's source)."""

    accepted: bool
    reason: str
    model_path: Path
    steps: list[GateMeasure]
    chosen_step: int
    fused_operators: dict[str, int] = field(default_factory=dict)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen(self) -> GateMeasure:
        return self.steps[self.chosen_step]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "file": self.model_path.name,
            "chosen_step": self.chosen_step,
            "fused_operators": self.fused_operators,
            "steps": [m.to_dict() for m in self.steps],
            "sensitivity": self.sensitivity,
        }


@dataclass
class _Search:
    """The gate's search over which layers to keep in float, for one quantizer."""

    steps: list[GateMeasure]
    chosen: int
    accepted: bool
    path: Path
    sensitivity: list[dict[str, Any]]


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
    attention = has_attention(fp32_path)
    op_types = _op_types(cfg, attention)
    session = onnxruntime_session(fp32_path)
    reference = run_onnxruntime(session, eval_inputs, batch)
    del session
    timings["fp32_eval"] = time.perf_counter() - clock
    metrics = output_metrics(signature, task)

    def judge(outputs: dict[str, np.ndarray], excluded: Sequence[str]) -> GateMeasure:
        return measure(
            reference,
            outputs,
            labels,
            task=task,
            accuracy_budget=accuracy_budget,
            min_cosine=min_cosine,
            excluded_layers=excluded,
            metrics=metrics,
            targets=evaluation.targets,
        )

    probe_n = max(cfg.calibration_batch_size, 64 - 64 % cfg.calibration_batch_size)
    probe = {k: v[:probe_n] for k, v in eval_inputs.items()}

    with tempfile.TemporaryDirectory(prefix="vx-int8-") as tmp:
        work = Path(tmp)
        clock = time.perf_counter()
        ranges: CalibrationRanges | None = None
        if backend == "onnxruntime":
            # Calibrate once; every exclusion step re-quantizes from these cached ranges.
            ranges = compute_ranges(
                fp32_path, calib.inputs, cfg, work / "ort_calibration_cache.json", op_types=op_types
            )
        range_table = ranges.ranges if ranges is not None else {}
        timings["calibration"] = time.perf_counter() - clock

        # Operator-aware: attention's activation-by-activation products (scores, context) stay float
        # with the softmax between them; only products with a constant weight are quantized.
        keep_float = _activation_matmuls(fp32_path) if op_types is not None else []

        def quantize(excluded: Sequence[str], path: Path) -> Path:
            if ranges is not None:
                return quantize_onnxruntime(
                    fp32_path, path, ranges, cfg, [*keep_float, *excluded], op_types=op_types
                )
            return quantize_modelopt(fp32_path, path, calib.inputs, cfg, excluded)

        clock = time.perf_counter()

        def rank_static(first: Path) -> tuple[list[str], dict[str, float]]:
            table = range_table or qdq_activation_ranges(first)
            layers = quantized_layers(first)
            return _rank_by_error(fp32_path, layers, probe, table, cfg)

        static = _search(quantize, rank_static, judge, eval_inputs, batch, cfg, work / "static", fp32_path)
        if not range_table:
            range_table = qdq_activation_ranges(static.path)
        timings["static_quantize_and_gate"] = time.perf_counter() - clock

        dynamic: DynamicResult | None = None
        if cfg.dynamic == "on" or (cfg.dynamic == "auto" and attention):
            clock = time.perf_counter()
            dynamic = _dynamic(fp32_path, judge, eval_inputs, probe, batch, cfg, work, out, notes)
            timings["dynamic_quantize_and_gate"] = time.perf_counter() - clock

        steps, chosen, accepted = static.steps, static.chosen, static.accepted
        reason = "" if accepted else _rejection_reason(steps, chosen, cfg, accuracy_budget, min_cosine)
        model_path = out / QDQ_FILE
        tmp_model = model_path.with_name(model_path.name + ".part")
        tmp_model.write_bytes(static.path.read_bytes())
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
        sensitivity=static.sensitivity,
        calibration_samples=len(calib),
        eval_samples=len(next(iter(eval_inputs.values()))),
        notes=notes,
        timings_s={k: round(v, 3) for k, v in timings.items()},
        op_types=op_types,
        unquantizable=dict(ranges.unquantizable) if ranges is not None else {},
        dynamic=dynamic,
    )
    _write_outputs(result, range_table, cfg)
    return result


def has_attention(model_path: str | Path) -> bool:
    """True when an ONNX graph has attention (softmax or a fused attention operator): a transformer."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return any(n.op_type in ATTENTION_OPS for n in model.graph.node)


def _op_types(cfg: QuantizationConfig, attention: bool) -> list[str] | None:
    """The operators to quantize (None: every one ONNX Runtime can)."""
    if cfg.operators == "matmul" or (cfg.operators == "auto" and attention):
        return list(MATMUL_OP_TYPES)
    return None


def _search(
    quantize: Callable[[Sequence[str], Path], Path],
    rank: Callable[[Path], tuple[list[str], dict[str, float]]],
    judge: Callable[[dict[str, np.ndarray], Sequence[str]], GateMeasure],
    eval_inputs: dict[str, np.ndarray],
    batch: tuple[int, ...],
    cfg: QuantizationConfig,
    work: Path,
    model_path: str | Path,
) -> _Search:
    """Quantize with nothing excluded; when over budget, find a few layers to keep in float.

    Layers are grouped by role (:func:`layer_groups`: the same operator, weight shape and kind of
    input, e.g. every feed-forward down-projection of a transformer), and each group is kept in
    float alone once (one quantize-and-measure round per group, not per layer). Groups are then
    added, most helpful first, until the budget holds within ``max_excluded_layers``; the passing
    set is finally bisected (its layers worst-quantizing first) to the smallest prefix that still
    passes.
    """
    work.mkdir(parents=True, exist_ok=True)
    attempts: dict[tuple[str, ...], tuple[GateMeasure, Path]] = {}
    order: list[tuple[str, ...]] = []

    def attempt(excluded: Sequence[str]) -> GateMeasure:
        key = tuple(excluded)
        if key not in attempts:
            path = quantize(key, work / f"q_{len(attempts)}.onnx")
            attempts[key] = (judge(run_onnxruntime(path, eval_inputs, batch), key), path)
            order.append(key)
            m = attempts[key][0]
            log.info("%d layer(s) in float: drop %s, cosine %.5f", len(key), m.drop_points, m.min_cosine)
        return attempts[key][0]

    sensitivity: list[dict[str, Any]] = []
    limit = cfg.max_excluded_layers
    if not attempt(()).within_budget and limit > 0:
        ranked, errors = rank(attempts[()][1])
        groups = [g for g in layer_groups(model_path, ranked) if len(g) <= limit]
        groups = groups[: cfg.sensitivity_candidates]
        alone = {i: attempt(g) for i, g in enumerate(groups)}
        by_help = sorted(
            alone, key=lambda i: (*badness(alone[i]), -max(errors.get(n, 0.0) for n in groups[i]))
        )
        sensitivity = [
            {
                "layers": ", ".join(groups[i]),
                "count": len(groups[i]),
                "drop_points_when_float": alone[i].drop_points,
                "min_cosine_when_float": round(alone[i].min_cosine, 6),
                "worst_quantization_error": round(max(errors.get(n, 0.0) for n in groups[i]), 6),
            }
            for i in by_help
        ]
        passing = next((groups[i] for i in by_help if alone[i].within_budget), None)
        if passing is None:
            union: list[str] = []
            for i in by_help:
                if len(union) + len(groups[i]) > limit:
                    continue
                union += groups[i]
                if attempt(union).within_budget:
                    passing = union
                    break
        if passing is not None and len(passing) > 1:
            worst_first = sorted(passing, key=lambda n: -errors.get(n, 0.0))
            lo, hi = 0, len(worst_first)  # a prefix of length lo misses the budget, of length hi meets it
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if attempt(worst_first[:mid]).within_budget:
                    hi = mid
                else:
                    lo = mid
    steps = [attempts[k][0] for k in order]
    passing_steps = [i for i, m in enumerate(steps) if m.within_budget]
    if passing_steps:
        chosen = min(passing_steps, key=lambda i: (len(steps[i].excluded_layers), *badness(steps[i])))
    else:
        chosen = min(range(len(steps)), key=lambda i: badness(steps[i]))
    return _Search(steps, chosen, bool(passing_steps), attempts[order[chosen]][1], sensitivity)


def layer_groups(model_path: str | Path, layers: Sequence[str]) -> list[list[str]]:
    """``layers`` grouped by role: operator, constant weight's shape, and the operator feeding its input.

    In a transformer this puts each block's query/key/value, output projection, feed-forward
    up- and down-projection in one group each; in a CNN the convolutions of a stage. Groups keep
    the order of ``layers`` (first group: the one holding the first layer), as do their members.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name in layers:
        node = nodes.get(name)
        if node is None:
            continue
        weight = next((shapes[i] for i in node.input[1:] if i in shapes), None)
        source = producer.get(node.input[0], "input") if node.input else "input"
        groups.setdefault((node.op_type, weight, source), []).append(name)
    return list(groups.values())


def _rank_by_error(
    fp32_path: str | Path,
    layers: Sequence[str],
    probe: dict[str, np.ndarray],
    ranges: dict[str, tuple[list[float], list[float]]] | None,
    cfg: QuantizationConfig,
) -> tuple[list[str], dict[str, float]]:
    """Layers worst first by input-activation plus weight quantization error (one FP32 run)."""
    errors = activation_errors(
        fp32_path,
        probe,
        ranges,
        layers,
        cfg.activation_type,
        (cfg.calibration_batch_size,),
        per_channel=cfg.per_channel,
    )
    return sorted(layers, key=lambda n: -errors.get(n, 0.0)), errors


def _dynamic(
    fp32_path: str | Path,
    judge: Callable[[dict[str, np.ndarray], Sequence[str]], GateMeasure],
    eval_inputs: dict[str, np.ndarray],
    probe: dict[str, np.ndarray],
    batch: tuple[int, ...],
    cfg: QuantizationConfig,
    work: Path,
    out: Path,
    notes: list[str],
) -> DynamicResult:
    """Fuse (optionally), quantize dynamically and gate; write ``model.dynamic.onnx`` into ``out``."""
    source = Path(fp32_path)
    fused: dict[str, int] = {}
    if cfg.fuse_before_dynamic:
        try:
            # Q/K/V packed into one Attention, which dynamic quantization makes one INT8 QAttention.
            fused = fuse_transformer(fp32_path, work / "fused.onnx")
            mismatch = fusion_mismatch(fp32_path, work / "fused.onnx", probe, batch)
        except Exception as exc:  # a graph the fusion passes cannot read is quantized unfused
            fused, mismatch = {}, f"{type(exc).__name__}: {exc}"
        if mismatch:
            notes.append(f"transformer fusion skipped ({mismatch}); quantized unfused")
            fused = {}
        elif fused:
            source = work / "fused.onnx"
    search = _search(
        lambda excluded, path: quantize_dynamic_onnxruntime(source, path, cfg, excluded),
        lambda _first: _rank_by_error(source, _dynamic_layers(source), probe, None, cfg),
        judge,
        eval_inputs,
        batch,
        cfg,
        work / "dynamic",
        source,
    )
    path = out / DYNAMIC_FILE
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(search.path.read_bytes())
    tmp.replace(path)
    reason = ""
    if not search.accepted:
        best = search.steps[search.chosen]
        reason = (
            f"dynamic INT8 misses the accuracy gate with {len(best.excluded_layers)} layer(s) in float "
            f"(quantization.max_excluded_layers={cfg.max_excluded_layers}): drop "
            f"{'n/a' if best.drop_points is None else f'{best.drop_points:.2f}'} points, "
            f"min cosine {best.min_cosine:.5f}"
        )
    return DynamicResult(
        accepted=search.accepted,
        reason=reason,
        model_path=path,
        steps=search.steps,
        chosen_step=search.chosen,
        fused_operators=fused,
        sensitivity=search.sensitivity,
    )


def _activation_matmuls(model_path: str | Path) -> list[str]:
    """MatMul nodes whose two inputs are both activations (attention's QK^T and probabilities x V)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.name and not constants.intersection(n.input)
    ]


def _dynamic_layers(model_path: Path) -> list[str]:
    """The nodes dynamic quantization covers: MatMul/Gemm with a constant weight."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in DYNAMIC_OP_TYPES and n.name and len(n.input) > 1 and n.input[1] in constants
    ]


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
    tried = max(len(m.excluded_layers) for m in steps)
    limit = (
        "quantization.max_excluded_layers=0 allows no fallback"
        if cfg.max_excluded_layers == 0
        else f"with up to {tried} of the worst-quantizing layers kept in float "
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
            "operators": "all" if result.op_types is None else result.op_types,
            "unquantizable": result.unquantizable,
            "dynamic": None if result.dynamic is None else result.dynamic.to_dict(),
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
    if result.unquantizable:
        body += (
            "\nKept in float (tensors beyond the calibratable range, e.g. attention-mask sentinels): "
            + ", ".join(sorted(result.unquantizable))
            + "\n"
        )
    if result.sensitivity:
        body += "\n## Layers ranked by quantization error (worst first)\n\n" + markdown_table(
            result.sensitivity
        )
    dyn = result.dynamic
    if dyn is not None:
        verdict = "accepted" if dyn.accepted else f"**not accepted**: {dyn.reason}"
        fused = ", ".join(f"{k} x{v}" for k, v in sorted(dyn.fused_operators.items())) or "none"
        body += (
            f"\n## Dynamic INT8 ({DYNAMIC_FILE})\n\nVerdict: {verdict}. Chosen step: {dyn.chosen_step}. "
            f"Fused before quantizing: {fused}.\n\n"
            + markdown_table([m.row(i) for i, m in enumerate(dyn.steps)])
        )
    return head + body


def load_ranges(out_dir: str | Path) -> dict[str, Any]:
    """Read a calibration_ranges.json written by :func:`calibrate_int8`."""
    data: dict[str, Any] = json.loads((Path(out_dir) / RANGES_FILE).read_text())
    return data
