"""The one accuracy gate: per output, the figure its task is judged by, against FP32 and the targets.

Each output has a task (``classification``, ``embedding``, ``regression``, ``generic``) and a metric
the accuracy budget applies to, recorded on the model's signature at intake (``model.task`` and
``model.metrics``). The INT8 gate and selection both decide through :func:`measure_accuracy`, so a
candidate is judged the same way in each, and every figure says which metric it is.

==============  ======================  =====================================================
task            metric (first=default)  what is gated
==============  ======================  =====================================================
classification  top1_accuracy           accuracy vs labels, drop in points vs FP32's accuracy
                top1_agreement          100 - % of samples whose argmax matches FP32's
embedding       cosine                  mean per-row cosine to FP32 >= min_cosine
                retrieval_agreement     100 - % of samples whose nearest neighbour matches FP32's
regression      mae / rmse              error vs targets: % increase over FP32's error
                                        (without targets: error vs FP32, % of FP32's spread)
generic         cosine / max_abs_diff   mean per-row cosine to FP32 >= min_cosine
==============  ======================  =====================================================

Outputs one sample wide have no meaningful per-row cosine: only regression metrics apply to them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vxdeploy.components.common.errors import ConfigError, DataError
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.verify.compare import OutputComparison, compare_outputs, is_class_score, row_cosines

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("top1_accuracy", "top1_agreement"),
    "embedding": ("cosine", "retrieval_agreement"),
    "regression": ("mae", "rmse"),
    "generic": ("cosine", "max_abs_diff"),
}
"""Each task's metrics; the first is its default."""

METRIC_BASIS = {
    "top1_accuracy": "top-1 accuracy vs labels (points)",
    "top1_agreement": "top-1 agreement with FP32 (points)",
    "cosine": "mean per-row cosine to FP32",
    "retrieval_agreement": "nearest-neighbour retrieval agreement with FP32 (points)",
    "mae": "MAE",
    "rmse": "RMSE",
    "max_abs_diff": "max abs diff to FP32",
}
"""What each metric's figure is, as reports print it."""

_RETRIEVAL_MAX_SAMPLES = 1024
_EPS = 1e-12


@dataclass(frozen=True)
class OutputMetric:
    """How one output is judged."""

    task: str
    metric: str


@dataclass(frozen=True)
class OutputAccuracy:
    """One output's figures and verdict. ``drop_points`` is what the budget limits (None: cosine-gated)."""

    name: str
    task: str
    metric: str
    basis: str
    fp32_value: float | None
    candidate_value: float | None
    drop_points: float | None
    cosine_mean: float | None
    """Mean per-row cosine to FP32 where it is gated (None for outputs one value wide)."""
    within_budget: bool
    reason: str
    figures: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{self.name!r} ({self.task}, {self.basis})"]
        if self.fp32_value is not None and self.candidate_value is not None:
            parts.append(f"FP32 {self.fp32_value:.4g} -> {self.candidate_value:.4g}")
        elif self.candidate_value is not None:
            parts.append(f"{self.candidate_value:.4g}")
        if self.drop_points is not None:
            parts.append(f"drop {self.drop_points:.3g} points")
        if self.cosine_mean is not None:
            parts.append(f"cosine {self.cosine_mean:.5f}")
        return ": ".join(parts[:1]) + " " + ", ".join(parts[1:])


@dataclass(frozen=True)
class AccuracyResult:
    """Every output's figures; within budget only when each output is."""

    outputs: list[OutputAccuracy]
    comparisons: list[OutputComparison]
    samples: int
    accuracy_budget: float
    min_cosine_limit: float

    @property
    def within_budget(self) -> bool:
        return all(o.within_budget for o in self.outputs)

    @property
    def drop_points(self) -> float | None:
        """The worst drop over the outputs judged by a drop (None when every output is cosine-gated)."""
        drops = [o.drop_points for o in self.outputs if o.drop_points is not None]
        return max(drops) if drops else None

    @property
    def drop_basis(self) -> str:
        """The metric of the worst drop (``none`` without one)."""
        worst = [o for o in self.outputs if o.drop_points is not None and o.drop_points == self.drop_points]
        return worst[0].metric if worst else "none"

    @property
    def min_cosine(self) -> float:
        """The worst gated mean per-row cosine (1.0 when no output is cosine-gated)."""
        cos = [o.cosine_mean for o in self.outputs if o.cosine_mean is not None]
        return min(cos) if cos else 1.0

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.comparisons), default=0.0)

    def first(self, task: str) -> OutputAccuracy | None:
        """The first output of ``task`` (e.g. the classifier head whose accuracy tables show)."""
        return next((o for o in self.outputs if o.task == task), None)

    @property
    def reason(self) -> str:
        failing = [o.reason for o in self.outputs if not o.within_budget]
        return "; ".join(failing) if failing else "every output within budget"

    def describe(self) -> str:
        return "; ".join(o.describe() for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "within_budget": self.within_budget,
            "drop_points": self.drop_points,
            "drop_basis": self.drop_basis,
            "min_cosine": self.min_cosine,
            "accuracy_budget": self.accuracy_budget,
            "min_cosine_limit": self.min_cosine_limit,
            "reason": self.reason,
            "outputs": [asdict(o) for o in self.outputs],
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def normalize_task(task: str) -> str:
    """``model.task`` to a verification task (``other`` is ``generic``)."""
    return "generic" if task == "other" else task


def default_metric(task: str, spec: TensorSpec, has_target: bool) -> OutputMetric:
    """The metric an output gets from ``model.task`` when ``model.metrics`` names none for it."""
    task = normalize_task(task)
    width_one = _width(spec) == 1
    if task == "classification" and (len(spec.shape) != 2 or width_one):
        # A (samples, 1) or 3-D output has no class axis: compare it as numbers, not as classes.
        task = "regression" if width_one else "generic"
    if task in ("embedding", "generic") and width_one:
        task = "regression"
    if task == "classification":
        return OutputMetric(task, "top1_accuracy" if has_target else "top1_agreement")
    return OutputMetric(task, TASK_METRICS[task][0])


def resolve_output_metrics(
    signature: ModelSignature,
    task: str,
    overrides: Mapping[str, Mapping[str, Any]],
    targets: Sequence[str] = (),
    *,
    labels: bool = False,
) -> ModelSignature:
    """The signature with every output's task and metric set (``model.task`` and ``model.metrics``).

    Args:
        signature: The model's signature.
        task: ``model.task``, the default of every output.
        overrides: ``model.metrics``: output name -> ``{task, metric}`` (either may be missing).
        targets: Outputs the evaluation data has ``labels/<output>`` targets for.
        labels: The evaluation data has a plain ``labels`` array (the first classification
            output's targets, see :func:`targets_for`).

    Raises:
        ConfigError: for an unknown output name, a metric of another task, or a metric that
            needs targets the evaluation data does not carry.
    """
    unknown = sorted(set(overrides) - set(signature.output_names))
    if unknown:
        raise ConfigError("model.metrics", unknown, f"name outputs of the model: {signature.output_names}")
    tasks: dict[str, str] = {}
    for spec in signature.outputs:
        want = overrides.get(spec.name, {})
        out_task = normalize_task(str(want.get("task") or ""))
        metric = str(want.get("metric") or "")
        if not out_task and metric:
            out_task = next((t for t, ms in TASK_METRICS.items() if metric in ms), "")
        tasks[spec.name] = out_task or default_metric(task, spec, has_target=False).task
    have = set(targets)
    if labels:
        owner = next((n for n, t in tasks.items() if t == "classification" and n not in have), None)
        if owner is None and len(tasks) == 1 and not have:
            owner = next(iter(tasks))
        if owner is not None:
            have.add(owner)
    specs = []
    for spec in signature.outputs:
        out_task = tasks[spec.name]
        metric = str(overrides.get(spec.name, {}).get("metric") or "")
        if not metric:
            metric = default_metric(out_task, spec, spec.name in have).metric
            if default_metric(out_task, spec, spec.name in have).task != out_task:
                metric = TASK_METRICS[out_task][0] if out_task != "classification" else metric
        field_name = f"model.metrics.{spec.name}"
        if out_task not in TASK_METRICS or metric not in TASK_METRICS[out_task]:
            raise ConfigError(
                field_name,
                {"task": out_task, "metric": metric},
                "use one of " + "; ".join(f"{t}: {', '.join(ms)}" for t, ms in TASK_METRICS.items()),
            )
        if metric == "top1_accuracy" and spec.name not in have and spec.name in overrides:
            raise ConfigError(
                field_name,
                metric,
                f"top1_accuracy needs labels: add 'labels/{spec.name}' (or 'labels') to data.eval_uri, "
                "or use top1_agreement",
            )
        specs.append(TensorSpec(spec.name, spec.dtype, spec.shape, task=out_task, metric=metric))
    return ModelSignature(
        inputs=signature.inputs,
        outputs=tuple(specs),
        keyword_inputs=signature.keyword_inputs,
        dim_ranges=signature.dim_ranges,
        metadata=signature.metadata,
    )


def output_metrics(
    signature: ModelSignature, default_task: str = "classification"
) -> dict[str, OutputMetric]:
    """Each output's task and metric, as recorded on the signature (inferred for older signatures)."""
    out = {}
    for spec in signature.outputs:
        if spec.task and spec.metric:
            out[spec.name] = OutputMetric(spec.task, spec.metric)
        else:
            out[spec.name] = default_metric(default_task, spec, has_target=False)
    return out


def targets_for(
    metrics: Mapping[str, OutputMetric],
    targets: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Targets by output name.

    ``labels/<output>`` arrays are that output's; ``labels`` belongs to the first classification
    output (or the only output) that has none of its own.
    """
    out = {k: np.asarray(v) for k, v in targets.items() if k in metrics}
    if labels is not None:
        first = next(
            (n for n, m in metrics.items() if m.task == "classification" and n not in out),
            next(iter(metrics)) if len(metrics) == 1 and not out else None,
        )
        if first is not None:
            out[first] = np.asarray(labels)
    return out


def measure_accuracy(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    metrics: Mapping[str, OutputMetric],
    targets: Mapping[str, np.ndarray] | None = None,
    accuracy_budget: float,
    min_cosine: float,
) -> AccuracyResult:
    """Judge a candidate's outputs against FP32's (and the targets), each by its own metric.

    Args:
        reference: FP32 outputs on the evaluation samples, by name.
        candidate: The candidate's outputs on the same samples.
        metrics: Each output's task and metric (:func:`output_metrics`); missing ones are inferred.
        targets: Targets by output name (:func:`targets_for`), trimmed to the samples measured.
        accuracy_budget: Largest drop allowed, in points, on drop-judged metrics.
        min_cosine: Smallest mean per-row cosine allowed on cosine-gated outputs.

    Raises:
        DataError: when a target's length differs from the number of samples.
    """
    comparisons = compare_outputs(reference, candidate)
    targets = targets or {}
    outputs = []
    samples = 0
    for cmp in comparisons:
        ref = np.asarray(reference[cmp.name])
        cand = np.asarray(candidate[cmp.name])
        samples = max(samples, len(ref)) if ref.ndim else samples
        spec = TensorSpec(cmp.name, str(ref.dtype), tuple(ref.shape))
        metric = metrics.get(cmp.name) or default_metric("generic", spec, has_target=False)
        target = targets.get(cmp.name)
        if target is not None:
            target = np.asarray(target)[: len(ref)]
            if len(target) != len(ref):
                raise DataError(
                    f"targets of output {cmp.name!r} have {len(target)} entries for {len(ref)} samples"
                )
        outputs.append(_judge(cmp, ref, cand, metric, target, accuracy_budget, min_cosine))
    return AccuracyResult(outputs, comparisons, samples, accuracy_budget, min_cosine)


def _width(spec_or_array: TensorSpec | np.ndarray) -> int | None:
    shape = spec_or_array.shape
    rest = shape[1:]
    sizes = [d for d in rest if isinstance(d, int)]
    if len(sizes) != len(rest):
        return None
    return int(np.prod(sizes)) if sizes else 1


def _judge(
    cmp: OutputComparison,
    ref: np.ndarray,
    cand: np.ndarray,
    metric: OutputMetric,
    target: np.ndarray | None,
    budget: float,
    min_cosine: float,
) -> OutputAccuracy:
    name = cmp.name
    figures: dict[str, float] = {
        "max_abs_diff": cmp.max_abs_diff,
        "max_rel_diff": cmp.max_rel_diff,
    }
    if not cmp.shapes_match:
        return OutputAccuracy(
            name,
            metric.task,
            metric.metric,
            METRIC_BASIS[metric.metric],
            None,
            None,
            None,
            None,
            False,
            f"output {name!r}: candidate shape {cmp.candidate_shape} differs from FP32's {cmp.shape}",
            figures,
        )
    task, kind = metric.task, metric.metric
    wide = ref.ndim >= 1 and (_width(ref) or 1) > 1
    cosine = cmp.cosine_mean if wide and task != "regression" else None
    if cosine is not None:
        figures.update(cosine_mean=cmp.cosine_mean, cosine_min=cmp.cosine_min)
    fp32 = value = drop = None
    basis = METRIC_BASIS[kind]
    if task == "classification" and is_class_score(ref):
        agreement = 100.0 * float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean()) if len(ref) else 100.0
        figures["top1_agreement_%"] = agreement
        if target is not None and target.ndim == 1:
            fp32 = 100.0 * float((ref.argmax(axis=1) == target).mean())
            value = 100.0 * float((cand.argmax(axis=1) == target).mean())
            figures.update({"fp32_top1_accuracy_%": fp32, "top1_accuracy_%": value})
        if kind == "top1_accuracy" and fp32 is not None and value is not None:
            drop = fp32 - value
        else:
            if kind == "top1_accuracy":
                kind, basis = "top1_agreement", METRIC_BASIS["top1_agreement"] + " (no labels)"
            fp32, value, drop = 100.0, agreement, 100.0 - agreement
    elif task == "regression":
        r, c = ref.astype(np.float64), cand.astype(np.float64)
        figures.update(
            mae_vs_fp32=float(np.abs(c - r).mean()) if r.size else 0.0,
            rmse_vs_fp32=float(np.sqrt(((c - r) ** 2).mean())) if r.size else 0.0,
        )
        err = _mae if kind == "mae" else _rmse
        if target is not None and target.size == r.size:
            t = target.astype(np.float64).reshape(r.shape)
            fp32, value = err(r, t), err(c, t)
            figures.update({f"fp32_{kind}_vs_targets": fp32, f"{kind}_vs_targets": value})
            drop = 100.0 * (value - fp32) / max(fp32, _EPS)
            basis = f"{METRIC_BASIS[kind]} vs targets (drop = % increase over FP32)"
        else:
            spread = err(r, np.full_like(r, r.mean())) if r.size else 0.0
            error = err(c, r)
            value, drop = error, 100.0 * error / max(spread, _EPS) if error > 0 else 0.0
            basis = f"{METRIC_BASIS[kind]} vs FP32 (drop = % of FP32's spread)"
    elif task == "embedding":
        retrieval = retrieval_agreement(ref, cand)
        if retrieval is not None:
            figures["retrieval_agreement_%"] = retrieval
        if kind == "retrieval_agreement" and retrieval is not None:
            fp32, value, drop = 100.0, retrieval, 100.0 - retrieval
        else:
            value = cmp.cosine_mean
    else:
        value = cmp.max_abs_diff if kind == "max_abs_diff" else cmp.cosine_mean
    reasons = []
    if drop is not None and drop > budget + 1e-9:
        reasons.append(f"{basis} drops {drop:.3g} points, over the accuracy budget of {budget:g}")
    if cosine is not None and cosine < min_cosine:
        reasons.append(f"mean per-row cosine {cosine:.5f} to FP32 is below min_cosine {min_cosine:g}")
    return OutputAccuracy(
        name=name,
        task=task,
        metric=kind,
        basis=basis,
        fp32_value=fp32,
        candidate_value=value,
        drop_points=drop,
        cosine_mean=cosine,
        within_budget=not reasons,
        reason=f"output {name!r}: " + " and ".join(reasons) if reasons else "within budget",
        figures=figures,
    )


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean()) if a.size else 0.0


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean())) if a.size else 0.0


def retrieval_agreement(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """% of samples whose nearest neighbour (cosine, among the other samples) is the same under both.

    Measured on at most the first 1024 samples; None with fewer than three.
    """
    n = min(len(reference), _RETRIEVAL_MAX_SAMPLES)
    if n < 3:
        return None

    def neighbours(x: np.ndarray) -> np.ndarray:
        v = np.nan_to_num(np.asarray(x[:n], dtype=np.float64).reshape(n, -1))
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), _EPS)
        sim = v @ v.T
        np.fill_diagonal(sim, -np.inf)
        return np.asarray(sim.argmax(axis=1))

    return 100.0 * float((neighbours(reference) == neighbours(candidate)).mean())


__all__ = [
    "TASK_METRICS",
    "AccuracyResult",
    "OutputAccuracy",
    "OutputMetric",
    "measure_accuracy",
    "output_metrics",
    "resolve_output_metrics",
    "retrieval_agreement",
    "row_cosines",
    "targets_for",
]
