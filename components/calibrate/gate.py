"""The INT8 accuracy gate: a Q/DQ model measured against FP32 on held-out data, and layer sensitivity.

The verdict comes from the one accuracy gate (:mod:`vxdeploy.components.verify.accuracy`): each output by
its task's metric (for a classifier the drop in task accuracy with labels, else in top-1 agreement
with FP32, in points). The mean per-row cosine is gated too: it is what exposes a saturating
integer kernel (S8S8 on CPUs without VNNI) even where top-1 happens to survive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.common.signature import TensorSpec
from vxdeploy.components.verify.accuracy import (
    AccuracyResult,
    OutputMetric,
    default_metric,
    measure_accuracy,
    targets_for,
)
from vxdeploy.components.verify.compare import OutputComparison


@dataclass(frozen=True)
class GateMeasure:
    """One quantized model's figures against FP32 (percentages in 0-100)."""

    excluded_layers: tuple[str, ...]
    fp32_accuracy: float | None
    int8_accuracy: float | None
    top1_agreement: float | None
    drop_points: float | None
    min_cosine: float
    within_budget: bool
    outputs: list[OutputComparison] = field(default_factory=list, compare=False)
    accuracy: AccuracyResult | None = field(default=None, compare=False)
    """The full per-output verdict (task, metric, figures of each output)."""

    def row(self, step: int) -> dict[str, Any]:
        """A row of the accuracy table."""
        return {
            "step": step,
            "excluded": len(self.excluded_layers),
            "excluded_layers": ", ".join(self.excluded_layers) or "-",
            "fp32_accuracy_%": _fmt(self.fp32_accuracy),
            "int8_accuracy_%": _fmt(self.int8_accuracy),
            "top1_agreement_%": _fmt(self.top1_agreement),
            "drop_points": _fmt(self.drop_points),
            "min_cosine": round(self.min_cosine, 6),
            "within_budget": self.within_budget,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "excluded_layers": list(self.excluded_layers),
            "fp32_accuracy": self.fp32_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "top1_agreement": self.top1_agreement,
            "drop_points": self.drop_points,
            "min_cosine": self.min_cosine,
            "within_budget": self.within_budget,
            "outputs": [o.to_dict() for o in self.outputs],
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
        }


def _fmt(v: float | None) -> float | str:
    return "n/a" if v is None else round(v, 3)


def measure(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    *,
    task: str,
    accuracy_budget: float,
    min_cosine: float,
    excluded_layers: Sequence[str] = (),
    metrics: Mapping[str, OutputMetric] | None = None,
    targets: Mapping[str, np.ndarray] | None = None,
) -> GateMeasure:
    """Measure a quantized model's outputs against FP32's and decide whether it is within budget.

    The verdict is the one accuracy gate's (:func:`vxdeploy.components.verify.accuracy.measure_accuracy`),
    the same selection uses: each output judged by its own task and metric.

    Args:
        reference: FP32 outputs on the evaluation samples.
        candidate: The quantized model's outputs on the same samples.
        labels: Class labels of the samples (``labels`` in the data), or ``None``.
        task: The model's task, for outputs ``metrics`` does not cover.
        accuracy_budget: Largest drop allowed, in percentage points.
        min_cosine: Smallest mean per-row cosine allowed on cosine-gated outputs.
        excluded_layers: Layers kept in FP32 in this candidate (recorded only).
        metrics: Each output's task and metric (:func:`vxdeploy.components.verify.accuracy.output_metrics`).
        targets: Per-output targets (``labels/<output>`` in the data).
    """
    if metrics is None:
        metrics = {
            name: default_metric(task, TensorSpec(name, str(arr.dtype), tuple(arr.shape)), labels is not None)
            for name, arr in reference.items()
        }
    n = len(next(iter(reference.values()))) if reference else 0
    judged = targets_for(metrics, dict(targets or {}), labels)
    result = measure_accuracy(
        reference,
        candidate,
        metrics=metrics,
        targets={k: v[:n] for k, v in judged.items()},
        accuracy_budget=accuracy_budget,
        min_cosine=min_cosine,
    )
    cls = result.first("classification")
    fp32_acc = int8_acc = agreement = None
    if cls is not None:
        agreement = cls.figures.get("top1_agreement_%")
        fp32_acc = cls.figures.get("fp32_top1_accuracy_%")
        int8_acc = cls.figures.get("top1_accuracy_%")
    return GateMeasure(
        excluded_layers=tuple(excluded_layers),
        fp32_accuracy=fp32_acc,
        int8_accuracy=int8_acc,
        top1_agreement=agreement,
        drop_points=result.drop_points,
        min_cosine=result.min_cosine,
        within_budget=result.within_budget,
        outputs=result.comparisons,
        accuracy=result,
    )


def badness(m: GateMeasure) -> tuple[float, float]:
    """Sort key: smaller is better (drop first, then cosine)."""
    return (m.drop_points if m.drop_points is not None else 0.0, -m.min_cosine)


def quantized_layers(qdq_path: str | Path) -> list[str]:
    """Names of the nodes a Q/DQ model computes on dequantized inputs, in graph order.

    These are the layers ``nodes_to_exclude`` can keep in higher precision.
    """
    import onnx

    model = onnx.load(str(qdq_path))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.name:
            continue
        if any(i in dq_outputs for i in node.input):
            names.append(node.name)
    return names


def activation_errors(
    fp32_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    ranges: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None,
    layers: Sequence[str],
    activation_type: str,
    batch_sizes: Sequence[int] = (32,),
    *,
    per_channel: bool = True,
) -> dict[str, float]:
    """Per layer, the relative RMS error that quantizing it alone causes, from one FP32 run.

    For MatMul and Gemm the error is of the layer's *output*: its float inputs fake-quantized
    (against ``ranges``; None means each activation's own range, as dynamic quantization does)
    and its constant weight rounded to INT8, multiplied again and compared with the float
    product on a sample of rows; this is what exposes an input whose range is spent on one large
    feature. For other operators (Conv...) it is the worst input-activation error plus the weight
    error. A cheap, local estimate used to rank layers for the gate's fallback.
    """
    import onnx
    from onnx import numpy_helper

    from vxdeploy.components.verify.runners import run_onnxruntime

    model = onnx.load(str(fp32_path))
    by_name = {n.name: n for n in model.graph.node}
    constants = {i.name: i for i in model.graph.initializer}
    wanted = sorted(
        {
            i
            for layer in layers
            for i in by_name[layer].input
            if i and i not in constants and (ranges is None or i in ranges)
        }
    )
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save_model(model, str(path))
        acts = run_onnxruntime(path, inputs, batch_sizes)
    weights = weight_errors(fp32_path, layers, per_channel)

    def quantized(name: str) -> np.ndarray | None:
        if name in constants:
            return _fake_quant_weight(numpy_helper.to_array(constants[name]), 1, per_channel)
        x = acts.get(name)
        if x is None or not np.issubdtype(x.dtype, np.floating):
            return None
        rng = ranges[name] if ranges is not None and name in ranges else ([x.min()], [x.max()])
        return _fake_quant(x, rng, activation_type)

    errors: dict[str, float] = {}
    for layer in layers:
        node = by_name[layer]
        if node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2:
            err = _product_error(node, acts, constants, quantized)
            if err is not None:
                errors[layer] = err
                continue
        worst = 0.0
        for name in node.input:
            x = acts.get(name)
            q = quantized(name) if name not in constants else None
            if x is not None and q is not None:
                worst = max(worst, _relative_error(x, q))
        errors[layer] = worst + weights.get(layer, 0.0)
    return errors


_ROWS = 512
"""Rows of a MatMul's input the output error is estimated on (enough to rank, cheap on a CPU)."""


def _product_error(
    node: Any,
    acts: Mapping[str, np.ndarray],
    constants: Mapping[str, Any],
    quantized: Any,
) -> float | None:
    from onnx import numpy_helper

    a_name, b_name = node.input[0], node.input[1]
    a = acts.get(a_name)
    b = numpy_helper.to_array(constants[b_name]) if b_name in constants else acts.get(b_name)
    qa, qb = quantized(a_name), quantized(b_name)
    if a is None or b is None or qa is None or qb is None:
        return None
    attrs = {x.name: x.i for x in node.attribute}
    if node.op_type == "Gemm":
        a, qa = (a.T, qa.T) if attrs.get("transA") else (a, qa)
        b, qb = (b.T, qb.T) if attrs.get("transB") else (b, qb)
    if b.ndim == 2:
        # A constant right-hand side: a sample of the left's rows says how the product suffers.
        a2, qa2 = a.reshape(-1, a.shape[-1]), qa.reshape(-1, qa.shape[-1])
        step = max(1, len(a2) // _ROWS)
        ref = a2[::step].astype(np.float64) @ b.astype(np.float64)
        got = qa2[::step].astype(np.float64) @ qb.astype(np.float64)
    else:
        # Two activations (attention's scores and context): the first few batch entries.
        ref = np.matmul(a[:2].astype(np.float64), b[:2].astype(np.float64))
        got = np.matmul(qa[:2].astype(np.float64), qb[:2].astype(np.float64))
    return _relative_error(ref, got)


def _relative_error(x: np.ndarray, q: np.ndarray) -> float:
    x = x.astype(np.float64)
    norm = float(np.linalg.norm(x))
    return float(np.linalg.norm(x - q.astype(np.float64)) / norm) if norm else 0.0


def _fake_quant_weight(w: np.ndarray, axis: int, per_channel: bool) -> np.ndarray:
    """``w`` rounded to symmetric INT8, per channel along ``axis`` (or per tensor)."""
    w = w.astype(np.float64)
    if w.ndim < 2 or not w.size:
        return w
    axis = axis % w.ndim
    reduce = tuple(d for d in range(w.ndim) if d != axis) if per_channel else None
    scale = np.max(np.abs(w), axis=reduce, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    return np.asarray(np.clip(np.round(w / scale), -127, 127) * scale)


def weight_errors(fp32_path: str | Path, layers: Sequence[str], per_channel: bool) -> dict[str, float]:
    """Per layer, the relative RMS error of its constant weight rounded to symmetric INT8.

    Channels are the weight's last axis for MatMul/Gemm (first with ``transB``) and its first for Conv.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    weights = {i.name: i for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    errors: dict[str, float] = {}
    for layer in layers:
        node = by_name[layer]
        if len(node.input) < 2 or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]])
        if w.ndim < 2 or not w.size:
            continue
        axis = 0 if node.op_type == "Conv" else -1
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            axis = 0
        errors[layer] = _relative_error(w, _fake_quant_weight(w, axis, per_channel))
    return errors


def _fake_quant(
    x: np.ndarray, rng: tuple[Sequence[float], Sequence[float]], activation_type: str
) -> np.ndarray:
    lo = min(float(np.min(rng[0])), 0.0)
    hi = max(float(np.max(rng[1])), 0.0)
    x = x.astype(np.float64)
    if activation_type == "int8":
        scale = max(abs(lo), abs(hi)) / 127.0 or 1.0
        return np.asarray(np.clip(np.round(x / scale), -128, 127) * scale)
    scale = (hi - lo) / 255.0 or 1.0
    zp = np.round(-lo / scale)
    return np.asarray((np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale)
