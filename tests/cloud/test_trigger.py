"""The retraining trigger: real HTTP requests to a loopback server that submits to the Vertex fake."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.common.errors import ConfigError
from pipelines.trigger import TriggerSettings, serve
from tests.fakes.vertex_pipelines import (  # noqa: F401
    FakeVertexPipelines,
    compiled_template_fixture,
    vertex_pipelines_fixture,
)

MODEL = "projects/vx-project/locations/us-central1/models/digits"


@pytest.fixture()
def trigger_url(vertex_pipelines: FakeVertexPipelines, compiled_template: Path) -> Iterator[str]:
    """The trigger served on a free loopback port, submitting to the fake (bucket check off)."""
    settings = TriggerSettings(
        project="vx-project",
        location="us-central1",
        pipeline_root="gs://vx-bucket/runs",
        template_path=str(compiled_template),
        api_endpoint=vertex_pipelines.endpoint,
    )
    server = serve(settings, "127.0.0.1", 0, check_bucket=None)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _push(data: str, message_id: str = "m-1") -> dict[str, Any]:
    """A Pub/Sub push envelope."""
    return {
        "message": {"data": base64.b64encode(data.encode()).decode(), "messageId": message_id},
        "subscription": "projects/vx-project/subscriptions/vxdeploy-trigger",
    }


def _model_uri_of_only_job(fake: FakeVertexPipelines) -> str:
    (job,) = fake.pipeline_jobs
    job_id = job.rsplit("/", 1)[-1]
    return str(fake.job_json(job_id)["runtimeConfig"]["parameterValues"]["model"]["uri"])


def test_a_pubsub_message_naming_a_model_submits_a_run_on_its_default_alias(
    trigger_url: str, vertex_pipelines: FakeVertexPipelines
) -> None:
    # given / when a push message names a model without a version
    code, reply = _post(trigger_url, _push(MODEL))

    # then a run was submitted on the version the 'default' alias names
    assert (code, reply["status"], _model_uri_of_only_job(vertex_pipelines)) == (
        200,
        "submitted",
        f"{MODEL}@default",
    )


def test_a_json_message_names_the_exact_version(
    trigger_url: str, vertex_pipelines: FakeVertexPipelines
) -> None:
    # given / when the message data is JSON naming version 3
    _post(trigger_url, _push(json.dumps({"model": f"{MODEL}@3"})))

    # then the run takes version 3
    assert _model_uri_of_only_job(vertex_pipelines) == f"{MODEL}@3"


def test_a_redelivered_message_does_not_start_a_second_run(
    trigger_url: str, vertex_pipelines: FakeVertexPipelines
) -> None:
    # given a message that was handled
    _post(trigger_url, _push(MODEL, message_id="m-42"))

    # when Pub/Sub delivers it again
    code, reply = _post(trigger_url, _push(MODEL, message_id="m-42"))

    # then the trigger answers with the run it started, and there is still one run
    assert (code, reply["status"], len(vertex_pipelines.pipeline_jobs)) == (200, "already-submitted", 1)


def test_an_alias_moved_in_the_registry_submits_that_version(
    trigger_url: str, vertex_pipelines: FakeVertexPipelines
) -> None:
    # given an Eventarc audit-log event (binary mode): alias 'default' set on version 5
    audit = {
        "protoPayload": {
            "methodName": "google.cloud.aiplatform.v1.ModelService.MergeVersionAliases",
            "resourceName": MODEL,
            "request": {"name": f"{MODEL}@5", "versionAliases": ["default"]},
        }
    }
    headers = {"ce-id": "log-1", "ce-type": "google.cloud.audit.log.v1.written", "ce-source": "//cloudaudit"}

    # when it is posted
    code, _ = _post(trigger_url, audit, headers)

    # then a run on version 5 was submitted
    assert (code, _model_uri_of_only_job(vertex_pipelines)) == (200, f"{MODEL}@5")


def test_an_alias_other_than_the_watched_one_is_ignored(
    trigger_url: str, vertex_pipelines: FakeVertexPipelines
) -> None:
    # given an audit-log event that sets only the alias 'experiment'
    audit = {
        "protoPayload": {
            "methodName": "google.cloud.aiplatform.v1.ModelService.MergeVersionAliases",
            "request": {"name": f"{MODEL}@6", "versionAliases": ["experiment"]},
        }
    }
    headers = {"ce-id": "log-2", "ce-type": "google.cloud.audit.log.v1.written"}

    # when it is posted
    code, reply = _post(trigger_url, audit, headers)

    # then it is acknowledged and nothing runs
    assert (code, reply["status"], vertex_pipelines.pipeline_jobs) == (200, "ignored", {})


def test_a_model_the_trigger_does_not_watch_is_ignored(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a trigger that watches only the model 'digits'
    settings = TriggerSettings(
        project="vx-project",
        location="us-central1",
        pipeline_root="gs://vx-bucket/runs",
        template_path=str(compiled_template),
        api_endpoint=vertex_pipelines.endpoint,
        models=("digits",),
    )
    server = serve(settings, "127.0.0.1", 0, check_bucket=None)
    try:
        # when vxdeploy's own model gets an alias (a canary promotion)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, reply = _post(url, _push("projects/vx-project/locations/us-central1/models/model@4"))
    finally:
        server.shutdown()
        server.server_close()

    # then nothing runs
    assert (code, reply["status"], vertex_pipelines.pipeline_jobs) == (200, "ignored", {})


def test_a_message_naming_no_model_is_a_400(trigger_url: str, vertex_pipelines: FakeVertexPipelines) -> None:
    # given / when a message whose data is not a model name is posted
    code, reply = _post(trigger_url, _push("retrain please"))

    # then it is refused and nothing runs
    assert (code, vertex_pipelines.pipeline_jobs) == (400, {})


def test_vertex_unavailable_answers_503_so_pubsub_redelivers(
    trigger_url: str, vertex_pipelines: FakeVertexPipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given Vertex answers every create with 503 (retries do not wait in this test)
    import pipelines.submit

    vertex_pipelines.fail_next("POST", r"/pipelineJobs$", 503, times=10)
    monkeypatch.setattr(pipelines.submit.time, "sleep", lambda _: None)

    # when a message arrives
    code, _ = _post(trigger_url, _push(MODEL))

    # then the trigger answers 503
    assert code == 503


def test_health_check_answers_ok(trigger_url: str) -> None:
    # given / when
    with urllib.request.urlopen(f"{trigger_url}/healthz", timeout=10) as response:
        # then
        assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})


def test_settings_name_the_missing_environment_variable() -> None:
    # given an environment without a pipeline root
    env = {"VXDEPLOY_PROJECT": "p", "VXDEPLOY_TEMPLATE": "/opt/vxdeploy/compiled/optimize_and_deploy.yaml"}

    # when / then
    with pytest.raises(ConfigError, match="VXDEPLOY_PIPELINE_ROOT"):
        TriggerSettings.from_env(env)
