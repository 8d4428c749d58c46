"""The comparison table: one row per candidate (and the reference), with the decision above it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vxdeploy.components.common.stage import markdown_table
from vxdeploy.components.select.benchmark import CandidateFigures, SpeedupFigures, compare_latency
from vxdeploy.components.select.policy import SelectionDecision


def _status(f: CandidateFigures, decision: SelectionDecision) -> str:
    if f.reference:
        return "reference"
    if f.name == decision.selected:
        return "SELECTED"
    return "rejected" if f.rejected_reason else "passed"


def _speedup(f: CandidateFigures, ref: CandidateFigures | None, batch: int) -> SpeedupFigures | None:
    if f.reference or ref is None or batch not in f.latency or batch not in ref.latency:
        return None
    return f.speedup.get(batch) or compare_latency(f.latency[batch], ref.latency[batch])


def speedup_text(f: CandidateFigures, ref: CandidateFigures | None, batch: int) -> str:
    """``1.52x (1.41-1.60)`` with the round-by-round IQR, or ``~1.03x, not distinguishable (0.95-1.10)``."""
    if f.reference and batch in f.latency:
        return "1.00x"
    versus = _speedup(f, ref, batch)
    if versus is None:
        return ""
    spread = f"{versus.ratio_p25:.2f}-{versus.ratio_p75:.2f}"
    if versus.verdict == "not distinguishable":
        return f"~{versus.ratio:.2f}x, not distinguishable ({spread})"
    return f"{versus.ratio:.2f}x ({spread})"


def comparison_rows(
    figures: Sequence[CandidateFigures], decision: SelectionDecision, batch_sizes: Sequence[int]
) -> list[dict[str, Any]]:
    """Table rows: accuracy, latency and throughput per batch size, speed-up, status and reason."""
    ref = next((f for f in figures if f.reference), None)
    largest = max(batch_sizes)
    rows = []
    for f in figures:
        acc = f.accuracy
        row: dict[str, Any] = {
            "candidate": f.name,
            "runtime": f.runtime,
            "precision": f.precision,
            "device": f.device,
            "status": _status(f, decision),
            "task acc": "" if acc is None or acc.task_accuracy is None else round(acc.task_accuracy, 4),
            "drop (pts)": "" if acc is None or acc.drop_points is None else round(acc.drop_points, 2),
            "cosine": "" if acc is None else round(acc.cosine_mean, 5),
            "top-1 agree": "" if acc is None or acc.top1_agreement is None else round(acc.top1_agreement, 4),
            "max abs diff": "" if acc is None else float(f"{acc.max_abs_diff:.3g}"),
            "judged by": "" if acc is None else acc.judged_by(),
        }
        for b in batch_sizes:
            lat = f.latency.get(b)
            row[f"p50/p99 ms b{b}"] = "" if lat is None else f"{lat.p50_ms:.3g} / {lat.p99_ms:.3g}"
            row[f"samples/s b{b}"] = "" if lat is None else round(lat.throughput, 1)
            row[f"IQR b{b}"] = "" if lat is None else f"{lat.iqr_pct:.0f}%"
        row[f"vs {ref.name if ref else 'reference'} b{largest}"] = speedup_text(f, ref, largest)
        row["reason"] = f.rejected_reason
        rows.append(row)
    return rows


def summary_rows(
    figures: Sequence[CandidateFigures], decision: SelectionDecision, batch_sizes: Sequence[int]
) -> list[dict[str, Any]]:
    """One compact row per candidate for the run report: status, accuracy, speed at the largest batch."""
    ref = next((f for f in figures if f.reference), None)
    largest = max(batch_sizes)
    rows = []
    for f in figures:
        lat = f.latency.get(largest)
        speedup: float | str = ""
        versus = _speedup(f, ref, largest)
        if f.reference and lat is not None:
            speedup = 1.0
        elif versus is not None:
            speedup = (
                round(versus.ratio, 2) if versus.verdict != "not distinguishable" else "not distinguishable"
            )
        rows.append(
            {
                "name": f.name,
                "runtime": f.runtime,
                "precision": f.precision,
                "device": f.device,
                "status": _status(f, decision),
                "cosine": "" if f.accuracy is None else round(f.accuracy.cosine_mean, 5),
                "drop_points": ""
                if f.accuracy is None or f.accuracy.drop_points is None
                else round(f.accuracy.drop_points, 2),
                "drop_basis": "" if f.accuracy is None else f.accuracy.drop_basis,
                "judged_by": "" if f.accuracy is None else f.accuracy.judged_by(),
                f"p50_ms_b{largest}": "" if lat is None else round(lat.p50_ms, 3),
                f"samples_per_s_b{largest}": "" if lat is None else round(lat.throughput, 1),
                f"speedup_b{largest}": speedup,
                f"speedup_iqr_b{largest}": ""
                if versus is None
                else f"{versus.ratio_p25:.2f}-{versus.ratio_p75:.2f}",
                "reason": f.rejected_reason,
            }
        )
    return rows


def decision_markdown(
    figures: Sequence[CandidateFigures], decision: SelectionDecision, batch_sizes: Sequence[int]
) -> str:
    """The Markdown the console renders: the decision and its reason, then the table."""
    head = f"**Selected: {decision.selected}**" if decision.selected else "**No candidate selected**"
    warnings = "".join(f"> **Warning:** {w}\n\n" for w in decision.warnings)
    return f"{head} ({decision.policy}): {decision.reason}\n\n{warnings}" + markdown_table(
        comparison_rows(figures, decision, batch_sizes)
    )
