"""Selection: gate every measured candidate on accuracy, then rank the rest by the configured policy.

Policies (``selection.policy``):

- ``max_throughput``: the highest throughput at any measured batch size.
- ``min_latency``: the lowest ``selection.latency_percentile`` latency at the smallest batch size.
- ``max_throughput_within_latency_budget``: the highest throughput at any batch size whose
  ``latency_percentile`` latency stays within ``selection.latency_budget_ms``.

Speed differences are judged against their spread: candidates are timed in interleaved rounds
(:func:`vxdeploy.components.select.benchmark.time_interleaved`), and a candidate whose figure is not
distinguishable from the best one's (the interquartile range of their round-by-round ratio spans 1)
ties with it; among tied candidates the more accurate wins, then the simpler
(:data:`SIMPLICITY`). A reference whose own spread is over ``selection.spread_warning_pct`` is
warned about: ratios to it are then rough.

Every policy works only on candidates within the accuracy budget (``accuracy_budget`` points of
drop and ``min_cosine``). More gates (service levels, cost) plug in through ``extra_gates``: each
takes a candidate's figures and returns a rejection reason or None.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vxdeploy.components.common.config import SelectionConfig
from vxdeploy.components.common.errors import AccuracyBudgetError, ServiceLevelError, VxdeployError
from vxdeploy.components.common.numbers import readable
from vxdeploy.components.select.benchmark import CandidateFigures, SpeedupFigures, compare_latency

SIMPLICITY = (
    "onnxruntime_fp32",
    "aoti",
    "tensorrt_fp32",
    "tensorrt_fp16",
    "onnxruntime_int8_dynamic",
    "onnxruntime_int8",
    "tensorrt_int8",
)
"""Candidate kinds from simplest to serve and reason about (FP32, one runtime) to least simple."""

log = logging.getLogger(__name__)

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
    warnings: list[str] = field(default_factory=list)
    """Measurement caveats (a noisy reference) the terminal and the report show."""
    tied_with: list[str] = field(default_factory=list)
    """Candidates whose figure was not distinguishable from the fastest one's."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "selected": self.selected,
            "reason": self.reason,
            "ranking": [s.__dict__ for s in self.ranking],
            "rejected": self.rejected,
            "warnings": self.warnings,
            "tied_with": self.tied_with,
        }

    def error(self) -> VxdeployError | None:
        """The error to raise when nothing was selected (None when a candidate was)."""
        if self.selected is not None:
            return None
        if self.failure == "latency":
            return ServiceLevelError(self.reason)
        return AccuracyBudgetError(self.reason)


def accuracy_gate(cfg: SelectionConfig) -> Gate:
    """Reject candidates the accuracy gate (:mod:`vxdeploy.components.verify.accuracy`) judged over budget.

    The verdict was reached per output, each by its own metric, against ``selection.accuracy_budget``
    and ``selection.min_cosine``; its reason names the output and the metric.
    """

    def gate(f: CandidateFigures) -> str | None:
        acc = f.accuracy
        if acc is None:
            return "no accuracy figures"
        if not acc.within_budget:
            limits = f"selection.accuracy_budget {cfg.accuracy_budget}, min_cosine {cfg.min_cosine}"
            return f"{acc.reason} ({limits})"
        # Figures judged elsewhere (or by hand) are held to the same limits.
        if acc.cosine_mean < cfg.min_cosine:
            return f"cosine {acc.cosine_mean:.4f} to FP32 is below selection.min_cosine {cfg.min_cosine}"
        if acc.drop_points is not None and acc.drop_points > cfg.accuracy_budget:
            return (
                f"{acc.drop_basis} drops {acc.drop_points:.2f} points, over selection.accuracy_budget "
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
    fastest = scores[0]
    by_name = {f.name: f for f in figures}
    tied = [
        sc
        for sc in scores[1:]
        if _versus(by_name[sc.name], sc, by_name[fastest.name], fastest).verdict == "not distinguishable"
    ]
    # Inside the spread, speed does not decide: the more accurate, then the simpler.
    pool = [fastest, *tied]
    best = min(
        pool, key=lambda sc: (*_accuracy_key(by_name[sc.name]), _simplicity(by_name[sc.name]), pool.index(sc))
    )
    ranking = [best, *[sc for sc in scores if sc is not best]]
    warnings = spread_warnings(figures, cfg)
    for warning in warnings:  # the terminal shows these as they happen; the report carries them too
        log.warning("%s", warning)
    return SelectionDecision(
        policy=cfg.policy,
        selected=best.name,
        reason=_explain(best, ranking, figures, cfg, fastest, tied),
        ranking=ranking,
        rejected=rejected,
        warnings=warnings,
        tied_with=[sc.name for sc in pool if sc is not best],
    )


def _versus(f: CandidateFigures, score: Score, other: CandidateFigures, other_score: Score) -> SpeedupFigures:
    """``f``'s standing against ``other`` at the batch sizes their scores were taken at."""
    return compare_latency(f.latency[score.batch_size], other.latency[other_score.batch_size])


def _accuracy_key(f: CandidateFigures) -> tuple[float, float]:
    """Smaller is more accurate: the drop (points, 2 decimals), then the cosine (4 decimals, negated)."""
    acc = f.accuracy
    if acc is None:
        return (float("inf"), 0.0)
    drop = round(acc.drop_points, 2) if acc.drop_points is not None else 0.0
    return (max(drop, 0.0), -round(acc.cosine_mean, 4))


def _simplicity(f: CandidateFigures) -> int:
    return SIMPLICITY.index(f.kind) if f.kind in SIMPLICITY else len(SIMPLICITY)


def spread_warnings(figures: Sequence[CandidateFigures], cfg: SelectionConfig) -> list[str]:
    """Warnings for a reference whose latency spread makes ratios to it rough."""
    out = []
    for f in figures:
        if not f.reference:
            continue
        noisy = {
            b: lat.iqr_pct for b, lat in sorted(f.latency.items()) if lat.iqr_pct > cfg.spread_warning_pct
        }
        if noisy:
            listed = ", ".join(f"{v:.0f}% at batch {b}" for b, v in noisy.items())
            out.append(
                f"the reference {f.name}'s latency spread (IQR/median) is {listed}, over "
                f"selection.spread_warning_pct {cfg.spread_warning_pct:g}%: the machine was busy; "
                "speed-ups are rough (rerun on a quieter machine or with more selection.min_iterations)"
            )
    return out


def _explain(
    best: Score,
    scores: Sequence[Score],
    figures: Sequence[CandidateFigures],
    cfg: SelectionConfig,
    fastest: Score | None = None,
    tied: Sequence[Score] = (),
) -> str:
    unit = "ms" if "latency" in best.metric else "samples/s"
    metric = best.metric.split(" (")[0]
    value = readable(float(best.value))
    text = f"{best.name} selected by {cfg.policy}: {metric} {value} {unit} at batch {best.batch_size}"
    chosen = next(f for f in figures if f.name == best.name)
    ref = next((f for f in figures if f.reference and best.batch_size in f.latency), None)
    if ref is not None:
        versus = chosen.speedup.get(best.batch_size) or compare_latency(
            chosen.latency[best.batch_size], ref.latency[best.batch_size]
        )
        text += f" ({versus.describe(ref.name)})"
    if chosen.accuracy is not None:
        acc = chosen.accuracy
        drop = f"drop {acc.drop_points:.2f} points, " if acc.drop_points is not None else ""
        text += f"; within the accuracy budget ({drop}cosine {acc.cosine_mean:.4f})"
    if fastest is not None and fastest is not best:
        text += (
            f"; {fastest.name} measured {readable(float(fastest.value))} {unit} "
            "but is not distinguishable from it "
            "within the measurement spread, so the more accurate, then the simpler, was preferred"
        )
    elif tied:
        names = ", ".join(t.name for t in tied)
        text += f"; {names} not distinguishable from it within the spread (it is as accurate or simpler)"
    others = [sc for sc in scores if sc is not best and sc is not fastest and sc not in tied]
    if others:
        nxt = others[0]
        text += f"; next {nxt.name} at {readable(float(nxt.value))} {unit}"
    return text
