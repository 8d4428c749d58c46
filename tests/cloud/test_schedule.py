"""Vertex AI pipeline schedules (``vxdeploy schedule``) against the loopback Vertex fake."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.vertex_pipelines import (  # noqa: F401
    FakeVertexPipelines,
    compiled_template_fixture,
    vertex_pipelines_fixture,
)
from vxdeploy.components.common.config import RunConfig, load_config
from vxdeploy.components.common.errors import ConfigError, UserError
from vxdeploy.pipelines.schedule import (
    add_schedule_arguments,
    create_schedule,
    delete_schedule,
    list_schedules,
    pause_schedule,
    resume_schedule,
    schedule_cron,
)

PROJECT = "vx-project"
LOCATION = "us-central1"
ROOT = "gs://vx-bucket/runs"


def _create(fake: FakeVertexPipelines, template: Path, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "display_name": "nightly",
        "template_path": template,
        "api_endpoint": fake.endpoint,
        "check_bucket": None,
    }
    options.update(kwargs)
    config = options.pop("config", RunConfig())
    cron = options.pop("cron", "TZ=America/New_York 0 3 * * *")
    return create_schedule(config, PROJECT, LOCATION, ROOT, cron, **options)


def test_create_schedule_stores_cron_with_time_zone(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given / when a nightly schedule in New York time is created
    info = _create(vertex_pipelines, compiled_template)

    # then Vertex holds the cron with its time zone
    assert vertex_pipelines.schedule_json(info.resource_name)["cron"] == "TZ=America/New_York 0 3 * * *"


def test_create_schedule_allows_one_run_at_a_time_by_default(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given / when
    info = _create(vertex_pipelines, compiled_template)

    # then two scheduled rollouts can never overlap
    assert vertex_pipelines.schedule_json(info.resource_name)["maxConcurrentRunCount"] == "1"


def test_scheduled_runs_carry_the_config_as_parameters(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a config taking the model from the registry's default alias
    uri = "projects/vx-project/locations/us-central1/models/digits@default"
    config = load_config(None, {"model.uri": uri})

    # when it is scheduled
    info = _create(vertex_pipelines, compiled_template, config=config)

    # then each run's request names that model
    request = vertex_pipelines.schedule_json(info.resource_name)["createPipelineJobRequest"]
    assert request["pipelineJob"]["runtimeConfig"]["parameterValues"]["model_uri"] == uri


def test_time_zone_option_prefixes_the_cron() -> None:
    # given / when / then
    assert schedule_cron("0 3 * * *", "Europe/Paris") == "TZ=Europe/Paris 0 3 * * *"


def test_a_cron_without_five_fields_is_refused_before_any_request(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given / when / then
    with pytest.raises(ConfigError, match="five fields"):
        _create(vertex_pipelines, compiled_template, cron="0 3 * *")
    assert vertex_pipelines.requests == []


def test_an_unknown_time_zone_is_refused() -> None:
    # given / when / then
    with pytest.raises(ConfigError, match="IANA"):
        schedule_cron("TZ=Mars/Olympus 0 3 * * *")


def test_a_second_schedule_with_the_same_name_is_refused(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a schedule named nightly
    _create(vertex_pipelines, compiled_template)

    # when / then creating it again does not double the rollouts
    with pytest.raises(UserError, match="has this name already"):
        _create(vertex_pipelines, compiled_template)
    assert len(vertex_pipelines.schedules) == 1


def test_list_follows_pages(vertex_pipelines: FakeVertexPipelines, compiled_template: Path) -> None:
    # given three schedules and a service that returns one per page
    for name in ("a", "b", "c"):
        _create(vertex_pipelines, compiled_template, display_name=name)
    vertex_pipelines.default_page_size = 1

    # when they are listed
    names = [
        s.display_name for s in list_schedules(PROJECT, LOCATION, api_endpoint=vertex_pipelines.endpoint)
    ]

    # then all three come back
    assert sorted(names) == ["a", "b", "c"]


def test_pause_stops_a_schedule(vertex_pipelines: FakeVertexPipelines, compiled_template: Path) -> None:
    # given an active schedule
    info = _create(vertex_pipelines, compiled_template)

    # when it is paused by display name
    pause_schedule("nightly", PROJECT, LOCATION, api_endpoint=vertex_pipelines.endpoint)

    # then it is paused
    assert vertex_pipelines.schedule_json(info.resource_name)["state"] == "PAUSED"


def test_resume_restarts_a_paused_schedule(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a paused schedule
    info = _create(vertex_pipelines, compiled_template)
    pause_schedule(info.schedule_id, PROJECT, LOCATION, api_endpoint=vertex_pipelines.endpoint)

    # when it is resumed by id
    resume_schedule(info.schedule_id, PROJECT, LOCATION, api_endpoint=vertex_pipelines.endpoint)

    # then it is active again
    assert vertex_pipelines.schedule_json(info.resource_name)["state"] == "ACTIVE"


def test_pausing_a_paused_schedule_is_a_user_error(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a paused schedule
    info = _create(vertex_pipelines, compiled_template)
    pause_schedule(info.resource_name, PROJECT, LOCATION, api_endpoint=vertex_pipelines.endpoint)

    # when / then
    with pytest.raises(UserError, match="cannot pause"):
        pause_schedule(info.resource_name, PROJECT, LOCATION, api_endpoint=vertex_pipelines.endpoint)


def test_delete_removes_the_schedule(vertex_pipelines: FakeVertexPipelines, compiled_template: Path) -> None:
    # given a schedule
    info = _create(vertex_pipelines, compiled_template)

    # when it is deleted (a long-running operation)
    delete_schedule(info.schedule_id, PROJECT, LOCATION, api_endpoint=vertex_pipelines.endpoint)

    # then it is gone
    assert vertex_pipelines.schedules == {}


def test_deleting_an_unknown_schedule_is_a_user_error(vertex_pipelines: FakeVertexPipelines) -> None:
    # given / when / then
    with pytest.raises(UserError, match="not found"):
        delete_schedule("987654", PROJECT, LOCATION, api_endpoint=vertex_pipelines.endpoint)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vxdeploy")
    add_schedule_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_schedule_create_then_list_shows_it(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a schedule created from the command line
    create = _cli(
        [
            "schedule",
            "create",
            "--project",
            PROJECT,
            "--pipeline-root",
            ROOT,
            "--template",
            str(compiled_template),
            "--cron",
            "0 3 * * *",
            "--time-zone",
            "America/New_York",
            "--display-name",
            "nightly-digits",
            "--api-endpoint",
            vertex_pipelines.endpoint,
            "--skip-bucket-check",
        ]
    )
    create.func(create)
    capsys.readouterr()

    # when the schedules are listed
    listing = _cli(["schedule", "list", "--project", PROJECT, "--api-endpoint", vertex_pipelines.endpoint])
    code = listing.func(listing)

    # then the listing shows it with its cron
    out = capsys.readouterr().out
    assert (code, "nightly-digits" in out, "TZ=America/New_York 0 3 * * *" in out) == (0, True, True)
