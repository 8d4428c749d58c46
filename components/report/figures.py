"""The report's pictures, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Each function takes the figures :func:`vxdeploy.components.report.build.build_report` keeps and returns
None when the run measured nothing to draw, so the page shows only the pictures that apply.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on a build machine or in a pipeline task

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vxdeploy.components.report.build import iter_batches  # noqa: E402

DPI = 110
_SELECTED = "#d62728"
_COSINE = "cosine similarity to FP32"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def latency_vs_batch(candidates: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Median latency per call against batch size, one line per candidate, bars the interquartile range.

    The interquartile range is stored relative to the median (``iqr_pct``): the bar spans that
    width centred on the median.
    """
    series = [(c, list(iter_batches(c))) for c in candidates]
    series = [(c, points) for c, points in series if points]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    batches: set[int] = set()
    for cand, points in series:
        xs = [b for b, _ in points]
        ys = [float(lat["p50_ms"]) for _, lat in points]
        half = [float(lat["p50_ms"]) * float(lat.get("iqr_pct", 0.0)) / 200.0 for _, lat in points]
        # On a log axis a bar cannot reach zero: the lower half stops just above it.
        below = [min(h, 0.9 * y) for h, y in zip(half, ys, strict=True)]
        batches.update(xs)
        selected = cand.get("status") == "selected"
        ax.errorbar(
            xs,
            ys,
            yerr=[below, half],
            marker="o",
            capsize=3,
            linewidth=2.4 if selected else 1.4,
            linestyle="--" if cand.get("reference") else "-",
            label=f"{cand['name']}"
            + (" (selected)" if selected else "")
            + (" (reference)" if cand.get("reference") else ""),
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(batches), [str(b) for b in sorted(batches)])
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency per call (ms)")
    ax.set_title("Latency vs batch size (bars: interquartile range)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _best_throughput(cand: Mapping[str, Any]) -> tuple[int, float] | None:
    points = [(b, float(lat["throughput"])) for b, lat in iter_batches(cand)]
    return max(points, key=lambda p: p[1]) if points else None


def _accuracy_value(cand: Mapping[str, Any]) -> tuple[float, float | None, str] | None:
    """(candidate value, FP32 value, label) of the first output judged by drop, else the cosine."""
    accuracy = cand.get("accuracy") or {}
    for out in accuracy.get("outputs") or []:
        if out.get("candidate_value") is not None and out.get("drop_points") is not None:
            fp32 = out.get("fp32_value")
            return (
                float(out["candidate_value"]),
                None if fp32 is None else float(fp32),
                f"{out['name']}: {out['metric']}",
            )
    if accuracy.get("cosine_mean") is not None:
        return float(accuracy["cosine_mean"]), 1.0, _COSINE
    return None


def accuracy_vs_throughput(
    candidates: Sequence[Mapping[str, Any]], budget_points: float | None, min_cosine: float | None = None
) -> bytes | None:
    """Accuracy by the model's metric against best throughput; the budget line and the selected one marked.

    A model judged by cosine similarity alone (no labels) is drawn on that scale, with the
    ``selection.min_cosine`` gate as its budget.
    """
    points = []
    for cand in candidates:
        best, acc = _best_throughput(cand), _accuracy_value(cand)
        if best is not None and acc is not None:
            points.append((cand, best, acc))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    label = points[0][2][2]
    fp32 = next((acc[1] for _, _, acc in points if acc[1] is not None), None)
    for cand, (batch, rate), (value, _, _) in points:
        status = cand.get("status")
        style = {
            "selected": {"marker": "*", "s": 260, "color": _SELECTED, "zorder": 4},
            "rejected": {"marker": "x", "s": 70, "color": "grey"},
            "reference": {"marker": "s", "s": 60, "color": "black"},
        }.get(str(status), {"marker": "o", "s": 60, "color": "#1f77b4"})
        ax.scatter([rate], [value], **style)  # type: ignore[arg-type]
        ax.annotate(
            f"{cand['name']} (b{batch})" + (" selected" if status == "selected" else ""),
            (rate, value),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    if label == _COSINE:
        if min_cosine is not None:
            ax.axhline(min_cosine, color=_SELECTED, linestyle=":", label=f"budget: cosine >= {min_cosine:g}")
            ax.legend(fontsize=8)
    elif fp32 is not None and budget_points is not None:
        ax.axhline(
            fp32 - budget_points,
            color=_SELECTED,
            linestyle=":",
            label=f"budget: FP32 - {budget_points:g} pts",
        )
        ax.axhline(fp32, color="black", linestyle="--", linewidth=0.8, label="FP32")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("best throughput (samples/s)")
    ax.set_ylabel(label)
    ax.set_title("Accuracy vs throughput")
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def serve_throughput_vs_concurrency(points: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Triton's served throughput against concurrent clients, with and without dynamic batching."""
    modes: dict[str, list[tuple[int, float, float]]] = {}
    for p in points:
        modes.setdefault(str(p.get("batching")), []).append(
            (int(p["concurrency"]), float(p["throughput_rps"]), float(p.get("p99_ms") or 0.0))
        )
    if not modes:
        return None
    fig, (rate_ax, p99_ax) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for mode, rows in sorted(modes.items()):
        rows.sort()
        name = {"on": "dynamic batching on", "off": "dynamic batching off"}.get(mode, mode)
        rate_ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=name)
        p99_ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", label=name)
    for ax, ylabel in ((rate_ax, "inferences/s"), (p99_ax, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        clients = sorted({r[0] for rows in modes.values() for r in rows})
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Serve check: Triton throughput vs concurrency")
    return _png(fig)


def canary_steps(analyses: Sequence[Mapping[str, Any]]) -> bytes | None:
    """The canary's traffic share per analysis, and its error rate and p99 against the baseline's."""
    if not analyses:
        return None
    labels = [f"{a.get('step')}.{a.get('attempt')}\n{a.get('percent')}%" for a in analyses]
    xs = list(range(len(analyses)))
    fig, (traffic_ax, error_ax, p99_ax) = plt.subplots(1, 3, figsize=(11, 3.6))
    colours = ["#2ca02c" if a.get("verdict") == "pass" else _SELECTED for a in analyses]
    traffic_ax.bar(xs, [float(a.get("percent") or 0) for a in analyses], color=colours)
    traffic_ax.set_ylabel("canary traffic (%)")
    traffic_ax.set_ylim(0, 105)
    traffic_ax.set_title("traffic (green: pass, red: fail)", fontsize=9)

    def series(role: str, key: str) -> list[float]:
        values = []
        for a in analyses:
            stats = a.get(role) if role == "canary" or a.get("baseline_step") is None else None
            value = (stats or {}).get(key)
            values.append(float("nan") if value is None else float(value))
        return values

    for ax, key, ylabel in (
        (error_ax, "error_rate", "error rate"),
        (p99_ax, "p99_latency_ms", "p99 latency (ms)"),
    ):
        ax.plot(xs, series("canary", key), marker="o", label="canary")
        ax.plot(xs, series("baseline", key), marker="s", linestyle="--", label="baseline (same window)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    for ax in (traffic_ax, error_ax, p99_ax):
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_xlabel("step.attempt")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Canary steps")
    fig.tight_layout()
    return _png(fig)


def generation_part_latency(parts: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """A generation model's parts: each measured candidate's median latency at the largest batch.

    One group of bars per part (in run order), the selected candidate drawn in the selection colour
    and hatched; the reference (PyTorch) bar outlined.
    """
    groups = []
    for part, facts in parts.items():
        bench = facts.get("benchmark") or {}
        batch = max((int(b) for b in bench.get("batch_sizes") or []), default=0)
        bars = [
            (str(f.get("name")), float(f["latency"][str(batch)]["p50_ms"]), bool(f.get("reference")))
            for f in bench.get("figures") or []
            if str(batch) in (f.get("latency") or {})
        ]
        if bars:
            groups.append((part, batch, str(facts.get("selected", "")), bars))
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(groups)), 4.2))
    width = 0.8 / max(len(bars) for _, _, _, bars in groups)
    for gi, (_, _, selected, bars) in enumerate(groups):
        for bi, (name, p50, reference) in enumerate(bars):
            chosen = name == selected
            ax.bar(
                gi + (bi - (len(bars) - 1) / 2) * width,
                p50,
                width * 0.9,
                color=_SELECTED if chosen else "white" if reference else "#1f77b4",
                edgecolor="black",
                hatch="//" if chosen else None,
            )
            ax.annotate(
                name,
                (gi + (bi - (len(bars) - 1) / 2) * width, p50),
                rotation=90,
                fontsize=7,
                ha="center",
                va="bottom",
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(
        range(len(groups)), [f"{part}\n(batch {batch})" for part, batch, _, _ in groups], fontsize=8
    )
    ax.set_yscale("log")
    top = max(p50 for _, _, _, bars in groups for _, p50, _ in bars)
    ax.set_ylim(top=top * 6)  # room for the candidates' names above the bars
    ax.set_ylabel("median latency per call (ms)")
    ax.set_title("Per-part candidates (red, hatched: selected; white: PyTorch reference)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return _png(fig)


def report_pictures(report: Mapping[str, Any]) -> dict[str, tuple[str, bytes]]:
    """Every picture that applies to the run: name -> (caption, PNG)."""
    from vxdeploy.components.report.build import figure_data

    data = figure_data(report)
    makers: dict[str, tuple[str, Callable[[], bytes | None]]] = {
        "latency": (
            "Latency vs batch size per candidate, with its spread",
            lambda: latency_vs_batch(data["latency"]),
        ),
        "tradeoff": (
            "Accuracy vs throughput: the budget drawn, the selected candidate marked",
            lambda: accuracy_vs_throughput(
                data["tradeoff"], report.get("accuracy_budget"), report.get("min_cosine")
            ),
        ),
        "serve_sweep": (
            "Serve check: throughput vs concurrency with and without dynamic batching",
            lambda: serve_throughput_vs_concurrency(data["serve_sweep"]),
        ),
        "canary": ("Canary: traffic and metrics per step", lambda: canary_steps(data["canary"])),
        "generation_parts": (
            "Generation model: each part's candidates, median latency at the largest batch",
            lambda: generation_part_latency(data["generation_parts"]),
        ),
    }
    pictures = {}
    for name, (caption, make) in makers.items():
        png = make()
        if png is not None:
            pictures[name] = (caption, png)
    return pictures
