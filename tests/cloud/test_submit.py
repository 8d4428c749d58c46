"""``submit_pipeline`` and ``vxdeploy submit`` against the loopback Vertex fake and the GCS emulator."""

from __future__ import annotations

import argparse
import functools
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.gcs import GcsEmulator, free_port, gcs_emulator
from tests.fakes.vertex_pipelines import (  # noqa: F401
    FakeVertexPipelines,
    compiled_template_fixture,
    vertex_pipelines_fixture,
)
from vxdeploy.components.common.config import RunConfig, load_config
from vxdeploy.components.common.errors import CloudOperationError, ConfigError, UserError
from vxdeploy.pipelines.submit import (
    add_submit_arguments,
    build_pipeline_job,
    check_pipeline_root,
    load_pipeline_spec,
    submit_pipeline,
)

PROJECT = "vx-project"
LOCATION = "us-central1"
ROOT = "gs://vx-bucket/runs"


@pytest.fixture(name="gcs")
def gcs_fixture() -> Iterator[GcsEmulator]:
    with gcs_emulator() as emulator:
        yield emulator


@pytest.fixture()
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and record) any name lookup or connection that is not to 127.0.0.1."""
    refused: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", None):
            refused.append(str(host))
            raise socket.gaierror(f"test allows loopback only, not {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1"):
            refused.append(str(address[0]))
            raise ConnectionRefusedError(f"test allows loopback only, not {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield refused


def _submit(fake: FakeVertexPipelines, template: Path, config: RunConfig | None = None, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "api_endpoint": fake.endpoint,
        "check_bucket": None,
        "report_progress": lambda _: None,
    }
    options.update(kwargs)
    return submit_pipeline(config or RunConfig(), PROJECT, LOCATION, ROOT, template, **options)


def _caching(job: dict[str, Any]) -> dict[str, bool]:
    tasks = {**job["pipelineSpec"]["root"]["dag"]["tasks"]}
    for component in job["pipelineSpec"]["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return {
        name: bool(task.get("cachingOptions", {}).get("enableCache", False)) for name, task in tasks.items()
    }


def test_submit_sends_the_config_as_the_pipelines_parameters(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a config with a non-default model, canary steps and export opset
    config = load_config(
        None, {"model.uri": "gs://models/resnet.pt2", "canary.steps": [50, 100], "export.opset": 18}
    )

    # when it is submitted
    run = _submit(vertex_pipelines, compiled_template, config)

    # then the flat parameters carry the model and the steps, the export override the opset
    values = vertex_pipelines.job_json(run.job_id)["runtimeConfig"]["parameterValues"]
    assert (values["model_uri"], values["canary_steps"], values["export"]) == (
        "gs://models/resnet.pt2",
        [50, 100],
        {"opset": 18},
    )


def test_submit_sets_the_pipeline_root(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given / when
    run = _submit(vertex_pipelines, compiled_template)

    # then
    assert vertex_pipelines.job_json(run.job_id)["runtimeConfig"]["gcsOutputDirectory"] == ROOT


def test_submit_returns_the_console_url_of_the_run(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given / when
    run = _submit(vertex_pipelines, compiled_template, job_id="vxdeploy-url-check")

    # then
    assert run.console_url == (
        "https://console.cloud.google.com/vertex-ai/locations/us-central1/pipelines/runs/"
        "vxdeploy-url-check?project=vx-project"
    )


def test_submit_maps_service_account_network_kms_key_and_labels(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given the run options a platform team sets
    options = {
        "service_account": "vxdeploy@vx-project.iam.gserviceaccount.com",
        "network": "projects/424242424242/global/networks/ml",
        "encryption_spec_key_name": "projects/vx-project/locations/us-central1/keyRings/r/cryptoKeys/k",
        "labels": {"team": "ml-platform"},
    }

    # when the run is submitted
    run = _submit(vertex_pipelines, compiled_template, **options)

    # then each lands in its PipelineJob field, beside vxdeploy's own labels
    job = vertex_pipelines.job_json(run.job_id)
    assert (job["serviceAccount"], job["network"], job["encryptionSpec"]["kmsKeyName"], job["labels"]) == (
        options["service_account"],
        options["network"],
        options["encryption_spec_key_name"],
        {
            "team": "ml-platform",
            "vxdeploy-model": "model",
            "vxdeploy-version": job["labels"]["vxdeploy-version"],
        },
    )


def test_no_cache_turns_caching_off_for_every_task(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given / when a run is submitted with caching off
    run = _submit(vertex_pipelines, compiled_template, enable_caching=False)

    # then no task may reuse a cached result
    assert not any(_caching(vertex_pipelines.job_json(run.job_id)).values())


def test_enabling_caching_never_caches_the_deploy_stage(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given / when a run is submitted with caching on
    run = _submit(vertex_pipelines, compiled_template, enable_caching=True)

    # then the rollout still runs on every submission
    assert _caching(vertex_pipelines.job_json(run.job_id))["deploy-to-endpoint"] is False


def test_empty_deployment_project_becomes_the_submit_project(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a config that names no deployment project
    # when it is submitted to vx-project
    run = _submit(vertex_pipelines, compiled_template, RunConfig())

    # then its deploy stage deploys to vx-project
    assert vertex_pipelines.job_json(run.job_id)["runtimeConfig"]["parameterValues"]["project"] == PROJECT


def test_wait_reports_each_state_until_the_run_succeeds(compiled_template: Path) -> None:
    # given a run that goes through running tasks to success
    states: list[str | tuple[str, dict[str, str]]] = [
        ("PIPELINE_STATE_RUNNING", {"intake-model": "RUNNING"}),
        ("PIPELINE_STATE_RUNNING", {"intake-model": "SUCCEEDED"}),
        "PIPELINE_STATE_SUCCEEDED",
    ]
    lines: list[str] = []
    with FakeVertexPipelines(job_states=states) as fake:
        # when it is submitted with wait
        run = _submit(fake, compiled_template, wait=True, poll_interval_s=0.01, report_progress=lines.append)

    # then every change was reported, in order, and the run ended succeeded
    changes = [line.split(": ", 1)[1] for line in lines if ": " in line and not line.startswith("Console")]
    assert (changes, run.succeeded) == (["RUNNING", "RUNNING", "SUCCEEDED", "SUCCEEDED"], True)


def test_wait_returns_the_failure_message_of_a_failed_run(compiled_template: Path) -> None:
    # given a run that fails
    with FakeVertexPipelines(job_states=["PIPELINE_STATE_RUNNING", "PIPELINE_STATE_FAILED"]) as fake:
        # when it is submitted with wait
        run = _submit(fake, compiled_template, wait=True, poll_interval_s=0.01)

    # then the result says so with Vertex's message
    assert (run.state, run.error) == ("PIPELINE_STATE_FAILED", "The DAG failed because some tasks failed.")


def test_a_503_on_create_is_retried_into_one_job(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given Vertex answers the first create with 503
    vertex_pipelines.fail_next("POST", r"/pipelineJobs$", 503)

    # when the run is submitted
    _submit(vertex_pipelines, compiled_template)

    # then exactly one job exists
    assert len(vertex_pipelines.pipeline_jobs) == 1


def test_a_create_whose_answer_was_lost_is_found_not_duplicated(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given the first create reaches Vertex but its answer is lost
    vertex_pipelines.fail_next("POST", r"/pipelineJobs$", 503, after_applying=True)

    # when the run is submitted
    run = _submit(vertex_pipelines, compiled_template)

    # then the retry finds the job it made
    assert (run.reused, len(vertex_pipelines.pipeline_jobs)) == (True, 1)


def test_a_job_id_in_use_is_a_user_error(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a job with this id exists
    _submit(vertex_pipelines, compiled_template, job_id="vxdeploy-taken")

    # when / then another submission with the same id is refused
    with pytest.raises(UserError, match="exists already"):
        _submit(vertex_pipelines, compiled_template, job_id="vxdeploy-taken")


def test_vertex_that_stays_unavailable_is_a_cloud_operation_error(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given Vertex answers every create with 503 (and retries do not wait in this test)
    vertex_pipelines.fail_next("POST", r"/pipelineJobs$", 503, times=10)
    monkeypatch.setattr(time, "sleep", lambda _: None)

    # when / then
    with pytest.raises(CloudOperationError, match="after 4 attempts"):
        _submit(vertex_pipelines, compiled_template)


def test_missing_bucket_stops_submission_before_vertex(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, gcs: GcsEmulator
) -> None:
    # given a pipeline root in a bucket that does not exist
    check = functools.partial(check_pipeline_root, storage_client=gcs.client)

    # when / then the submission fails naming the bucket, and nothing reached Vertex
    with pytest.raises(UserError, match="bucket vx-bucket does not exist"):
        _submit(vertex_pipelines, compiled_template, check_bucket=check)
    assert vertex_pipelines.pipeline_jobs == {}


def test_existing_bucket_passes_the_check(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, gcs: GcsEmulator
) -> None:
    # given the pipeline root's bucket exists
    check = functools.partial(check_pipeline_root, storage_client=gcs.client)
    root = f"gs://{gcs.bucket}/runs"

    # when the run is submitted with the check
    run = submit_pipeline(
        RunConfig(),
        PROJECT,
        LOCATION,
        root,
        compiled_template,
        api_endpoint=vertex_pipelines.endpoint,
        check_bucket=check,
        report_progress=lambda _: None,
    )

    # then it was submitted
    assert run.state == "PIPELINE_STATE_PENDING"


def test_unreachable_storage_fails_within_the_deadline() -> None:
    # given a Cloud Storage endpoint nothing listens on
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://127.0.0.1:{free_port()}"},
    )
    started = time.monotonic()

    # when / then the check gives up with a cloud error, in seconds not minutes
    with pytest.raises(CloudOperationError, match="could not check bucket"):
        check_pipeline_root(ROOT, PROJECT, storage_client=client, timeout_s=2)
    assert time.monotonic() - started < 15


def test_submit_talks_to_no_host_but_the_given_endpoint(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, loopback_only: list[str]
) -> None:
    # given only loopback connections are allowed
    # when a run is submitted to the fake
    _submit(vertex_pipelines, compiled_template)

    # then no other host (bucket check, project number lookup, metadata server) was tried
    assert loopback_only == []


def test_a_non_gs_pipeline_root_is_a_config_error(compiled_template: Path) -> None:
    # given / when / then
    with pytest.raises(ConfigError, match="--pipeline-root"):
        build_pipeline_job(RunConfig(), load_pipeline_spec(compiled_template), "/tmp/runs")


def test_a_template_missing_a_config_section_asks_to_recompile(compiled_template: Path) -> None:
    # given a template compiled before the 'canary' section existed
    spec = load_pipeline_spec(compiled_template)
    del spec["root"]["inputDefinitions"]["parameters"]["canary"]

    # when / then
    with pytest.raises(ConfigError, match="recompile"):
        build_pipeline_job(RunConfig(), spec, ROOT)


def test_an_invalid_label_is_a_config_error(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given / when / then
    with pytest.raises(ConfigError, match="--label"):
        _submit(vertex_pipelines, compiled_template, labels={"Team": "ML"})


def test_a_missing_template_asks_to_compile(tmp_path: Path) -> None:
    # given / when / then
    with pytest.raises(ConfigError, match="vxdeploy compile"):
        load_pipeline_spec(tmp_path / "missing.yaml")


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vxdeploy")
    add_submit_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_submit_prints_the_console_url(
    vertex_pipelines: FakeVertexPipelines,
    compiled_template: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a config file and the submit command line
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "digits"}}))
    args = _cli(
        [
            "submit",
            "--project",
            PROJECT,
            "--location",
            LOCATION,
            "--pipeline-root",
            ROOT,
            "--config",
            str(config),
            "--template",
            str(compiled_template),
            "--api-endpoint",
            vertex_pipelines.endpoint,
            "--skip-bucket-check",
            "--label",
            "team=ml",
            "--no-cache",
            "--job-id",
            "vxdeploy-cli",
        ]
    )

    # when it runs
    code = args.func(args)

    # then it exits 0 and prints where to watch the run
    assert (code, "pipelines/runs/vxdeploy-cli?project=vx-project" in capsys.readouterr().out) == (0, True)


def test_cli_submit_wait_exits_1_when_the_run_fails(compiled_template: Path) -> None:
    # given a run that will fail
    with FakeVertexPipelines(job_states=["PIPELINE_STATE_FAILED"]) as fake:
        args = _cli(
            [
                "submit",
                "--project",
                PROJECT,
                "--pipeline-root",
                ROOT,
                "--template",
                str(compiled_template),
                "--api-endpoint",
                fake.endpoint,
                "--skip-bucket-check",
                "--wait",
                "--poll-interval",
                "0.01",
            ]
        )

        # when the command waits for it
        code = args.func(args)

    # then the exit code says it failed
    assert code == 1
