"""The INT8 accuracy gate: a Q/DQ model measured against FP32 on held-out data, and layer sensitivity.

The drop is in percentage points: of task accuracy when labels are given, else of top-1
agreement with FP32. Cosine similarity is gated too: it is what exposes a saturating integer
kernel (S8S8 on CPUs without VNNI) even where top-1 happens to survive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.export.parity import OutputComparison, compare_outputs, is_class_score


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
        }


def _fmt(v: float | None) -> float | str:
    return "n/a" if v is None else round(v, 3)


def class_score_output(reference: Mapping[str, np.ndarray], task: str) -> str | None:
    """The output whose argmax is the predicted class (the first ``(samples, classes)`` float output)."""
    if task != "classification":
        return None
    return next((name for name, arr in reference.items() if is_class_score(arr)), None)


def measure(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    *,
    task: str,
    accuracy_budget: float,
    min_cosine: float,
    excluded_layers: Sequence[str] = (),
) -> GateMeasure:
    """Measure a quantized model's outputs against FP32's and decide whether it is within budget.

    Args:
        reference: FP32 outputs on the evaluation samples.
        candidate: The quantized model's outputs on the same samples.
        labels: Class labels of the samples, or ``None``.
        task: The model's task (``classification`` enables top-1 and accuracy).
        accuracy_budget: Largest drop allowed, in percentage points.
        min_cosine: Smallest cosine similarity allowed on any output.
        excluded_layers: Layers kept in FP32 in this candidate (recorded only).
    """
    cls = class_score_output(reference, task)
    outputs = compare_outputs(reference, candidate, class_score_outputs=[cls] if cls else [])
    worst_cosine = min((o.cosine for o in outputs), default=1.0)
    fp32_acc = int8_acc = agreement = drop = None
    if cls is not None:
        ref_top1 = reference[cls].argmax(axis=1)
        cand_top1 = candidate[cls].argmax(axis=1)
        agreement = 100.0 * float((ref_top1 == cand_top1).mean())
        if labels is not None and len(labels) == len(ref_top1):
            fp32_acc = 100.0 * float((ref_top1 == labels).mean())
            int8_acc = 100.0 * float((cand_top1 == labels).mean())
            drop = fp32_acc - int8_acc
        else:
            drop = 100.0 - agreement
    ok = worst_cosine >= min_cosine and (drop is None or drop <= accuracy_budget + 1e-9)
    return GateMeasure(
        excluded_layers=tuple(excluded_layers),
        fp32_accuracy=fp32_acc,
        int8_accuracy=int8_acc,
        top1_agreement=agreement,
        drop_points=drop,
        min_cosine=worst_cosine,
        within_budget=ok,
        outputs=outputs,
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
    ranges: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    layers: Sequence[str],
    activation_type: str,
    batch_sizes: Sequence[int] = (32,),
) -> dict[str, float]:
    """Per layer, the worst relative RMS error of fake-quantizing its input activations.

    A cheap, local sensitivity estimate (one FP32 run) used to pick which layers the
    leave-one-out search tries when a model has many.
    """
    import onnx

    from components.export.runners import run_onnxruntime

    model = onnx.load(str(fp32_path))
    by_name = {n.name: n for n in model.graph.node}
    wanted = sorted({i for layer in layers for i in by_name[layer].input if i in ranges})
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save_model(model, str(path))
        acts = run_onnxruntime(path, inputs, batch_sizes)
    errors: dict[str, float] = {}
    for layer in layers:
        worst = 0.0
        for name in by_name[layer].input:
            if name in ranges and name in acts:
                worst = max(worst, _fake_quant_error(acts[name], ranges[name], activation_type))
        errors[layer] = worst
    return errors


def _fake_quant_error(
    x: np.ndarray, rng: tuple[Sequence[float], Sequence[float]], activation_type: str
) -> float:
    lo = min(float(np.min(rng[0])), 0.0)
    hi = max(float(np.max(rng[1])), 0.0)
    x = x.astype(np.float64)
    if activation_type == "int8":
        scale = max(abs(lo), abs(hi)) / 127.0 or 1.0
        q = np.clip(np.round(x / scale), -128, 127) * scale
    else:
        scale = (hi - lo) / 255.0 or 1.0
        zp = np.round(-lo / scale)
        q = (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale
    norm = float(np.linalg.norm(x))
    return float(np.linalg.norm(x - q) / norm) if norm else 0.0
