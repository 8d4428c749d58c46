"""Service-level checks on measured figures, and the stop before deployment when none can be met."""

from __future__ import annotations

from pathlib import Path

import pytest

from vxdeploy.components.common.config import DeploymentConfig, ServiceLevelConfig
from vxdeploy.components.common.errors import InternalError, ServiceLevelError
from vxdeploy.components.cost import (
    MachinePrice,
    MeasuredCandidate,
    PriceTable,
    check_service_levels,
    estimate_costs,
    local_cpu_description,
    require_feasible,
    vertex_accelerator_name,
)

CPU = "cpu:Test CPU (2 cores)"


def _points(name: str, figures: list[tuple[int, float, float, float]]) -> list[MeasuredCandidate]:
    """Points of one CPU candidate from (batch, p50 ms, p95 ms, predictions/s)."""
    return [
        MeasuredCandidate(name, name, CPU, batch, p50, p95, p95 * 1.2, rps)
        for batch, p50, p95, rps in figures
    ]


def test_candidate_missing_p95_is_rejected_with_the_target_and_its_best_figure() -> None:
    points = _points("slow", [(1, 3.0, 7.31, 300.0), (8, 9.0, 12.0, 900.0)]) + _points(
        "quick", [(1, 1.0, 2.0, 1000.0)]
    )

    missed = check_service_levels(points, ServiceLevelConfig(p95_latency_ms=5))

    assert missed == {
        "slow": ["service_levels.p95_latency_ms=5: best p95 measured 7.31 ms (batch 1)"],
        "quick": [],
    }


def test_candidate_missing_p50_is_rejected_even_when_p95_is_met() -> None:
    points = _points("median_heavy", [(1, 4.5, 4.8, 200.0)])

    missed = check_service_levels(points, ServiceLevelConfig(p50_latency_ms=4, p95_latency_ms=5))

    assert missed["median_heavy"] == ["service_levels.p50_latency_ms=4: best p50 measured 4.5 ms (batch 1)"]


def test_replica_rate_counts_only_batch_sizes_that_carry_it() -> None:
    # Given batch 1 is quick but carries 30/s, batch 8 carries 120/s but is slow
    points = _points("ort", [(1, 1.0, 2.0, 30.0), (8, 6.0, 9.0, 120.0)])
    cfg = ServiceLevelConfig(p95_latency_ms=5, replica_requests_per_second=50)

    missed = check_service_levels(points, cfg)

    assert missed["ort"] == [
        "service_levels.p95_latency_ms=5: best p95 measured 9 ms (batch 8) among batch sizes carrying "
        "50 predictions/s per replica"
    ]


def test_replica_rate_above_every_measured_throughput_is_a_throughput_miss() -> None:
    points = _points("ort", [(1, 1.0, 2.0, 30.0), (8, 6.0, 9.0, 40.0)])

    missed = check_service_levels(points, ServiceLevelConfig(replica_requests_per_second=50))

    assert missed["ort"] == [
        "service_levels.replica_requests_per_second=50: highest throughput measured 40 predictions/s per "
        "replica (batch 8)"
    ]


def test_targets_met_only_at_different_batch_sizes_are_not_met() -> None:
    # p50 is only met at batch 1 and p95 only at batch 8 (an odd but possible measurement)
    points = _points("odd", [(1, 1.0, 9.0, 100.0), (8, 3.0, 4.0, 400.0)])

    missed = check_service_levels(points, ServiceLevelConfig(p50_latency_ms=2, p95_latency_ms=5))

    assert missed["odd"][0].startswith("service_levels.p50_latency_ms=2 and p95_latency_ms=5 are not met")


def test_no_targets_means_every_candidate_passes() -> None:
    points = _points("a", [(1, 50.0, 90.0, 10.0)])

    assert require_feasible(points, ServiceLevelConfig()) == ["a"]


def test_feasible_candidates_are_returned_in_measured_order() -> None:
    points = _points("b", [(1, 1.0, 2.0, 100.0)]) + _points("slow", [(1, 9.0, 20.0, 100.0)])
    points += _points("a", [(1, 1.0, 3.0, 100.0)])

    assert require_feasible(points, ServiceLevelConfig(p95_latency_ms=5)) == ["b", "a"]


def test_impossible_latency_target_stops_the_run_naming_the_target_and_best_figure() -> None:
    points = _points("ort_fp32", [(1, 3.0, 9.5, 300.0)]) + _points("ort_int8", [(1, 2.0, 7.31, 400.0)])

    with pytest.raises(ServiceLevelError) as err:
        require_feasible(points, ServiceLevelConfig(p95_latency_ms=5))

    message = str(err.value)
    assert "service_levels.p95_latency_ms=5: the lowest p95 measured is 7.31 ms" in message
    assert f"(ort_int8, batch 1, on {CPU})" in message
    assert "before deployment" in message


def test_targets_each_met_by_some_candidate_but_never_together_list_each_candidates_miss() -> None:
    points = _points("low_median", [(1, 1.0, 9.0, 100.0)]) + _points("low_tail", [(1, 4.0, 4.5, 100.0)])

    with pytest.raises(ServiceLevelError) as err:
        require_feasible(points, ServiceLevelConfig(p50_latency_ms=2, p95_latency_ms=5))

    message = str(err.value)
    assert message.startswith("no candidate meets every service-level target at once")
    assert "low_median: service_levels.p95_latency_ms=5: best p95 measured 9 ms" in message
    assert "low_tail: service_levels.p50_latency_ms=2: best p50 measured 4 ms" in message


def test_impossible_cost_ceiling_names_the_cheapest_configuration() -> None:
    points = _points("ort", [(8, 4.0, 6.0, 100.0)])
    cfg = ServiceLevelConfig(requests_per_second=250, max_cost_per_hour=0.5)
    deployment = DeploymentConfig(machine_type="n1-standard-4", accelerator_type="", accelerator_count=0)
    table = PriceTable(
        taken="2026-01-01",
        source="test",
        machines={"us-central1": {"n1-standard-4": MachinePrice("n1-standard-4", 0.20)}},
        accelerators={},
    )
    report = estimate_costs(points, cfg, deployment, table)

    with pytest.raises(ServiceLevelError) as err:
        require_feasible(points, cfg, report)

    assert "service_levels.max_cost_per_hour=0.5: the cheapest measured configuration costs $0.6000/h" in str(
        err.value
    )


def test_cost_ceiling_without_any_priced_candidate_says_why() -> None:
    # Given only a T4 figure for a deployment on an L4: nothing can be priced
    points = [MeasuredCandidate("trt", "tensorrt_fp16", "NVIDIA_TESLA_T4", 8, 1.0, 2.0, 2.5, 900.0)]
    cfg = ServiceLevelConfig(max_cost_per_hour=5)
    report = estimate_costs(points, cfg, DeploymentConfig())

    with pytest.raises(ServiceLevelError) as err:
        require_feasible(points, cfg, report)

    assert "no candidate could be priced" in str(err.value)
    assert "no figure measured on NVIDIA_L4" in str(err.value)


def test_no_measured_candidate_with_targets_stops_the_run() -> None:
    with pytest.raises(ServiceLevelError, match="no candidate was measured"):
        require_feasible([], ServiceLevelConfig(p95_latency_ms=5))


def test_measured_point_with_a_nan_latency_is_refused() -> None:
    with pytest.raises(InternalError, match="latencies must be finite"):
        MeasuredCandidate("x", "aoti", CPU, 1, float("nan"), 1.0, 1.0, 10.0)


def test_one_candidate_measured_on_two_devices_is_refused() -> None:
    points = [
        MeasuredCandidate("x", "aoti", CPU, 1, 1.0, 1.0, 1.0, 10.0),
        MeasuredCandidate("x", "aoti", "NVIDIA_L4", 8, 1.0, 1.0, 1.0, 10.0),
    ]

    with pytest.raises(InternalError, match="give each device its own candidate name"):
        check_service_levels(points, ServiceLevelConfig())


def test_local_cpu_description_reads_the_model_name(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n")

    description = local_cpu_description(cpuinfo)

    assert description.startswith("cpu:Example CPU @ 2.0GHz (")


def test_measured_on_must_name_a_cpu_or_a_vertex_gpu() -> None:
    with pytest.raises(InternalError, match="neither 'cpu:<description>' nor one of"):
        MeasuredCandidate("x", "tensorrt_fp16", "NVIDIA L4", 1, 1.0, 1.0, 1.0, 10.0)


@pytest.mark.parametrize(
    ("device", "vertex"),
    [
        ("NVIDIA L4", "NVIDIA_L4"),
        ("Tesla T4", "NVIDIA_TESLA_T4"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA_A100_80GB"),
        ("NVIDIA A100-SXM4-40GB", "NVIDIA_TESLA_A100"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA_H100_80GB"),
        ("NVIDIA L40S", None),
    ],
)
def test_cuda_device_names_map_to_vertex_accelerator_names(device: str, vertex: str | None) -> None:
    assert vertex_accelerator_name(device) == vertex
