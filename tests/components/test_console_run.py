"""A console run: only the model URI, the two data URIs and deploy=false set, on a model users bring."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.zoo import models
from vxdeploy.pipelines.report import find_run_root, load_stage_reports

pytestmark = pytest.mark.slow

OPTIMIZATION = ("validate", "intake", "export", "calibrate", "compile", "select", "package", "serve_check")


def test_a_run_with_only_the_model_and_data_uris_optimizes_that_model(tmp_path: Path) -> None:
    from kfp import local

    from vxdeploy.pipelines.local_run import _enable_task_output_conditions
    from vxdeploy.pipelines.optimize_and_deploy import optimize_and_deploy

    # given a two-head model of the zoo (not the embedded digits model) and its data on disk
    zoo = models.two_head(tmp_path)
    root = tmp_path / "pipeline_root"
    _enable_task_output_conditions()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)

    # when the pipeline runs with the console's defaults for everything else. The local differences:
    # kfp.local gives no GPU, so the build tasks build on this CPU; and it cannot resolve Vertex AI's
    # run placeholders (project, location: it fails on them), which Vertex fills in with the run's own
    optimize_and_deploy(
        model_uri=str(zoo.model_path),
        calibration_data_uri=str(zoo.calibration_path),
        eval_data_uri=str(zoo.eval_path),
        deploy=False,
        build_on_accelerator=False,
        project="",
        location="",
    )

    # then every optimization stage ran on that model, and nothing was deployed
    run_root = find_run_root(root)
    assert run_root is not None
    reports = load_stage_reports(run_root)
    assert {s: reports[s]["status"] for s in OPTIMIZATION} == dict.fromkeys(OPTIMIZATION, "succeeded")
    assert reports["intake"]["summary"]["model_uri"] == str(zoo.model_path)
    assert [t["name"] for t in reports["intake"]["details"]["signature"]["inputs"]] == ["features", "context"]
    assert "deploy" not in reports
