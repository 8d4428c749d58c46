"""A scheduled run whose Model Registry version already serves ends after intake, as a no-op."""

from pathlib import Path

from tests.fakes.vertex_pipelines import FakeVertexPipelines, vertex_pipelines_fixture  # noqa: F401
from vxdeploy.components.common.config import load_config
from vxdeploy.components.common.registry import get_registry_model_version, source_model_labels
from vxdeploy.pipelines.local_run import run_local

MODEL = "projects/vx-project/locations/us-central1/models/digits"


def test_run_of_an_already_serving_version_ends_early_with_the_reason(
    vertex_pipelines: FakeVertexPipelines, tmp_path: Path
) -> None:
    # given version 3 of the registry model already serves all traffic of the run's endpoint
    vertex_pipelines.add_model_version("digits", "3", "gs://b/v3")
    source = get_registry_model_version(MODEL, api_endpoint=vertex_pipelines.endpoint)
    served = vertex_pipelines.add_model_version(
        "digits-triton", "4", "gs://b/triton/4", labels=source_model_labels(source)
    )
    vertex_pipelines.add_endpoint(
        "55", "vxdeploy-endpoint", [{"id": "901", "model": served, "model_version_id": "4", "traffic": 100}]
    )
    config = load_config(
        overrides={
            "model.uri": MODEL,
            "deployment.enabled": True,
            "deployment.project": "vx-project",
            "deployment.api_endpoint": vertex_pipelines.endpoint,
        }
    )

    # when the pipeline runs locally
    result = run_local(config, tmp_path, skip_preflight=True)

    # then intake is skipped with the reason, nothing else runs, and the run is not a failure
    stages = {s["stage"]: s for s in result.report["stages"]}
    assert result.succeeded, result.report["error"]
    assert stages["intake"]["status"] == "skipped"
    assert "already serves 100%" in stages["intake"]["reason"]
    assert stages["export"]["status"] == "not run"
    assert stages["deploy"]["status"] == "not run"
