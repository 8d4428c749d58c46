"""The comparison table: one row per candidate (and the reference), with the decision above it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from components.common.stage import markdown_table
from components.select.benchmark import CandidateFigures
from components.select.policy import SelectionDecision


def _status(f: CandidateFigures, decision: SelectionDecision) -> str:
    if f.reference:
        return "reference"
    if f.name == decision.selected:
        return "SELECTED"
    return "rejected" if f.rejected_reason else "passed"


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
        }
        for b in batch_sizes:
            lat = f.latency.get(b)
            row[f"p50/p99 ms b{b}"] = "" if lat is None else f"{lat.p50_ms:.3g} / {lat.p99_ms:.3g}"
            row[f"samples/s b{b}"] = "" if lat is None else round(lat.throughput, 1)
            row[f"IQR b{b}"] = "" if lat is None else f"{lat.iqr_pct:.0f}%"
        speedup = ""
        if ref is not None and largest in f.latency and largest in ref.latency:
            speedup = f"{f.latency[largest].throughput / ref.latency[largest].throughput:.2f}x"
        row[f"vs {ref.name if ref else 'reference'} b{largest}"] = speedup
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
        if ref is not None and lat is not None and largest in ref.latency:
            speedup = round(lat.throughput / ref.latency[largest].throughput, 2)
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
                f"p50_ms_b{largest}": "" if lat is None else round(lat.p50_ms, 3),
                f"samples_per_s_b{largest}": "" if lat is None else round(lat.throughput, 1),
                f"speedup_b{largest}": speedup,
                "reason": f.rejected_reason,
            }
        )
    return rows


def decision_markdown(
    figures: Sequence[CandidateFigures], decision: SelectionDecision, batch_sizes: Sequence[int]
) -> str:
    """The Markdown the console renders: the decision and its reason, then the table."""
    head = f"**Selected: {decision.selected}**" if decision.selected else "**No candidate selected**"
    return f"{head} ({decision.policy}): {decision.reason}\n\n" + markdown_table(
        comparison_rows(figures, decision, batch_sizes)
    )
