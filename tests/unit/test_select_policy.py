"""Selection policies, the accuracy gate, the hook for more gates, and the comparison table."""

from __future__ import annotations

import pytest

from vxdeploy.components.common.config import SelectionConfig, parse_section
from vxdeploy.components.common.errors import AccuracyBudgetError, ConfigError, ServiceLevelError
from vxdeploy.components.select.benchmark import AccuracyFigures, CandidateFigures, latency_figures
from vxdeploy.components.select.policy import select_candidate
from vxdeploy.components.select.table import comparison_rows, decision_markdown, summary_rows


def figures(
    name: str,
    ms_by_batch: dict[int, float],
    *,
    cosine: float = 0.999,
    drop: float | None = 0.1,
    reference: bool = False,
) -> CandidateFigures:
    """A candidate whose every call at batch b takes ms_by_batch[b] milliseconds."""
    acc = AccuracyFigures(
        samples=100,
        max_abs_diff=0.01,
        cosine_mean=cosine,
        cosine_min=cosine,
        top1_agreement=1.0,
        task_accuracy=0.9,
        reference_accuracy=0.9,
        drop_points=drop,
        drop_basis="task_accuracy",
    )
    latency = {b: latency_figures(b, [ms / 1e3] * 10) for b, ms in ms_by_batch.items()}
    return CandidateFigures(name, name, "fp32", "onnxruntime", "cpu", acc, latency, reference=reference)


def test_max_throughput_picks_the_fastest_within_the_accuracy_budget() -> None:
    figs = [
        figures("eager", {1: 5, 32: 100}, reference=True),
        figures("fp32", {1: 2, 32: 40}),
        figures("int8", {1: 1, 32: 10}, drop=1.2),
        figures("fp16", {1: 1.5, 32: 20}),
    ]

    decision = select_candidate(figs, SelectionConfig(accuracy_budget=0.5))

    assert decision.selected == "fp16"
    assert "drops 1.20 points, over selection.accuracy_budget 0.5" in decision.rejected["int8"]
    assert "5.00x eager" in decision.reason and "next fp32" in decision.reason


def test_low_cosine_is_rejected_even_without_an_accuracy_drop() -> None:
    figs = [figures("a", {8: 10}, cosine=0.95, drop=0.0), figures("b", {8: 20})]

    decision = select_candidate(figs, SelectionConfig(min_cosine=0.99))

    assert decision.selected == "b" and "cosine 0.9500" in figs[0].rejected_reason


def test_min_latency_compares_the_configured_percentile_at_the_smallest_batch() -> None:
    figs = [figures("big-batch-king", {1: 3.0, 32: 10}), figures("small-batch-king", {1: 1.0, 32: 60})]

    decision = select_candidate(figs, SelectionConfig(policy="min_latency", latency_percentile="p99"))

    assert decision.selected == "small-batch-king" and decision.ranking[0].batch_size == 1


def test_latency_budget_limits_which_batch_sizes_count() -> None:
    # a is fastest at batch 32 but over budget there and at 8; b fits at batch 8.
    figs = [figures("a", {1: 2, 8: 25, 32: 60}), figures("b", {1: 3, 8: 9, 32: 30})]
    cfg = SelectionConfig(policy="max_throughput_within_latency_budget", latency_budget_ms=20)

    decision = select_candidate(figs, cfg)

    assert decision.selected == "b" and decision.ranking[0].batch_size == 8
    assert decision.ranking[1].name == "a" and decision.ranking[1].batch_size == 1


def test_candidate_over_the_latency_budget_at_every_batch_is_rejected_with_its_best() -> None:
    figs = [figures("slow", {1: 50, 8: 90}), figures("ok", {1: 5})]
    cfg = SelectionConfig(policy="max_throughput_within_latency_budget", latency_budget_ms=20)

    decision = select_candidate(figs, cfg)

    assert decision.selected == "ok" and "50.00 ms at batch 1" in decision.rejected["slow"]


def test_latency_budget_policy_needs_a_budget() -> None:
    with pytest.raises(ConfigError, match="latency_budget_ms"):
        parse_section(SelectionConfig, {"policy": "max_throughput_within_latency_budget"}, "selection")


def test_the_reference_is_never_selected() -> None:
    figs = [figures("eager", {8: 1}, reference=True), figures("ort", {8: 10})]

    assert select_candidate(figs, SelectionConfig()).selected == "ort"


def test_nothing_within_the_accuracy_budget_is_an_accuracy_error_naming_each() -> None:
    figs = [figures("int8", {8: 1}, drop=2.0), figures("fp16", {8: 2}, cosine=0.9)]

    decision = select_candidate(figs, SelectionConfig())

    assert decision.selected is None
    error = decision.error()
    assert isinstance(error, AccuracyBudgetError)
    assert "int8: " in str(error) and "fp16: " in str(error)


def test_nothing_within_the_latency_budget_is_a_service_level_error() -> None:
    cfg = SelectionConfig(policy="max_throughput_within_latency_budget", latency_budget_ms=1)

    decision = select_candidate([figures("a", {1: 5})], cfg)

    assert isinstance(decision.error(), ServiceLevelError)


def test_extra_gates_reject_after_accuracy_with_their_reason() -> None:
    figs = [figures("gpu", {8: 1}), figures("cpu", {8: 4})]

    def too_expensive(f: CandidateFigures) -> str | None:
        return "costs 3.2 $/h, over service_levels.max_cost_per_hour 2" if f.name == "gpu" else None

    decision = select_candidate(figs, SelectionConfig(), extra_gates=[too_expensive])

    assert decision.selected == "cpu" and decision.rejected["gpu"].startswith("costs 3.2")


def test_candidates_rejected_before_selection_keep_their_reason() -> None:
    skipped = CandidateFigures("tensorrt_fp16", "tensorrt_fp16", "fp16", "tensorrt", "cuda")
    skipped.rejected_reason = "not built (skipped): no GPU"

    decision = select_candidate([skipped, figures("ort", {8: 4})], SelectionConfig())

    assert decision.rejected == {"tensorrt_fp16": "not built (skipped): no GPU"}


def test_table_marks_the_decision_and_gives_speedups_and_reasons() -> None:
    figs = [
        figures("eager", {1: 4, 32: 100}, reference=True),
        figures("ort", {1: 2, 32: 25}),
        figures("bad", {1: 1, 32: 5}, drop=3),
    ]
    decision = select_candidate(figs, SelectionConfig(batch_sizes=[1, 32]))

    rows = {r["candidate"]: r for r in comparison_rows(figs, decision, [1, 32])}
    text = decision_markdown(figs, decision, [1, 32])

    assert rows["ort"]["status"] == "SELECTED" and rows["ort"]["vs eager b32"].startswith("4.00x")
    assert rows["bad"]["status"] == "rejected" and "accuracy_budget" in rows["bad"]["reason"]
    assert rows["eager"]["status"] == "reference"
    assert text.startswith("**Selected: ort** (max_throughput): ort selected by max_throughput")


def test_report_rows_name_each_candidate_with_its_status_and_speedup() -> None:
    figs = [figures("eager", {32: 100}, reference=True), figures("ort", {32: 25})]
    decision = select_candidate(figs, SelectionConfig(batch_sizes=[32]))

    rows = summary_rows(figs, decision, [32])

    assert [(r["name"], r["status"], r["speedup_b32"]) for r in rows] == [
        ("eager", "reference", 1.0),
        ("ort", "SELECTED", 4.0),
    ]


def interleaved(name: str, round_ms: list[float], *, batch: int = 32, **kw: object) -> CandidateFigures:
    """A candidate timed in interleaved rounds: one call per round, taking round_ms[r] in round r."""
    f = figures(name, {batch: 1.0}, **kw)  # type: ignore[arg-type]
    times = [ms / 1e3 for ms in round_ms]
    f.latency = {batch: latency_figures(batch, times, times)}
    return f


# Machine load that changes from round to round; both runners see the same round's load.
LOAD = [1.0, 1.9, 1.1, 2.4, 1.0, 1.3, 2.2, 1.0, 1.6, 1.2]


def test_difference_inside_the_spread_is_not_picked_on_speed() -> None:
    # Given INT8 3 % faster on the median but its round-by-round ratio to FP32 spanning 1
    jitter = [1.06, 0.95, 1.08, 0.97, 1.07, 0.96, 1.05, 0.98, 1.09, 0.94]
    figs = [
        interleaved("eager", [100 * x for x in LOAD], reference=True),
        interleaved("onnxruntime_fp32", [50 * x for x in LOAD], cosine=1.0, drop=0.0),
        interleaved("onnxruntime_int8", [50 * x / (1.03 * j) for x, j in zip(LOAD, jitter, strict=True)]),
    ]
    figs[1].kind, figs[2].kind = "onnxruntime_fp32", "onnxruntime_int8"

    # When selecting by throughput
    decision = select_candidate(figs, SelectionConfig(batch_sizes=[32]))

    # Then the more accurate FP32 wins and the reason says why
    assert decision.selected == "onnxruntime_fp32"
    assert decision.tied_with == ["onnxruntime_int8"]
    assert "not distinguishable" in decision.reason


def test_difference_outside_the_spread_is_claimed_with_its_spread() -> None:
    # Given a candidate 2x faster than eager in every round, whatever the load
    figs = [
        interleaved("eager", [100 * x for x in LOAD], reference=True),
        interleaved("fast", [50 * x for x in LOAD]),
    ]

    decision = select_candidate(figs, SelectionConfig(batch_sizes=[32]))
    rows = {r["candidate"]: r for r in comparison_rows(figs, decision, [32])}

    # Then the speed-up is 2x with a tight spread, though each runner's own spread is wide
    assert figs[0].latency[32].iqr_pct > 25
    assert rows["fast"]["vs eager b32"] == "2.00x (2.00-2.00)"
    assert "2.00x eager" in decision.reason


def test_noisy_reference_is_warned_about_in_the_decision_and_the_table() -> None:
    figs = [
        interleaved("eager", [100 * x for x in LOAD], reference=True),
        interleaved("fast", [50 * x for x in LOAD]),
    ]

    decision = select_candidate(figs, SelectionConfig(batch_sizes=[32], spread_warning_pct=25))
    text = decision_markdown(figs, decision, [32])

    assert decision.warnings and "spread" in decision.warnings[0] and "batch 32" in decision.warnings[0]
    assert "> **Warning:**" in text


def test_speedup_spanning_one_is_reported_as_not_distinguishable() -> None:
    jitter = [1.1, 0.9, 1.12, 0.92, 1.08, 0.9, 1.1, 0.93, 1.1, 0.91]
    figs = [
        interleaved("eager", [100 * x for x in LOAD], reference=True),
        interleaved("same", [100 * x * j for x, j in zip(LOAD, jitter, strict=True)]),
    ]

    decision = select_candidate(figs, SelectionConfig(batch_sizes=[32]))
    summary = {r["name"]: r for r in summary_rows(figs, decision, [32])}
    rows = {r["candidate"]: r for r in comparison_rows(figs, decision, [32])}

    assert summary["same"]["speedup_b32"] == "not distinguishable"
    assert "not distinguishable" in rows["same"]["vs eager b32"]
