"""Deploy, canary and the exit handler as real KFP tasks (kfp.local) against the running fakes.

The fakes are those ``python -m tests.fakes.serve_fakes`` starts: Vertex AI (REST), Cloud Storage,
Cloud Monitoring (gRPC) fed by traffic that follows the endpoint's split.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's real types.
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kfp import dsl, local

from tests.fakes.rollout import make_packaged_repository, write_eval_data
from tests.fakes.serve_fakes import ENDPOINT, RunningFakes, serving_fakes
from vxdeploy.components.canary.component import rollback_on_failure, run_canary
from vxdeploy.components.common.config import parse_config
from vxdeploy.components.common.run_parameters import FLAT_PARAMETERS, to_pipeline_parameters
from vxdeploy.components.deploy.component import deploy_to_endpoint


@dsl.pipeline(name="vxdeploy-rollout-test")
def rollout(  # type: ignore[type-arg]
    repository: str,
    eval_data: str,
    deployment: dict,
    canary: dict,
    project: str,
    location: str,
    deploy: bool,
    endpoint: str,
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
    min_replicas: int,
    max_replicas: int,
    deployment_overrides: dict,
) -> None:
    run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    # The exit handler takes the pipeline's own parameters, as in the real pipeline.
    exit_task = rollback_on_failure(
        project=project,
        location=location,
        deploy=deploy,
        endpoint=endpoint,
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        deployment=deployment_overrides,
        run_id=run_id,
    )
    with dsl.ExitHandler(exit_task):
        repo = dsl.importer(artifact_uri=repository, artifact_class=dsl.Model, reimport=True)
        samples = dsl.importer(artifact_uri=eval_data, artifact_class=dsl.Dataset, reimport=True)
        deployed = deploy_to_endpoint(
            triton_repository=repo.output,
            source_model=repo.output,  # not from the Model Registry: no source labels to carry
            model={"name": "model"},
            deployment=deployment,
            canary=canary,
            run_id=run_id,
        )
        run_canary(
            vertex_endpoint=deployed.outputs["vertex_endpoint"],
            vertex_model=deployed.outputs["vertex_model"],
            eval_data=samples.output,
            deployed_model_id=deployed.outputs["deployed_model_id"],
            deployment=deployment,
            canary=canary,
            run_id=run_id,
        )


def _run(fakes: RunningFakes, root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bool, dict[str, Any]]:
    # The tasks are subprocesses: they find the storage emulator the way a user's run does.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fakes.storage_address)
    repo = make_packaged_repository(root / "triton_repository")
    samples = write_eval_data(root / "eval.npz")
    deployment = {**fakes.config["deployment"], "api_endpoint": fakes.vertex_address}
    canary = {**fakes.config["canary"], "failure_limit": 0}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "pipeline_root"))
    succeeded = True
    try:
        params = to_pipeline_parameters(parse_config({"deployment": deployment}))
        flat = {p.name: params[p.name] for p in FLAT_PARAMETERS if p.section == "deployment"}
        rollout(
            repository=str(repo),
            eval_data=str(samples),
            deployment=deployment,
            canary=canary,
            deployment_overrides=params["deployment"],
            **flat,
        )
    except RuntimeError:
        succeeded = False
    reports = {p.parent.name: json.loads(p.read_text()) for p in (root / "pipeline_root").rglob("report")}
    return succeeded, reports


@pytest.fixture()
def healthy() -> Iterator[RunningFakes]:
    with serving_fakes(interval_s=0.5, requests_per_s=400) as fakes:
        yield fakes


@pytest.fixture()
def failing() -> Iterator[RunningFakes]:
    with serving_fakes(interval_s=0.5, requests_per_s=400, canary_error_rate=0.3) as fakes:
        yield fakes


def test_healthy_rollout_as_kfp_tasks_is_promoted(
    healthy: RunningFakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an endpoint serving a baseline, and a new version that answers as well
    # When the deploy and canary tasks run under kfp.local
    succeeded, reports = _run(healthy, tmp_path, monkeypatch)

    # Then the run succeeded, the new deployed model takes all traffic and the exit handler did nothing
    deployed = reports["deploy-to-endpoint"]["summary"]["deployed_model_id"]
    assert (
        succeeded,
        reports["run-canary"]["summary"]["decision"],
        dict(healthy.vertex.endpoint(ENDPOINT).traffic_split),
        reports["rollback-on-failure"]["summary"]["action"],
    ) == (True, "promoted", {deployed: 100}, "none")


def test_failing_rollout_as_kfp_tasks_is_rolled_back(
    failing: RunningFakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a new version answering 30% errors
    # When the deploy and canary tasks run under kfp.local
    succeeded, reports = _run(failing, tmp_path, monkeypatch)

    # Then the run failed at the canary, and the baseline serves all traffic again, alone
    endpoint = failing.vertex.endpoint(ENDPOINT)
    assert (
        succeeded,
        reports["run-canary"]["summary"]["decision"],
        dict(endpoint.traffic_split),
        [dm.id for dm in endpoint.deployed_models],
    ) == (False, "rolled_back", {failing.baseline_deployed_model: 100}, [failing.baseline_deployed_model])
