"""The retraining trigger: real HTTP requests with real ID tokens, submitting to the Vertex fake."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud.trigger_support import EVENTARC_ACCOUNT, MODEL, TriggerUnderTest, post, push, trigger
from tests.fakes.oidc import FakeOidcIssuer, oidc_issuer_fixture  # noqa: F401
from tests.fakes.vertex_pipelines import (  # noqa: F401
    FakeVertexPipelines,
    compiled_template_fixture,
    vertex_pipelines_fixture,
)
from vxdeploy.components.common.errors import ConfigError
from vxdeploy.pipelines.trigger import TriggerSettings, listen_address, make_server


@pytest.fixture(name="served")
def served_fixture(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, oidc_issuer: FakeOidcIssuer
) -> Iterator[TriggerUnderTest]:
    with trigger(vertex_pipelines, compiled_template, oidc_issuer) as served:
        yield served


def _model_uri_of_only_job(fake: FakeVertexPipelines) -> str:
    (job,) = fake.pipeline_jobs
    job_id = job.rsplit("/", 1)[-1]
    return str(fake.job_json(job_id)["runtimeConfig"]["parameterValues"]["model_uri"])


def test_a_pubsub_message_naming_a_model_submits_a_run_on_its_default_alias(served: TriggerUnderTest) -> None:
    # given / when a push message names a model without a version
    code, reply = post(served.url, push(MODEL), token=served.token())

    # then a run was submitted on the version the 'default' alias names
    assert (code, reply["status"], _model_uri_of_only_job(served.vertex)) == (
        200,
        "submitted",
        f"{MODEL}@default",
    )


def test_a_json_message_names_the_exact_version(served: TriggerUnderTest) -> None:
    # given / when the message data is JSON naming version 3
    post(served.url, push(json.dumps({"model": f"{MODEL}@3"})), token=served.token())

    # then the run takes version 3
    assert _model_uri_of_only_job(served.vertex) == f"{MODEL}@3"


def test_a_redelivered_message_does_not_start_a_second_run(served: TriggerUnderTest) -> None:
    # given a message that was handled
    post(served.url, push(MODEL, message_id="m-42"), token=served.token())

    # when Pub/Sub delivers it again
    code, reply = post(served.url, push(MODEL, message_id="m-42"), token=served.token())

    # then the trigger answers with the run it started, and there is still one run
    assert (code, reply["status"], served.jobs()) == (200, "already-submitted", 1)


def test_a_redelivery_to_a_fresh_instance_finds_the_run_on_vertex(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, oidc_issuer: FakeOidcIssuer
) -> None:
    # given a message handled by one trigger instance
    with trigger(vertex_pipelines, compiled_template, oidc_issuer) as first:
        post(first.url, push(MODEL, message_id="m-7"), token=first.token())

    # when Pub/Sub redelivers it to another instance (Cloud Run scaled out)
    with trigger(vertex_pipelines, compiled_template, oidc_issuer) as second:
        code, reply = post(second.url, push(MODEL, message_id="m-7"), token=second.token())

    # then Vertex's ALREADY_EXISTS leads it to the same run
    assert (code, reply["status"], len(vertex_pipelines.pipeline_jobs)) == (200, "already-submitted", 1)


def test_two_different_messages_without_an_id_start_two_runs_and_a_resend_none(
    served: TriggerUnderTest,
) -> None:
    # given two id-less messages that name the model differently (plain text, and JSON)
    first = push(MODEL, message_id=None)
    second = push(json.dumps({"model": MODEL}), message_id=None)

    # when both arrive, and the first is sent again
    answers = [post(served.url, body, token=served.token())[1]["status"] for body in (first, second, first)]

    # then each different content has its run, and the resend found its own
    assert (answers, served.jobs()) == (["submitted", "submitted", "already-submitted"], 2)


def test_an_alias_moved_in_the_registry_submits_that_version(served: TriggerUnderTest) -> None:
    # given an Eventarc audit-log event (binary mode): alias 'default' set on version 5
    audit = {
        "protoPayload": {
            "methodName": "google.cloud.aiplatform.v1.ModelService.MergeVersionAliases",
            "resourceName": MODEL,
            "request": {"name": f"{MODEL}@5", "versionAliases": ["default"]},
        }
    }
    headers = {"ce-id": "log-1", "ce-type": "google.cloud.audit.log.v1.written", "ce-source": "//cloudaudit"}

    # when the Eventarc trigger's service account posts it
    code, _ = post(served.url, audit, headers=headers, token=served.token(email=EVENTARC_ACCOUNT))

    # then a run on version 5 was submitted
    assert (code, _model_uri_of_only_job(served.vertex)) == (200, f"{MODEL}@5")


def test_an_alias_other_than_the_watched_one_is_ignored(served: TriggerUnderTest) -> None:
    # given an audit-log event that sets only the alias 'experiment'
    audit = {
        "protoPayload": {
            "methodName": "google.cloud.aiplatform.v1.ModelService.MergeVersionAliases",
            "request": {"name": f"{MODEL}@6", "versionAliases": ["experiment"]},
        }
    }
    headers = {"ce-id": "log-2", "ce-type": "google.cloud.audit.log.v1.written"}

    # when it is posted
    code, reply = post(served.url, audit, headers=headers, token=served.token())

    # then it is acknowledged and nothing runs
    assert (code, reply["status"], served.jobs()) == (200, "ignored", 0)


OWN = "projects/vx-project/locations/us-central1/models"


@pytest.mark.parametrize(
    ("watched", "event_model", "status", "jobs"),
    [
        (("digits",), f"{OWN}/digits", "submitted", 1),
        (("digits",), f"{OWN}/digits@3", "submitted", 1),
        (("digits",), f"{OWN}/model@4", "ignored", 0),  # vxdeploy's own model after a promotion
        (("digits",), "projects/another-project/locations/us-central1/models/digits", "ignored", 0),
        (("digits",), "projects/vx-project/locations/europe-west4/models/digits", "ignored", 0),
        ((f"{OWN}/4242",), "projects/another-project/locations/us-central1/models/4242", "ignored", 0),
        (("projects/another-project/locations/us-central1/models/4242",), f"{OWN}/4242", "ignored", 0),
        (
            ("projects/424242424242/locations/us-central1/models/4242",),
            "projects/424242424242/locations/us-central1/models/4242@7",
            "submitted",
            1,
        ),
        ((), "projects/another-project/locations/us-central1/models/4242", "submitted", 1),
    ],
)
def test_the_allow_list_matches_full_model_resource_names(
    vertex_pipelines: FakeVertexPipelines,
    compiled_template: Path,
    oidc_issuer: FakeOidcIssuer,
    watched: tuple[str, ...],
    event_model: str,
    status: str,
    jobs: int,
) -> None:
    # given a trigger that watches `watched` (a bare id: that model in the trigger's project and region)
    with trigger(vertex_pipelines, compiled_template, oidc_issuer, models=watched) as served:
        # when an event names `event_model`
        code, reply = post(served.url, push(event_model), token=served.token())

    # then only that exact model (project, region and id) starts a run
    assert (code, reply["status"], len(vertex_pipelines.pipeline_jobs)) == (200, status, jobs)


def test_vertex_unavailable_answers_503_so_pubsub_redelivers(
    served: TriggerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given Vertex answers every create with 503 (retries do not wait in this test)
    import vxdeploy.pipelines.submit

    served.vertex.fail_next("POST", r"/pipelineJobs$", 503, times=10)
    monkeypatch.setattr(vxdeploy.pipelines.submit.time, "sleep", lambda _: None)

    # when a message arrives
    code, _ = post(served.url, push(MODEL), token=served.token())

    # then the trigger answers 503
    assert code == 503


def test_health_check_answers_ok_without_a_token(served: TriggerUnderTest) -> None:
    # given / when
    with urllib.request.urlopen(f"{served.url}/healthz", timeout=10) as response:
        # then
        assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})


# -- settings --------------------------------------------------------------------------------

_ENV = {
    "VXDEPLOY_PROJECT": "p",
    "VXDEPLOY_PIPELINE_ROOT": "gs://b/runs",
    "VXDEPLOY_TEMPLATE": "/opt/vxdeploy/compiled/optimize_and_deploy.yaml",
    "VXDEPLOY_TRIGGER_AUDIENCE": "https://t-abc-uc.a.run.app",
    "VXDEPLOY_TRIGGER_INVOKERS": "push@p.iam.gserviceaccount.com, eventarc@p.iam.gserviceaccount.com",
}


def test_settings_read_the_caller_check_from_the_environment() -> None:
    # given / when
    settings = TriggerSettings.from_env(
        {**_ENV, "VXDEPLOY_MODELS": "digits, projects/q/locations/l/models/9"}
    )

    # then
    assert (settings.auth, settings.audiences, settings.invokers, settings.models) == (
        "oidc",
        ("https://t-abc-uc.a.run.app",),
        ("push@p.iam.gserviceaccount.com", "eventarc@p.iam.gserviceaccount.com"),
        ("projects/p/locations/us-central1/models/digits", "projects/q/locations/l/models/9"),
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"VXDEPLOY_PIPELINE_ROOT": ""}, "VXDEPLOY_PIPELINE_ROOT"),
        ({"VXDEPLOY_TRIGGER_AUDIENCE": ""}, "VXDEPLOY_TRIGGER_AUDIENCE"),
        ({"VXDEPLOY_TRIGGER_INVOKERS": " , "}, "VXDEPLOY_TRIGGER_INVOKERS"),
        ({"VXDEPLOY_TRIGGER_AUTH": "off"}, "VXDEPLOY_TRIGGER_AUTH"),
        ({"VXDEPLOY_TRIGGER_MAX_BODY_BYTES": "1MB"}, "VXDEPLOY_TRIGGER_MAX_BODY_BYTES"),
        ({"VXDEPLOY_TRIGGER_MAX_BODY_BYTES": "10"}, "VXDEPLOY_TRIGGER_MAX_BODY_BYTES"),
        ({"VXDEPLOY_TRIGGER_READ_TIMEOUT_S": "nan"}, "VXDEPLOY_TRIGGER_READ_TIMEOUT_S"),
        ({"VXDEPLOY_TRIGGER_CONCURRENCY": "0"}, "VXDEPLOY_TRIGGER_CONCURRENCY"),
        ({"VXDEPLOY_MODELS": "digits@production"}, "VXDEPLOY_MODELS"),
        ({"VXDEPLOY_MODELS": "projects/p/models/m"}, "VXDEPLOY_MODELS"),
    ],
)
def test_settings_name_the_variable_that_is_wrong(change: dict[str, str], field: str) -> None:
    # given / when / then
    with pytest.raises(ConfigError, match=field):
        TriggerSettings.from_env({**_ENV, **change})


def test_no_caller_check_needs_no_audience_but_serves_only_on_loopback() -> None:
    # given a trigger without a caller check
    settings = TriggerSettings.from_env(
        {k: v for k, v in _ENV.items() if "TRIGGER" not in k} | {"VXDEPLOY_TRIGGER_AUTH": "none"}
    )

    # when / then it refuses every interface but loopback
    with pytest.raises(ConfigError, match="only for a trigger on loopback"):
        make_server(settings, "0.0.0.0", 0)


@pytest.mark.parametrize(
    ("env", "address"),
    [
        ({}, ("127.0.0.1", 8080)),
        ({"PORT": "9000"}, ("127.0.0.1", 9000)),
        ({"PORT": "8080", "VXDEPLOY_TRIGGER_HOST": "0.0.0.0"}, ("0.0.0.0", 8080)),
    ],
)
def test_the_trigger_listens_on_loopback_unless_the_image_says_otherwise(
    env: dict[str, str], address: tuple[str, int]
) -> None:
    # given / when / then
    assert listen_address(env) == address


@pytest.mark.parametrize("port", ["http", "0", "70000", "-1"])
def test_a_bad_port_is_named(port: str) -> None:
    # given / when / then
    with pytest.raises(ConfigError, match="PORT"):
        listen_address({"PORT": port})


def test_the_service_without_its_settings_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # given an environment without the caller check's audience
    from vxdeploy.pipelines.trigger import main

    for name, value in _ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VXDEPLOY_TRIGGER_AUDIENCE")

    # when the service starts
    status = main()

    # then it stops at once with one structured line naming the variable
    (line,) = capfd.readouterr().err.splitlines()
    assert (status, json.loads(line)["severity"], "VXDEPLOY_TRIGGER_AUDIENCE" in line) == (2, "ERROR", True)
