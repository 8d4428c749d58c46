"""A generation model (builtin digits-vlm) through deploy, canary and monitoring against the fakes.

The deployed models stream real captions: the Vertex AI fake answers the invoke route's
``generate_stream`` from an ONNX Runtime generation of the digits-vlm parts
(:class:`tests.fakes.generation.CaptionServer`); Cloud Monitoring is the gRPC fake fed by simulated
traffic, the generation metrics included. A canary that answers without errors but generates other
captions is rolled back, traffic back on the model that served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.fakes.dashboards import FakeDashboards
from tests.fakes.generation import CaptionServer, generation_profile
from tests.fakes.monitoring import FakeMonitoring
from tests.fakes.rollout import (
    ARTIFACT_URI,
    PROJECT,
    RolloutHarness,
    StandInArtifact,
    make_packaged_repository,
)
from tests.fakes.traffic import TrafficSimulator, monitoring_sink
from tests.fakes.vertex import FakeVertex
from vxdeploy.components.cloud.labels import MANAGED_BY_KEY
from vxdeploy.components.common import builtin, builtin_vlm
from vxdeploy.components.common.artifacts import VertexModel
from vxdeploy.components.common.errors import CanaryRolledBackError, UserError
from vxdeploy.components.generation.spec import GenerationSpec
from vxdeploy.components.monitoring import generation_metrics as gm
from vxdeploy.components.monitoring import stage as monitoring_stage

SPEC = builtin_vlm.generation_spec()
GENERATOR = "generator"


@pytest.fixture(scope="module")
def onnx_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits-vlm parts' ONNX files (trained once, cached by builtin_vlm)."""
    pt2 = builtin_vlm.write_digits_vlm(tmp_path_factory.mktemp("digits-vlm"))
    return {part: path.with_suffix(".onnx") for part, path in pt2.items()}


@pytest.fixture(scope="module")
def eval_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out digits saved under the vision encoder's input name, with their labels."""
    return builtin.write_builtin(
        "builtin://digits-eval", tmp_path_factory.mktemp("eval"), input_name="images"
    )


@pytest.fixture()
def monitoring() -> Iterator[FakeMonitoring]:
    with FakeMonitoring() as fake:
        yield fake


@pytest.fixture()
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex(project=PROJECT) as fake:
        yield fake


def generation_harness(
    vertex: FakeVertex, monitoring: FakeMonitoring, root: Path, eval_npz: Path, **canary: Any
) -> RolloutHarness:
    """The rollout harness with a packaged generator repository and digits eval images."""
    harness = RolloutHarness(
        vertex,
        root,
        canary={
            "monitoring_endpoint": monitoring.address,
            "interval_s": 60,
            "agreement_samples": 6,
            "smoke_requests": 6,
            **canary,
        },
    )
    repo = make_packaged_repository(root / "generator_repository", GENERATOR)
    harness.repository = StandInArtifact(
        str(repo), ARTIFACT_URI, {"model_name": GENERATOR, "generation": SPEC.to_dict()}
    )
    harness.eval_data = StandInArtifact(str(eval_npz))
    return harness


def seed_baseline(vertex: FakeVertex) -> str:
    _, baseline = vertex.seed_serving_endpoint(
        "vxdeploy-endpoint", labels={MANAGED_BY_KEY: "vxdeploy"}, endpoint_id="vxdeploy-endpoint"
    )
    return baseline


def traffic(vertex: FakeVertex, monitoring: FakeMonitoring) -> TrafficSimulator:
    return TrafficSimulator(vertex, monitoring_sink(monitoring.address, PROJECT), requests_per_tick=400)


def test_deploy_serves_the_generator_through_generate_stream_on_the_invoke_route(
    vertex: FakeVertex, monitoring: FakeMonitoring, tmp_path: Path, eval_npz: Path
) -> None:
    # Given a generation repository (its metadata carries the GenerationSpec)
    seed_baseline(vertex)
    harness = generation_harness(vertex, monitoring, tmp_path, eval_npz)

    # When it is deployed
    deployed = harness.deploy("run-1")

    # Then the uploaded container serves every route (invoke), the recorded route is the generator's
    # generate_stream, and both artifacts carry the spec for the canary and monitoring
    model = VertexModel.read(deployed.vertex_model)
    upload = vertex.calls_of("UploadModel")[-1].body["model"]["containerSpec"]
    assert (
        upload.get("invokeRoutePrefix"),
        "--allow-vertex-ai=false" in upload["args"],
        model.predictRoute,
        model.invokeRoute,
        GenerationSpec.from_dict(model.generation or {}) == SPEC,
        bool(deployed.vertex_endpoint.metadata.get("generation")),
    ) == ("/*", True, f"/v2/models/{GENERATOR}/generate_stream", True, True, True)


def test_generation_model_on_a_non_dedicated_endpoint_is_refused_with_the_fix(
    vertex: FakeVertex, monitoring: FakeMonitoring, tmp_path: Path, eval_npz: Path
) -> None:
    # Given an existing shared (non-dedicated) endpoint, and no smoke test asked for
    vertex.seed_serving_endpoint(
        "vxdeploy-endpoint",
        labels={MANAGED_BY_KEY: "vxdeploy"},
        endpoint_id="vxdeploy-endpoint",
        dedicated=False,
    )
    harness = generation_harness(vertex, monitoring, tmp_path, eval_npz)
    harness.deployment["smoke_test_route"] = "none"

    # When the generation repository is deployed / Then it is refused: only the invoke route streams
    with pytest.raises(UserError) as err:
        harness.deploy("run-1")
    assert ("not a dedicated endpoint" in str(err.value), vertex.calls_of("DeployModel")) == (True, [])


def test_generation_canary_that_generates_the_same_captions_is_promoted(
    vertex: FakeVertex,
    monitoring: FakeMonitoring,
    tmp_path: Path,
    eval_npz: Path,
    onnx_parts: dict[str, Path],
) -> None:
    # Given a baseline and a canary that both stream the digits-vlm captions
    baseline = seed_baseline(vertex)
    harness = generation_harness(vertex, monitoring, tmp_path, eval_npz)
    deployed = harness.deploy("run-1")
    server = CaptionServer(onnx_parts, SPEC)
    vertex.serving_profile = lambda dm: generation_profile(server)
    sim = traffic(vertex, monitoring)

    # When the canary runs, each step held for one tick of simulated traffic
    run = harness.run_canary("run-1", deployed, metrics=None, sleep=lambda _s: sim.tick())

    # Then it is promoted: its smoke captions matched the baseline's, and every window it passed
    # compared captions and read TTFT from the serving side's generation metrics
    details = run.report["details"]
    passed = [a for a in details["analyses"] if a["verdict"] == "pass"]
    canary_figures = [a["canary"] for a in passed]
    assert (
        run.error,
        details["decision"],
        details["final_split"],
        details["smoke_test"]["agreement"],
        details["smoke_test"]["reference_source"],
        {a["percent"] for a in passed},
        {c["output_agreement"] for c in canary_figures},
        {c["generation_source"] for c in canary_figures},
        all(c["ttft_p95_ms"] < 100 for c in canary_figures),
    ) == (
        None,
        "promoted",
        {deployed.deployed_model_id: 100},
        1.0,
        f"serving deployed model {baseline}",
        {10, 25, 50, 100},
        {1.0},
        {"serving side's generation metrics"},
        True,
    )


def test_generation_canary_that_answers_with_wrong_captions_is_rolled_back_by_its_smoke_test(
    vertex: FakeVertex,
    monitoring: FakeMonitoring,
    tmp_path: Path,
    eval_npz: Path,
    onnx_parts: dict[str, Path],
) -> None:
    # Given a canary that answers every request (no errors) but captions each digit as the next one
    baseline = seed_baseline(vertex)
    harness = generation_harness(vertex, monitoring, tmp_path, eval_npz)
    deployed = harness.deploy("run-1")
    good, wrong = CaptionServer(onnx_parts, SPEC), CaptionServer(onnx_parts, SPEC, wrong_captions=True)
    canary_id = deployed.deployed_model_id
    vertex.serving_profile = lambda dm: generation_profile(wrong if dm.id == canary_id else good)
    sim = traffic(vertex, monitoring)

    # When the canary runs
    run = harness.run_canary("run-1", deployed, metrics=None, sleep=lambda _s: sim.tick())

    # Then its smoke test fails on the captions, before it takes traffic: rolled back, the baseline
    # serves everything and the canary is gone
    details = run.report["details"]
    endpoint = vertex.endpoint("vxdeploy-endpoint")
    assert (
        isinstance(run.error, CanaryRolledBackError),
        details["decision"],
        details["smoke_test"]["succeeded"] == details["smoke_test"]["requests"] > 0,
        details["smoke_test"]["agreement"] < 0.5,
        "captions agree with serving deployed model" in details["reason"],
        dict(endpoint.traffic_split),
        [d.id for d in endpoint.deployed_models],
        wrong.requests > 0,
    ) == (True, "rolled_back", True, True, True, {baseline: 100}, [baseline], True)


def test_generation_canary_whose_captions_go_wrong_under_traffic_is_rolled_back_by_the_analysis(
    vertex: FakeVertex,
    monitoring: FakeMonitoring,
    tmp_path: Path,
    eval_npz: Path,
    onnx_parts: dict[str, Path],
) -> None:
    # Given a canary that passes its smoke test, then generates wrong captions once it takes traffic
    baseline = seed_baseline(vertex)
    harness = generation_harness(vertex, monitoring, tmp_path, eval_npz, failure_limit=0)
    deployed = harness.deploy("run-1")
    good, turning = CaptionServer(onnx_parts, SPEC), CaptionServer(onnx_parts, SPEC)
    canary_id = deployed.deployed_model_id
    vertex.serving_profile = lambda dm: generation_profile(turning if dm.id == canary_id else good)
    sim = traffic(vertex, monitoring)

    def hold(_s: float) -> None:
        turning.wrong_captions = True
        sim.tick()

    # When the canary runs
    run = harness.run_canary("run-1", deployed, metrics=None, sleep=hold)

    # Then the first analysis fails on caption agreement (errors and latency are fine) and the
    # rollout is rolled back: traffic back on the model that served
    details = run.report["details"]
    failed = [c for a in details["analyses"] for c in a["checks"] if not c["passed"]]
    endpoint = vertex.endpoint("vxdeploy-endpoint")
    assert (
        details["decision"],
        details["smoke_test"]["agreement"],
        {c["name"] for c in failed},
        dict(endpoint.traffic_split),
        [d.id for d in endpoint.deployed_models],
    ) == ("rolled_back", 1.0, {"output_agreement"}, {baseline: 100}, [baseline])


def test_monitoring_of_a_generation_endpoint_alerts_on_ttft_and_tokens_per_second(
    monitoring: FakeMonitoring, tmp_path: Path
) -> None:
    # Given the deploy step's endpoint artifact of a generation model
    endpoint_name = f"projects/{PROJECT}/locations/us-central1/endpoints/4242"
    endpoint = SimpleNamespace(
        metadata={
            "resourceName": endpoint_name,
            "endpointId": "4242",
            "displayName": "digits-vlm",
            "deployedModelId": "777",
            "generation": SPEC.to_dict(),
        }
    )
    report = SimpleNamespace(path=str(tmp_path / "report.json"))
    with FakeDashboards() as dashboards:
        settings = {
            "monitoring_endpoint": monitoring.address,
            "dashboards_endpoint": dashboards.address,
            "ttft_ms": 300,
            "min_tokens_per_s": 25,
        }

        # When the monitoring stage runs
        monitoring_stage.run(endpoint, {"project": PROJECT}, settings, report)
        charts = [
            ds.time_series_query.time_series_filter.filter
            for tile in dashboards.dashboards()[0].mosaic_layout.tiles
            for ds in tile.widget.xy_chart.data_sets
        ]

    # Then TTFT and decode-speed policies watch the generation metrics per deployed model, beside the
    # usual ones, and the dashboard charts them
    policies = {p.user_labels["vxdeploy_alert"]: p for p in monitoring.alert_policies(PROJECT)}
    ttft = policies["time-to-first-token"].conditions[0].condition_threshold
    tokens = policies["tokens-per-second"].conditions[0].condition_threshold
    assert (
        sorted(policies),
        gm.TIME_TO_FIRST_TOKEN in ttft.filter,
        'metric.labels.endpoint_id = "4242"' in ttft.filter,
        ttft.threshold_value,
        ttft.comparison.name,
        list(ttft.aggregations[0].group_by_fields),
        gm.TOKENS_PER_SECOND in tokens.filter,
        tokens.threshold_value,
        tokens.comparison.name,
        any(gm.TIME_TO_FIRST_TOKEN in f for f in charts),
        any(gm.TOKENS_PER_SECOND in f for f in charts),
        json.loads(Path(report.path).read_text())["details"]["thresholds"]["ttft_p95_ms"],
    ) == (
        ["error-rate", "p99-latency", "saturation", "time-to-first-token", "tokens-per-second"],
        True,
        True,
        300.0,
        "COMPARISON_GT",
        ["metric.label.deployed_model_id"],
        True,
        25.0,
        "COMPARISON_LT",
        True,
        True,
        300,
    )
