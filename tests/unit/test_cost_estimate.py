"""The cost model: replicas and cost from measured figures, priced only on the hardware measured."""

from __future__ import annotations

import pytest

from vxdeploy.components.common.config import DeploymentConfig, ServiceLevelConfig
from vxdeploy.components.cost import MachinePrice, MeasuredCandidate, PriceTable, estimate_costs
from vxdeploy.components.cost.prices import AcceleratorPrice

CPU = "cpu:Test CPU (2 cores)"
CPU_DEPLOYMENT = DeploymentConfig(machine_type="n1-standard-4", accelerator_type="", accelerator_count=0)


def _points(
    name: str, measured_on: str, figures: list[tuple[int, float, float, float]]
) -> list[MeasuredCandidate]:
    """Points of one candidate from (batch, p50 ms, p95 ms, predictions/s)."""
    return [
        MeasuredCandidate(name, name, measured_on, batch, p50, p95, p95 * 1.2, rps)
        for batch, p50, p95, rps in figures
    ]


def _table() -> PriceTable:
    """Round test prices, independent of the shipped snapshot."""
    return PriceTable(
        taken="2026-01-01",
        source="test prices",
        machines={
            "us-central1": {
                "n1-standard-4": MachinePrice("n1-standard-4", on_demand=0.20, spot=0.08),
                "e2-standard-4": MachinePrice("e2-standard-4", on_demand=0.10, spot=0.05),
                "g2-standard-8": MachinePrice(
                    "g2-standard-8",
                    on_demand=1.00,
                    spot=0.60,
                    accelerator_type="NVIDIA_L4",
                    accelerator_count=1,
                ),
            }
        },
        accelerators={
            "us-central1": {"NVIDIA_TESLA_T4": AcceleratorPrice("NVIDIA_TESLA_T4", 0.40, spot=0.15)}
        },
    )


def test_replicas_hour_month_and_million_costs_follow_from_measured_throughput() -> None:
    # Given 250 predictions/s to carry and 100 predictions/s per replica measured at batch 8
    points = _points("ort", CPU, [(1, 1.0, 2.0, 40.0), (8, 4.0, 6.0, 100.0)])
    cfg = ServiceLevelConfig(requests_per_second=250)

    # When it is priced as an n1-standard-4 at $0.20/h
    row = estimate_costs(points, cfg, CPU_DEPLOYMENT, _table()).row("ort")

    # Then 3 replicas run at batch 8: $0.60/h, 730 h a month, $0.60 per 900,000 predictions
    assert (row.batch_size, row.replicas) == (8, 3)
    assert row.cost_per_hour == pytest.approx(0.60)
    assert row.cost_per_month == pytest.approx(438.0)
    assert row.cost_per_million == pytest.approx(0.60 / (250 * 3600) * 1e6)
    assert row.spot_cost_per_hour is None


def test_spot_deployment_is_costed_at_spot_prices_beside_on_demand() -> None:
    points = _points("ort", CPU, [(8, 4.0, 6.0, 100.0)])
    deployment = CPU_DEPLOYMENT.model_copy(update={"spot": True, "accept_spot_preemption": True})

    report = estimate_costs(points, ServiceLevelConfig(requests_per_second=250), deployment, _table())

    row = report.row("ort")
    assert row.spot_cost_per_hour == pytest.approx(3 * 0.08)
    assert row.spot_cost_per_month == pytest.approx(3 * 0.08 * 730)
    assert row.effective_cost_per_hour == pytest.approx(0.24)
    assert "spot $/hour" in report.to_markdown()


def test_latency_target_limits_the_batch_size_and_so_raises_the_replica_count() -> None:
    # Given batch 32 is fastest but its p95 misses the 10 ms target, batch 8 meets it
    points = _points("ort", CPU, [(8, 5.0, 8.0, 100.0), (32, 15.0, 20.0, 400.0)])
    cfg = ServiceLevelConfig(requests_per_second=250, p95_latency_ms=10)

    row = estimate_costs(points, cfg, CPU_DEPLOYMENT, _table()).row("ort")

    assert (row.batch_size, row.replicas, row.p95_ms) == (8, 3, 8.0)
    assert row.meets_targets


def test_min_replicas_is_the_floor_and_an_exact_ratio_is_not_rounded_up() -> None:
    points = _points("ort", CPU, [(8, 4.0, 6.0, 50.0)])

    exact = estimate_costs(points, ServiceLevelConfig(requests_per_second=100), CPU_DEPLOYMENT, _table())
    floored = estimate_costs(
        points,
        ServiceLevelConfig(requests_per_second=10),
        CPU_DEPLOYMENT.model_copy(update={"min_replicas": 2, "max_replicas": 4}),
        _table(),
    )

    assert exact.row("ort").replicas == 2
    assert floored.row("ort").replicas == 2


def test_replica_rate_sets_the_replica_count_when_given() -> None:
    # Given each replica should carry 50/s although it measured 100/s
    points = _points("ort", CPU, [(8, 4.0, 6.0, 100.0)])
    cfg = ServiceLevelConfig(requests_per_second=200, replica_requests_per_second=50)

    row = estimate_costs(points, cfg, CPU_DEPLOYMENT.model_copy(update={"max_replicas": 8}), _table()).row(
        "ort"
    )

    assert row.replicas == 4


def test_cpu_figures_are_priced_as_the_default_cpu_machine_when_the_deployment_has_a_gpu() -> None:
    points = _points("ort", CPU, [(8, 4.0, 6.0, 100.0)])

    report = estimate_costs(points, ServiceLevelConfig(), DeploymentConfig(), _table())

    assert report.row("ort").priced_as == "n1-standard-4"
    assert any("priced as Vertex AI n1-standard-4 replicas" in note for note in report.notes)


def test_cpu_machine_type_from_config_prices_cpu_figures() -> None:
    points = _points("ort", CPU, [(8, 4.0, 6.0, 100.0)])

    row = estimate_costs(
        points, ServiceLevelConfig(cpu_machine_type="e2-standard-4"), DeploymentConfig(), _table()
    ).row("ort")

    assert row.priced_as == "e2-standard-4"
    assert row.cost_per_hour == pytest.approx(0.10)


def test_gpu_figures_are_priced_as_the_deployment_machine_with_its_gpu() -> None:
    points = _points("trt", "NVIDIA_L4", [(8, 1.0, 2.0, 1000.0)])

    row = estimate_costs(
        points, ServiceLevelConfig(requests_per_second=2500), DeploymentConfig(), _table()
    ).row("trt")

    assert row.priced_as == "g2-standard-8 (1 x NVIDIA_L4)"
    assert row.replicas == 3
    assert row.cost_per_hour == pytest.approx(3.00)


def test_gpu_billed_on_top_of_the_machine_adds_to_the_node_price() -> None:
    points = _points("trt", "NVIDIA_TESLA_T4", [(8, 1.0, 2.0, 1000.0)])
    deployment = DeploymentConfig(machine_type="n1-standard-4", accelerator_type="NVIDIA_TESLA_T4")

    row = estimate_costs(points, ServiceLevelConfig(), deployment, _table()).row("trt")

    assert row.node_price_per_hour == pytest.approx(0.20 + 0.40)


def test_no_figure_measured_on_the_deployment_gpu_is_reported_instead_of_extrapolated() -> None:
    # Given only CPU figures and a figure measured on a T4, for a deployment on an L4
    points = _points("ort", CPU, [(8, 4.0, 6.0, 100.0)]) + _points(
        "trt", "NVIDIA_TESLA_T4", [(8, 1.0, 2.0, 900.0)]
    )

    report = estimate_costs(points, ServiceLevelConfig(), DeploymentConfig(), _table())

    # Then the T4 figure is not costed as an L4 and the report says nothing was measured on the L4
    trt = report.row("trt")
    assert trt.cost_per_hour is None and trt.priced_as == ""
    assert "no figure measured on NVIDIA_L4" in trt.notes[0]
    assert any(note.startswith("No candidate was measured on NVIDIA_L4") for note in report.notes)
    assert "not costed" in report.to_markdown()


def test_machine_missing_from_the_price_table_names_the_override_to_set() -> None:
    points = _points("ort", CPU, [(8, 4.0, 6.0, 100.0)])

    row = estimate_costs(
        points, ServiceLevelConfig(cpu_machine_type="c3-standard-4"), DeploymentConfig(), _table()
    ).row("ort")

    assert row.cost_per_hour is None
    assert "service_levels.price_overrides['machine:c3-standard-4']" in row.notes[0]


def test_price_override_replaces_the_snapshot_price() -> None:
    points = _points("ort", CPU, [(8, 4.0, 6.0, 100.0)])
    cfg = ServiceLevelConfig(price_overrides={"machine:n1-standard-4": 0.5})

    report = estimate_costs(points, cfg, CPU_DEPLOYMENT, _table())

    assert report.row("ort").cost_per_hour == pytest.approx(0.5)
    assert "machine:n1-standard-4=$0.5/h" in report.notes[-1]


def test_cheapest_candidate_meeting_the_targets_is_named() -> None:
    # Given a fast candidate that misses p95 and two that meet it at different replica counts
    points = (
        _points("fast_but_slow_tail", CPU, [(8, 2.0, 50.0, 1000.0)])
        + _points("two_replicas", CPU, [(8, 4.0, 6.0, 60.0)])
        + _points("one_replica", CPU, [(8, 4.0, 8.0, 120.0)])
    )
    cfg = ServiceLevelConfig(requests_per_second=100, p95_latency_ms=10)

    report = estimate_costs(points, cfg, CPU_DEPLOYMENT, _table())

    assert report.cheapest == "one_replica"
    assert "**Cheapest meeting the targets:** one_replica" in report.to_markdown()
    assert not report.row("fast_but_slow_tail").meets_targets


def test_cost_ceiling_is_a_missed_target_naming_the_cost() -> None:
    points = _points("ort", CPU, [(8, 4.0, 6.0, 100.0)])
    cfg = ServiceLevelConfig(requests_per_second=250, max_cost_per_hour=0.5)

    row = estimate_costs(points, cfg, CPU_DEPLOYMENT, _table()).row("ort")

    assert row.missed == ("service_levels.max_cost_per_hour=0.5: costs $0.6000/h (3 x n1-standard-4)",)


def test_replicas_beyond_max_replicas_are_flagged() -> None:
    points = _points("ort", CPU, [(8, 4.0, 6.0, 10.0)])

    row = estimate_costs(points, ServiceLevelConfig(requests_per_second=50), CPU_DEPLOYMENT, _table()).row(
        "ort"
    )

    assert row.replicas == 5
    assert "deployment.max_replicas=2" in row.notes[0]


def test_shipped_snapshot_prices_the_default_local_run() -> None:
    # Given the defaults (deployment on g2-standard-8 + L4) and figures measured on this CPU
    points = _points("onnxruntime_fp32", CPU, [(1, 0.3, 0.5, 3000.0)])

    report = estimate_costs(points, ServiceLevelConfig(), DeploymentConfig())

    # Then the CPU figures are priced at the snapshot's n1-standard-4 price and the table shows them
    assert report.cheapest == "onnxruntime_fp32"
    assert report.row("onnxruntime_fp32").cost_per_hour == pytest.approx(0.21849885)
    assert report.prices_taken == "2026-08-20"
    assert "| onnxruntime_fp32 | cpu:Test CPU (2 cores) | n1-standard-4 |" in report.to_markdown()
