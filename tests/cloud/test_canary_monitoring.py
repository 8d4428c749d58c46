"""Canary analysis read from Cloud Monitoring over gRPC (the monitoring fake), fed by simulated traffic."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fakes.monitoring import FakeMonitoring
from tests.fakes.rollout import PROJECT, RolloutHarness
from tests.fakes.traffic import TrafficSimulator, monitoring_sink
from tests.fakes.vertex import FakeVertex, ServingProfile
from vxdeploy.components.canary.metrics import (
    ERROR_COUNT,
    PREDICTION_LATENCIES,
    RESPONSE_COUNT,
    CloudMonitoringMetricsSource,
)
from vxdeploy.components.cloud.labels import MANAGED_BY_KEY

ENDPOINT = {"endpoint_id": "42", "location": "us-central1", "resource_container": PROJECT}


@pytest.fixture()
def monitoring() -> Iterator[FakeMonitoring]:
    with FakeMonitoring() as fake:
        yield fake


@pytest.fixture()
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex(project=PROJECT) as fake:
        yield fake


def _add(monitoring: FakeMonitoring, dm: str, t: float, ok: int, errors: int, latencies: list[float]) -> None:
    monitoring.add_time_series(
        PROJECT,
        RESPONSE_COUNT,
        ENDPOINT,
        {"deployed_model_id": dm, "response_code": "200"},
        [(t, ok)],
        "INT64",
    )
    monitoring.add_time_series(
        PROJECT, ERROR_COUNT, ENDPOINT, {"deployed_model_id": dm}, [(t, errors)], "INT64"
    )
    monitoring.add_time_series(
        PROJECT,
        PREDICTION_LATENCIES,
        ENDPOINT,
        {"deployed_model_id": dm, "latency_type": "total"},
        [(t, latencies)],
        "DISTRIBUTION",
    )


def test_window_stats_of_one_deployed_model_come_from_list_time_series(monitoring: FakeMonitoring) -> None:
    # Given two points for the canary (one outside the window) and one for the baseline
    now = time.time()
    _add(monitoring, "canary", now - 30, ok=90, errors=10, latencies=[float(v) for v in range(1, 101)])
    _add(monitoring, "canary", now - 600, ok=5000, errors=0, latencies=[1.0])
    _add(monitoring, "baseline", now - 30, ok=900, errors=0, latencies=[5.0] * 900)
    source = CloudMonitoringMetricsSource(PROJECT, api_endpoint=monitoring.address)

    # When the canary's last two minutes are read
    stats = source.window_stats(
        "42", "canary", datetime.fromtimestamp(now - 120, UTC), datetime.fromtimestamp(now, UTC)
    )

    # Then only its in-window point counts (errors from error_count; p99 within a 25% bucket of 99 ms)
    assert (stats.requests, stats.errors, 99 / 1.25 <= (stats.p99_latency_ms or 0) <= 99 * 1.25) == (
        90,
        10,
        True,
    )


def test_a_window_without_points_is_no_data(monitoring: FakeMonitoring) -> None:
    # Given nothing stored / When a window is read / Then it holds no requests and no latency
    source = CloudMonitoringMetricsSource(PROJECT, api_endpoint=monitoring.address)
    now = datetime.now(UTC)
    stats = source.window_stats("42", "canary", now.replace(year=now.year - 1), now)
    assert (stats.requests, stats.p99_latency_ms) == (0, None)


def _rollout(
    vertex: FakeVertex, monitoring: FakeMonitoring, tmp_path: Path, canary_error_rate: float
) -> tuple[str, str, dict[str, object]]:
    _, baseline = vertex.seed_serving_endpoint(
        "vxdeploy-endpoint", labels={MANAGED_BY_KEY: "vxdeploy"}, endpoint_id="vxdeploy-endpoint"
    )
    harness = RolloutHarness(
        vertex,
        tmp_path,
        canary={"monitoring_endpoint": monitoring.address, "failure_limit": 0, "interval_s": 60},
    )
    deployed = harness.deploy("run-1")
    vertex.serving_profile = lambda dm: ServingProfile(
        error_rate=canary_error_rate if dm.id == deployed.deployed_model_id else 0.0
    )
    traffic = TrafficSimulator(vertex, monitoring_sink(monitoring.address, PROJECT), requests_per_tick=400)
    # Each step's hold is one tick of simulated traffic through the split then in force.
    run = harness.run_canary("run-1", deployed, metrics=None, sleep=lambda _s: traffic.tick())
    return baseline, deployed.deployed_model_id, run.report


def test_healthy_canary_is_promoted_on_cloud_monitoring_figures(
    vertex: FakeVertex, monitoring: FakeMonitoring, tmp_path: Path
) -> None:
    # Given traffic where the canary answers like the baseline
    # When the canary runs, reading Cloud Monitoring over gRPC
    _, canary, report = _rollout(vertex, monitoring, tmp_path, canary_error_rate=0.0)

    # Then each step saw the canary's share of the traffic, and it was promoted
    steps = report["details"]["analyses"]  # type: ignore[index]
    assert (
        [s["canary"]["requests"] for s in steps],
        dict(vertex.endpoint("vxdeploy-endpoint").traffic_split),
    ) == ([40, 100, 200, 400], {canary: 100})


def test_canary_with_errors_is_rolled_back_on_cloud_monitoring_figures(
    vertex: FakeVertex, monitoring: FakeMonitoring, tmp_path: Path
) -> None:
    # Given traffic where the canary answers 30% errors
    # When the canary runs, reading Cloud Monitoring over gRPC
    baseline, _, report = _rollout(vertex, monitoring, tmp_path, canary_error_rate=0.3)

    # Then the first step's measured error rate rolled it back, and the baseline serves everything
    first = report["details"]["analyses"][0]  # type: ignore[index]
    assert (
        report["summary"]["decision"],  # type: ignore[index]
        first["canary"]["error_rate"] > 0.1,
        dict(vertex.endpoint("vxdeploy-endpoint").traffic_split),
    ) == ("rolled_back", True, {baseline: 100})
