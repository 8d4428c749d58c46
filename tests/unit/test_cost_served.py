"""The cost table from the serve check's sweep: replicas from served throughput at the latency target."""

from __future__ import annotations

from vxdeploy.components.common.config import DeploymentConfig, ServiceLevelConfig
from vxdeploy.components.cost.served import served_candidate_name, served_cost
from vxdeploy.components.package.serve_sweep import SweepPoint


def _point(batching: str, clients: int, rps: float, p95: float, errors: int = 0) -> SweepPoint:
    return SweepPoint(
        batching=batching,
        concurrency=clients,
        requests=100,
        measured=100,
        errors=errors,
        throughput_rps=rps,
        p50_ms=p95 / 2,
        p95_ms=p95,
        p99_ms=p95 * 1.5,
        executions=100,
        avg_batch=1.0,
        queue_ms=0.0,
        compute_ms=1.0,
        statistics_requests=100,
    )


def test_replicas_carry_the_target_rate_at_the_fastest_served_point_within_the_p95_target() -> None:
    points = [
        _point("off", 1, 1000, 1.0),
        _point("off", 64, 1500, 90.0),  # faster, but misses the 20 ms p95 target
        _point("on", 16, 2000, 10.0),
        _point("on", 64, 3000, 80.0),  # misses it too
        _point("on", 4, 9000, 1.0, errors=3),  # failed requests: never a capacity figure
    ]
    cfg = ServiceLevelConfig(p95_latency_ms=20, requests_per_second=10_000)
    deployment = DeploymentConfig(
        accelerator_type="", accelerator_count=0, machine_type="n1-standard-4", max_replicas=20
    )

    report = served_cost(
        points, kind="onnxruntime_fp32", measured_on="cpu:test (2 cores)", cfg=cfg, deployment=deployment
    )

    assert report is not None
    on = report.row(served_candidate_name("onnxruntime_fp32", "on"))
    off = report.row(served_candidate_name("onnxruntime_fp32", "off"))
    assert (on.batch_size, on.throughput_rps, on.replicas) == (16, 2000, 5)
    assert (off.batch_size, off.throughput_rps, off.replicas) == (1, 1000, 10)
    assert report.cheapest == on.name
    assert report.notes[0].startswith("Served figures: measured through Triton")
    assert not any(n.startswith("Latencies are of one inference call") for n in report.notes)


def test_no_cost_table_without_a_measured_point() -> None:
    points = [_point("on", 4, 100, 1.0, errors=1)]

    assert (
        served_cost(
            points,
            kind="onnxruntime_fp32",
            measured_on="cpu:test (2 cores)",
            cfg=ServiceLevelConfig(),
            deployment=DeploymentConfig(),
        )
        is None
    )
