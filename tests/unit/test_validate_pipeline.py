"""The pipeline's first task validates the whole run: a bad section fails there, before any heavy task."""

from __future__ import annotations

from pathlib import Path

import pytest

from vxdeploy.components.common.config import (
    SECTIONS,
    CanaryConfig,
    CompilationConfig,
    DataConfig,
    DeploymentConfig,
    ExportConfig,
    ModelConfig,
    MonitoringConfig,
    QuantizationConfig,
    RunConfig,
    SelectionConfig,
    ServiceLevelConfig,
    TritonConfig,
)
from vxdeploy.pipelines.local_run import run_local

BAD_SECTIONS = [
    ("model", ModelConfig.model_construct(name="../x"), "model.name"),
    ("data", DataConfig.model_construct(labels_key=""), "data.labels_key"),
    ("export", ExportConfig.model_construct(opset=5), "export.opset"),
    ("quantization", QuantizationConfig.model_construct(percentile=50.0), "quantization.percentile"),
    ("compilation", CompilationConfig.model_construct(workspace_gib=-1.0), "compilation.workspace_gib"),
    ("selection", SelectionConfig.model_construct(batch_sizes=[0]), "selection.batch_sizes"),
    ("triton", TritonConfig.model_construct(max_batch_size=10**11), "triton.max_batch_size"),
    ("deployment", DeploymentConfig.model_construct(location="mars-central9"), "deployment.location"),
    ("canary", CanaryConfig.model_construct(interval_s=-5.0), "canary.interval_s"),
    (
        "monitoring",
        MonitoringConfig.model_construct(notification_emails=["oncall-at-example"]),
        "monitoring.notification_emails",
    ),
    (
        "service_levels",
        ServiceLevelConfig.model_construct(requests_per_second=-1.0),
        "service_levels.requests_per_second",
    ),
]


@pytest.mark.parametrize(("section", "bad", "fragment"), BAD_SECTIONS, ids=[b[0] for b in BAD_SECTIONS])
def test_a_bad_section_fails_the_first_task_in_seconds(
    section: str, bad: object, fragment: str, tmp_path: Path
) -> None:
    # given pipeline parameters as a console user could type them: one section is wrong
    config = RunConfig()
    config.__dict__[section] = bad  # bypass validation, as the console's JSON parameters do

    # when the pipeline runs (the CLI's own check skipped, as a console run has none)
    result = run_local(config, tmp_path / "run", skip_preflight=True)

    # then the first task failed naming the field, and nothing after it ran
    stages = {s["stage"]: s for s in result.report["stages"]}
    assert stages["validate"]["status"] == "failed"
    assert fragment in stages["validate"]["reason"]
    assert [s for s, rep in stages.items() if rep["status"] not in ("not run",)] == ["validate", "rollback"]
    assert result.report["wall_s"] < 60


def test_every_section_has_a_bad_value_in_the_table() -> None:
    assert sorted(b[0] for b in BAD_SECTIONS) == sorted(SECTIONS)


def test_on_vertex_ai_the_first_task_also_checks_the_task_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    from dataclasses import dataclass

    from tests.fakes.registry import FakeRegistry
    from vxdeploy.components.common import images
    from vxdeploy.components.validate import stage
    from vxdeploy.components.validate.checks import RunValidationError

    @dataclass
    class GcsArtifact:  # what a Vertex AI task's output artifact looks like: gs:// URI, /gcs/ path
        uri: str
        path: str

    with FakeRegistry() as registry:
        # given a registry holding only the optimizer image, and a task whose artifacts live in GCS
        monkeypatch.setenv("VXDEPLOY_REGISTRY", registry.prefix())
        registry.push(images.image("optimizer"))
        report = GcsArtifact("gs://bucket/root/run/validate-run-inputs/report", str(tmp_path / "report"))

        # when the first task runs with the default parameters
        with pytest.raises(RunValidationError) as err:
            stage.run(RunConfig().to_pipeline_parameters(), "run-1", report)

    # then it names the two missing task images, and its report says so
    assert images.image("runner") in str(err.value) and images.image("serving") in str(err.value)
    written = json.loads(Path(report.path).read_text())
    assert written["status"] == "failed"
    assert {c["name"]: c["status"] for c in written["details"]["checks"]}["optimizer task image"] == "passed"
