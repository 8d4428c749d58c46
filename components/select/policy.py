"""Selection: gate every measured candidate on accuracy, then rank the rest by the configured policy.

Policies (``selection.policy``):

- ``max_throughput``: the highest throughput at any measured batch size.
- ``min_latency``: the lowest ``selection.latency_percentile`` latency at the smallest batch size.
- ``max_throughput_within_latency_budget``: the highest throughput at any batch size whose
  ``latency_percentile`` latency stays within ``selection.latency_budget_ms``.

Every policy works only on candidates within the accuracy budget (``accuracy_budget`` points of
drop and ``min_cosine``). More gates (service levels, cost) plug in through ``extra_gates``: each
takes a candidate's figures and returns a rejection reason or None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.common.config import SelectionConfig
from components.common.errors import AccuracyBudgetError, ServiceLevelError, VxdeployError
from components.select.benchmark import CandidateFigures

Gate = Callable[[CandidateFigures], str | None]
"""A selection gate: the reason to reject a candidate, or None to let it through."""


@dataclass
class Score:
    """A candidate's standing under the policy: ``value`` of ``metric`` at ``batch_size``."""

    name: str
    value: float
    metric: str
    batch_size: int
    spread_pct: float


@dataclass
class SelectionDecision:
    """Which candidate won, why, and why each other one did not."""

    policy: str
    selected: str | None
    reason: str
    ranking: list[Score] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    failure: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "selected": self.selected,
            "reason": self.reason,
            "ranking": [s.__dict__ for s in self.ranking],
            "rejected": self.rejected,
        }

    def error(self) -> VxdeployError | None:
        """The error to raise when nothing was selected (None when a candidate was)."""
        if self.selected is not None:
            return None
        if self.failure == "latency":
            return ServiceLevelError(self.reason)
        return AccuracyBudgetError(self.reason)


def accuracy_gate(cfg: SelectionConfig) -> Gate:
    """Reject candidates over the accuracy budget or under the minimum cosine to the reference."""

    def gate(f: CandidateFigures) -> str | None:
        acc = f.accuracy
        if acc is None:
            return "no accuracy figures"
        if acc.cosine_mean < cfg.min_cosine:
            return f"cosine {acc.cosine_mean:.4f} to FP32 is below selection.min_cosine {cfg.min_cosine}"
        if acc.drop_points is not None and acc.drop_points > cfg.accuracy_budget:
            what = "task accuracy" if acc.drop_basis == "task_accuracy" else "top-1 agreement with FP32"
            return (
                f"{what} drops {acc.drop_points:.2f} points, over selection.accuracy_budget "
                f"{cfg.accuracy_budget} points"
            )
        return None

    return gate


def _score(f: CandidateFigures, cfg: SelectionConfig, smallest_batch: int) -> Score | str:
    """The candidate's score under the policy, or why it has none."""
    pct = cfg.latency_percentile
    if cfg.policy == "min_latency":
        lat = f.latency.get(smallest_batch)
        if lat is None:
            return f"not measured at batch {smallest_batch}, which min_latency compares"
        return Score(f.name, lat.percentile(pct), f"{pct} latency (ms)", smallest_batch, lat.iqr_pct)
    eligible = f.latency
    if cfg.policy == "max_throughput_within_latency_budget":
        budget = float(cfg.latency_budget_ms or 0)
        eligible = {b: v for b, v in f.latency.items() if v.percentile(pct) <= budget}
        if not eligible:
            fastest = min(f.latency.values(), key=lambda v: v.percentile(pct))
            return (
                f"{pct} latency {fastest.percentile(pct):.2f} ms at batch {fastest.batch_size} (its best) "
                f"is over selection.latency_budget_ms {budget}"
            )
    batch = max(eligible, key=lambda b: eligible[b].throughput)
    lat = eligible[batch]
    return Score(f.name, lat.throughput, "throughput (samples/s)", batch, lat.iqr_pct)


def select_candidate(
    figures: Sequence[CandidateFigures], cfg: SelectionConfig, extra_gates: Sequence[Gate] = ()
) -> SelectionDecision:
    """Pick the winner among ``figures`` (reference rows are never selected).

    Sets ``rejected_reason`` on every candidate that fails a gate or cannot be scored.

    Args:
        figures: The benchmark's figures.
        cfg: The selection section (policy, budgets).
        extra_gates: Further gates applied after the accuracy gate, in order (the hook for
            service-level and cost checks).

    Returns:
        The decision; ``selected`` is None when no candidate passes (``error()`` says what to raise).
    """
    gates = [accuracy_gate(cfg), *extra_gates]
    candidates = [f for f in figures if not f.reference]
    measured_batches = {b for f in candidates for b in f.latency}
    # A model with a fixed batch is measured at that batch only, whatever selection.batch_sizes says.
    smallest = min(measured_batches) if measured_batches else min(cfg.batch_sizes)
    scores: list[Score] = []
    accuracy_rejections = 0
    for f in candidates:
        if f.rejected_reason:
            continue
        if not f.measured:
            f.rejected_reason = "not measured"
            continue
        for i, gate in enumerate(gates):
            reason = gate(f)
            if reason:
                f.rejected_reason = reason
                accuracy_rejections += i == 0
                break
        if f.rejected_reason:
            continue
        score = _score(f, cfg, smallest)
        if isinstance(score, str):
            f.rejected_reason = score
        else:
            scores.append(score)
    rejected = {f.name: f.rejected_reason for f in candidates if f.rejected_reason}
    lower_is_better = cfg.policy == "min_latency"
    scores.sort(key=lambda s: s.value if lower_is_better else -s.value)
    if not scores:
        latency_bound = cfg.policy == "max_throughput_within_latency_budget" and accuracy_rejections < len(
            [f for f in candidates if f.measured]
        )
        detail = "; ".join(f"{name}: {why}" for name, why in rejected.items()) or "no candidates"
        what = "meets selection.latency_budget_ms" if latency_bound else "is within the accuracy budget"
        return SelectionDecision(
            policy=cfg.policy,
            selected=None,
            reason=f"no candidate {what} ({detail})",
            rejected=rejected,
            failure="latency" if latency_bound else "accuracy",
        )
    best = scores[0]
    return SelectionDecision(
        policy=cfg.policy,
        selected=best.name,
        reason=_explain(best, scores, figures, cfg),
        ranking=scores,
        rejected=rejected,
    )


def _explain(
    best: Score, scores: Sequence[Score], figures: Sequence[CandidateFigures], cfg: SelectionConfig
) -> str:
    unit = "ms" if "latency" in best.metric else "samples/s"
    metric = best.metric.split(" (")[0]
    text = (
        f"{best.name} selected by {cfg.policy}: {metric} {best.value:.4g} {unit} at batch {best.batch_size}"
    )
    ref = next((f for f in figures if f.reference and best.batch_size in f.latency), None)
    if ref is not None:
        ref_lat = ref.latency[best.batch_size]
        if unit == "ms":
            speedup = ref_lat.percentile(cfg.latency_percentile) / best.value
        else:
            speedup = best.value / ref_lat.throughput
        text += f" ({speedup:.2f}x {ref.name})"
    chosen = next(f for f in figures if f.name == best.name)
    if chosen.accuracy is not None:
        acc = chosen.accuracy
        drop = f"drop {acc.drop_points:.2f} points, " if acc.drop_points is not None else ""
        text += f"; within the accuracy budget ({drop}cosine {acc.cosine_mean:.4f})"
    if len(scores) > 1:
        runner_up = scores[1]
        text += f"; next {runner_up.name} at {runner_up.value:.4g} {unit}"
        gap_pct = abs(best.value - runner_up.value) / max(abs(runner_up.value), 1e-12) * 100
        if gap_pct < max(best.spread_pct, runner_up.spread_pct):
            text += f" (within measurement spread: {gap_pct:.1f}% apart)"
    return text
