"""The served generator's Cloud Monitoring export, against the project's gRPC Cloud Monitoring fake.

The exporter (what the generator runs on Vertex AI) is called directly: it writes through the real
``MetricServiceClient`` over gRPC to :class:`tests.fakes.monitoring.FakeMonitoring`, and the canary's
reader gets the same figures back. Faults are injected at the fake, never patched into the SDK.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.api import metric_pb2

from tests.fakes.monitoring import FakeMonitoring
from vxdeploy.components.canary.metrics import CloudMonitoringMetricsSource
from vxdeploy.components.monitoring import generation_export as ge
from vxdeploy.components.monitoring import generation_metrics as gm

PROJECT = "vx-project"


@pytest.fixture
def fake() -> Iterator[FakeMonitoring]:
    with FakeMonitoring() as server:
        yield server


def vertex_env(fake: FakeMonitoring, **extra: str) -> dict[str, str]:
    """What a Vertex AI serving container's environment holds (AIP_*) plus the package stage's entries."""
    env = {
        "AIP_MODE": "PREDICTION",
        "AIP_ENDPOINT_ID": "4242",
        "AIP_DEPLOYED_MODEL_ID": "777",
        "AIP_PROJECT_NUMBER": "123456789",
        "HOSTNAME": "replica-a",
        ge.API_ENDPOINT_ENV: fake.address,
    }
    for entry in ge.container_env(PROJECT, "us-central1"):
        env[entry["name"]] = entry["value"]
    return env | extra


def test_the_target_comes_from_vertex_ais_variables_and_the_package_stages_env(fake: FakeMonitoring) -> None:
    target, why = ge.export_target(vertex_env(fake))
    assert why == "" and target is not None
    assert target.endpoint.resource_name == f"projects/{PROJECT}/locations/us-central1/endpoints/4242"
    assert (target.deployed_model_id, target.replica, target.interval_s) == ("777", "replica-a", 60.0)

    # Without the project id the package stage writes, Vertex AI's project number is used.
    no_project = {k: v for k, v in vertex_env(fake).items() if k != ge.PROJECT_ENV}
    assert ge.export_target(no_project)[0].endpoint.project == "123456789"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("drop", "extra", "why"),
    [
        (ge.EXPORT_ENV, {}, "VXDEPLOY_GENERATION_METRICS is not 'cloud_monitoring'"),
        ("AIP_MODE", {}, "not serving on Vertex AI"),
        ("AIP_DEPLOYED_MODEL_ID", {}, "AIP_DEPLOYED_MODEL_ID not set"),
        (ge.LOCATION_ENV, {}, "VXDEPLOY_GENERATION_METRICS_LOCATION not set"),
        ("", {ge.INTERVAL_ENV: "soon"}, "'soon' is not a number of seconds"),
        ("", {ge.INTERVAL_ENV: "0"}, "needs a positive interval"),
    ],
)
def test_the_export_stays_off_off_vertex_or_when_a_fact_is_missing(
    fake: FakeMonitoring, drop: str, extra: dict[str, str], why: str
) -> None:
    env = {k: v for k, v in vertex_env(fake, **extra).items() if k != drop}
    target, reason = ge.export_target(env)
    assert target is None and why in reason
    assert ge.start_exporter(env) == (None, reason)


def test_one_interval_is_written_as_distributions_the_canary_reads_back(fake: FakeMonitoring) -> None:
    target, _ = ge.export_target(vertex_env(fake))
    assert target is not None
    exporter = ge.GenerationMetricsExporter(target)
    for ttft, rate, total in [(40.0, 200.0, 60.0), (55.0, 180.0, 80.0), (70.0, None, 70.0)]:
        exporter.record(ttft, rate, total)
    exporter.record(float("nan"), None, -1.0)  # not a measurement: ignored
    assert exporter.pending() == 3

    assert exporter.export_once() == 3
    assert (exporter.written, exporter.errors, exporter.pending()) == (3, 0, 0)
    series = {s.metric.type: s for s in fake.time_series(PROJECT)}
    assert sorted(series) == sorted(gm.METRIC_TYPES)
    ttft = series[gm.TIME_TO_FIRST_TOKEN]
    assert dict(ttft.metric.labels) == {"endpoint_id": "4242", "deployed_model_id": "777"}
    assert ttft.resource.type == "generic_task"
    assert dict(ttft.resource.labels) == {
        "project_id": PROJECT,
        "location": "us-central1",
        "namespace": "4242",
        "job": "777",
        "task_id": "replica-a",
    }
    # CUMULATIVE: what Cloud Monitoring accepts for user-defined metrics (not DELTA).
    assert ttft.metric_kind == metric_pb2.MetricDescriptor.CUMULATIVE
    assert ttft.points[0].value.distribution_value.count == 3
    assert series[gm.TOKENS_PER_SECOND].points[0].value.distribution_value.count == 2
    assert series[gm.GENERATION_LATENCIES].points[0].value.distribution_value.mean == pytest.approx(70.0)

    # The canary's reader of the generation metrics finds the replica's figures.
    now = datetime.now(UTC)
    source = CloudMonitoringMetricsSource(PROJECT, api_endpoint=fake.address)
    p95_ttft, median_rate = source.generation_stats("4242", "777", now - timedelta(minutes=5), now)
    assert p95_ttft is not None and 40.0 <= p95_ttft <= 100.0
    assert median_rate is not None and 150.0 <= median_rate <= 250.0


def test_intervals_follow_each_other_and_an_idle_interval_writes_nothing(fake: FakeMonitoring) -> None:
    target, _ = ge.export_target(vertex_env(fake))
    assert target is not None
    exporter = ge.GenerationMetricsExporter(target)
    exporter.record(40.0, 100.0, 60.0)
    exporter.export_once()
    assert exporter.export_once() == 0  # nothing new
    exporter.record(41.0, 101.0, 61.0)
    exporter.export_once()

    (ttft,) = [s for s in fake.time_series(PROJECT) if s.metric.type == gm.TIME_TO_FIRST_TOKEN]
    newer, older = ttft.points  # newest first
    assert older.interval.start_time < older.interval.end_time < newer.interval.start_time
    # At least 1 ms apart (the fake keeps times as float seconds: allow its sub-microsecond rounding).
    assert newer.interval.start_time - older.interval.end_time >= timedelta(microseconds=999)
    assert len(fake.calls_of("CreateTimeSeries")) == 2


def test_a_failed_write_is_counted_and_its_samples_go_out_with_the_next(fake: FakeMonitoring) -> None:
    target, _ = ge.export_target(vertex_env(fake))
    assert target is not None
    exporter = ge.GenerationMetricsExporter(target)
    exporter.record(40.0, 100.0, 60.0)
    fake.fail_next("CreateTimeSeries", grpc.StatusCode.UNAVAILABLE)

    assert exporter.export_once() == 0
    assert exporter.errors == 1 and "ServiceUnavailable" in exporter.last_error
    assert exporter.pending() == 1 and fake.time_series(PROJECT) == []

    exporter.record(50.0, 110.0, 70.0)
    assert exporter.export_once() == 3
    counts = [s.points[0].value.distribution_value.count for s in fake.time_series(PROJECT)]
    assert counts == [2, 2, 2] and exporter.errors == 1


def test_an_unreachable_service_never_makes_record_wait(fake: FakeMonitoring) -> None:
    """Writes go out on the exporter's thread; ``record`` only takes a lock, whatever the service does."""
    from vxdeploy.components.package.tritonserver import free_port

    target, _ = ge.export_target(vertex_env(fake, **{ge.API_ENDPOINT_ENV: f"127.0.0.1:{free_port()}"}))
    assert target is not None
    exporter = ge.GenerationMetricsExporter(target, timeout_s=1.0, max_samples=5)
    exporter.record(40.0, 100.0, 60.0)
    began = time.perf_counter()
    assert exporter.export_once() == 0 and exporter.errors == 1
    assert time.perf_counter() - began < 5.0  # the call's deadline, not a hang

    began = time.perf_counter()
    for i in range(10):
        exporter.record(float(i), 1.0, float(i))
    assert time.perf_counter() - began < 0.05
    assert exporter.pending() == 5 and exporter.dropped == 3 * 6  # bounded: oldest dropped per metric


def test_the_thread_writes_every_interval_and_flushes_on_stop(fake: FakeMonitoring) -> None:
    target, _ = ge.export_target(vertex_env(fake, **{ge.INTERVAL_ENV: "0.2"}))
    assert target is not None
    exporter, _ = ge.start_exporter(vertex_env(fake, **{ge.INTERVAL_ENV: "0.2"}))
    assert exporter is not None
    exporter.record(40.0, 100.0, 60.0)
    deadline = time.monotonic() + 10
    while not fake.calls_of("CreateTimeSeries") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.calls_of("CreateTimeSeries"), "the thread did not write within 10 s"
    exporter.record(41.0, 101.0, 61.0)
    exporter.stop()
    assert exporter.pending() == 0 and exporter.written >= 6 and exporter.errors == 0


def test_the_exporter_imports_and_counts_errors_without_google_cloud_monitoring(fake: FakeMonitoring) -> None:
    """A serving image without ``google-cloud-monitoring`` still loads the generator's exporter."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "google.cloud.monitoring_v3" or name.startswith("google.cloud.monitoring_v3."):
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
from vxdeploy.components.monitoring import generation_export as ge
target, why = ge.export_target({vertex_env(fake)!r})
exporter = ge.GenerationMetricsExporter(target)
exporter.record(40.0, 100.0, 60.0)
assert exporter.export_once() == 0, "wrote without the client library?"
print(exporter.errors, exporter.last_error)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    errors, message = done.stdout.strip().split(" ", 1)
    assert errors == "1" and "ImportError" in message and "monitoring_v3" in message
