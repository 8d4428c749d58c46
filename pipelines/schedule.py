"""Vertex AI pipeline schedules for vxdeploy: create, list, pause, resume, delete.

A schedule holds a whole pipeline job request (the same one ``vxdeploy submit`` sends) and a
cron with its time zone, ``TZ=America/New_York 0 3 * * *``. ``max_concurrent_run_count`` is 1
by default so two scheduled rollouts never overlap on an endpoint.
"""

from __future__ import annotations

import argparse
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials
from google.cloud import aiplatform_v1

from vxdeploy.components.cloud.vertex import vertex_client
from vxdeploy.components.common.config import RunConfig
from vxdeploy.components.common.errors import CloudOperationError, ConfigError, UserError
from vxdeploy.pipelines.submit import (
    DEFAULT_LOCATION,
    DEFAULT_TEMPLATE,
    BucketCheck,
    add_run_target_arguments,
    build_pipeline_job,
    check_pipeline_root,
    config_from_arguments,
    fill_deployment_defaults,
    load_pipeline_spec,
    run_target_options,
    vertex_errors,
)

_CRON_FIELD = re.compile(r"^[0-9*/,\-A-Za-z?]+$")
# Each cron field: its name, its range, and the names it accepts for values.
_CRON_RANGES: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day-of-week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_TZ_PREFIX = re.compile(r"^(?:CRON_)?TZ=(\S+)\s+(.*)$")


@dataclass(frozen=True)
class ScheduleInfo:
    """One schedule as Vertex AI reports it."""

    resource_name: str
    display_name: str
    state: str
    cron: str
    max_concurrent_run_count: int
    next_run_time: str = ""
    last_run_time: str = ""
    started_run_count: int = 0

    @property
    def schedule_id(self) -> str:
        return self.resource_name.rsplit("/", 1)[-1]


def schedule_service_client(
    location: str, api_endpoint: str | None = None, credentials: Credentials | None = None
) -> aiplatform_v1.ScheduleServiceClient:
    """A REST ``ScheduleServiceClient`` for ``location`` (or for the given endpoint)."""
    return vertex_client(aiplatform_v1.ScheduleServiceClient, location, api_endpoint, credentials)


def schedule_cron(cron: str, time_zone: str | None = None) -> str:
    """Vertex's cron string, ``TZ=<zone> <five fields>``, checked.

    ``cron`` may carry its own ``TZ=``/``CRON_TZ=`` prefix, or ``time_zone`` gives it; without
    either the schedule runs in UTC.

    Raises:
        ConfigError: not five cron fields, an unknown IANA time zone, or two different zones.
    """
    text = " ".join(cron.split())
    zone = time_zone
    match = _TZ_PREFIX.match(text)
    if match:
        if time_zone and time_zone != match.group(1):
            raise ConfigError(
                "--time-zone", time_zone, f"the cron already names time zone {match.group(1)}; give one"
            )
        zone, text = match.group(1), match.group(2)
    fields = text.split(" ")
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(
            "--cron", cron, "give five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *'"
        )
    for value, spec in zip(fields, _CRON_RANGES, strict=True):
        _check_cron_field(cron, value, *spec)
    if zone is None:
        return text
    if zone not in zoneinfo.available_timezones():
        raise ConfigError(
            "--time-zone", zone, "use an IANA time zone name, e.g. America/New_York or Europe/Paris"
        )
    return f"TZ={zone} {text}"


def _check_cron_field(cron: str, value: str, name: str, low: int, high: int, names: tuple[str, ...]) -> None:
    """One cron field: ``*``, numbers or names in range, ``a-b`` ranges, ``/step``, comma lists."""

    def number(text: str) -> int:
        if text.upper() in names:
            return names.index(text.upper()) + (low if name == "month" else 0)
        if not text.isdigit() or not low <= int(text) <= high:
            raise ConfigError(
                "--cron",
                cron,
                f"the {name} field {value!r} has {text!r}; it takes {low}-{high}"
                + (f" or {names[0]}-{names[-1]}" if names else "")
                + ", e.g. '0 3 * * *' runs at 03:00 every day",
            )
        return int(text)

    for part in value.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) < 1):
            raise ConfigError("--cron", cron, f"the {name} field {value!r} has step {step!r}; give 1 or more")
        if base in ("*", "?"):
            continue
        first, dash, last = base.partition("-")
        start = number(first)
        if dash and number(last) < start:
            raise ConfigError(
                "--cron", cron, f"the {name} field {value!r} has a range that ends before it starts"
            )


def _info(schedule: aiplatform_v1.Schedule) -> ScheduleInfo:
    def when(stamp: Any) -> str:
        return stamp.isoformat() if isinstance(stamp, datetime) and stamp.timestamp() > 0 else ""

    return ScheduleInfo(
        resource_name=schedule.name,
        display_name=schedule.display_name,
        state=aiplatform_v1.Schedule.State(schedule.state).name,
        cron=schedule.cron,
        max_concurrent_run_count=int(schedule.max_concurrent_run_count),
        next_run_time=when(schedule.next_run_time),
        last_run_time=when(schedule.last_scheduled_run_response.scheduled_run_time),
        started_run_count=int(schedule.started_run_count),
    )


def list_schedules(
    project: str,
    location: str,
    *,
    display_name: str | None = None,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> list[ScheduleInfo]:
    """The project's schedules in ``location`` (only those named ``display_name``, if given)."""
    client = schedule_service_client(location, api_endpoint, credentials)
    request: dict[str, Any] = {"parent": f"projects/{project}/locations/{location}"}
    if display_name is not None:
        request["filter"] = f'display_name="{display_name}"'
    return [_info(s) for s in client.list_schedules(request=request)]


def create_schedule(
    config: RunConfig,
    project: str,
    location: str,
    pipeline_root: str,
    cron: str,
    *,
    display_name: str,
    template_path: str | Path = DEFAULT_TEMPLATE,
    time_zone: str | None = None,
    max_concurrent_run_count: int = 1,
    allow_queueing: bool = False,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    max_run_count: int | None = None,
    service_account: str | None = None,
    network: str | None = None,
    labels: Mapping[str, str] | None = None,
    enable_caching: bool | None = None,
    encryption_spec_key_name: str | None = None,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
    check_bucket: BucketCheck | None = check_pipeline_root,
) -> ScheduleInfo:
    """Create a schedule that submits the vxdeploy pipeline with ``config`` on ``cron``.

    Refuses a second schedule with the same display name in the location, so re-running the
    command that creates a schedule does not double the rollouts.

    Args:
        config: The run configuration each scheduled run gets (a Model Registry ``model.uri``
            with an alias, e.g. ``projects/P/locations/L/models/M@default``, takes the version
            the alias names at run time).
        project: Google Cloud project id.
        location: Vertex AI region.
        pipeline_root: ``gs://BUCKET/PATH`` for the runs' artifacts.
        cron: Five cron fields, optionally prefixed ``TZ=<zone>``.
        display_name: The schedule's name (unique per location here).
        template_path: The compiled pipeline.
        time_zone: IANA time zone of ``cron`` (UTC when neither gives one).
        max_concurrent_run_count: Runs allowed at once (1: rollouts never overlap).
        allow_queueing: Queue a run that is due while ``max_concurrent_run_count`` are running
            (default: skip it).
        start_time: First time the schedule may run (default: now).
        end_time: Time after which it stops.
        max_run_count: Stop after this many runs.
        service_account: Service account the runs act as.
        network: Peered VPC network of the runs.
        labels: Labels on each run.
        enable_caching: ``False`` turns caching off for each run.
        encryption_spec_key_name: Cloud KMS key (CMEK) for each run.
        api_endpoint: Vertex AI endpoint override.
        credentials: Credentials (default: Application Default Credentials).
        check_bucket: Checks the pipeline root first; ``None`` skips it.

    Raises:
        UserError: a bad cron, time zone, count, pipeline root, or a duplicate display name.
        CloudOperationError: Vertex AI refused or failed the request.
    """
    full_cron = schedule_cron(cron, time_zone)
    if start_time is not None and end_time is not None and _aware(end_time) <= _aware(start_time):
        raise ConfigError(
            "--end-time",
            end_time.isoformat(),
            f"is not after --start-time {start_time.isoformat()}; give an end after the start",
        )
    if max_concurrent_run_count < 1:
        raise ConfigError("--max-concurrent-runs", max_concurrent_run_count, "give 1 or more")
    if max_run_count is not None and max_run_count < 1:
        raise ConfigError("--max-runs", max_run_count, "give 1 or more, or leave it out")
    if not display_name:
        raise ConfigError("--display-name", display_name, "name the schedule")
    config = fill_deployment_defaults(config, project, location)
    job = build_pipeline_job(
        config,
        load_pipeline_spec(template_path),
        pipeline_root,
        display_name=display_name,
        labels=labels,
        enable_caching=enable_caching,
        service_account=service_account,
        network=network,
        encryption_spec_key_name=encryption_spec_key_name,
    )
    if check_bucket is not None:
        check_bucket(pipeline_root, project)
    existing = list_schedules(
        project, location, display_name=display_name, api_endpoint=api_endpoint, credentials=credentials
    )
    if existing:
        raise UserError(
            f"--display-name={display_name!r}: schedule {existing[0].resource_name} has this name already; "
            "delete it first (`vxdeploy schedule delete`) or choose another name"
        )
    parent = f"projects/{project}/locations/{location}"
    schedule = aiplatform_v1.Schedule(
        display_name=display_name,
        cron=full_cron,
        max_concurrent_run_count=max_concurrent_run_count,
        allow_queueing=allow_queueing,
        create_pipeline_job_request=aiplatform_v1.CreatePipelineJobRequest(parent=parent, pipeline_job=job),
    )
    if start_time is not None:
        schedule.start_time = start_time
    if end_time is not None:
        schedule.end_time = end_time
    if max_run_count is not None:
        schedule.max_run_count = max_run_count
    client = schedule_service_client(location, api_endpoint, credentials)
    try:
        created = client.create_schedule(parent=parent, schedule=schedule)
    except api_exceptions.GoogleAPIError as exc:
        raise CloudOperationError(f"Vertex AI did not create the schedule: {exc}") from exc
    return _info(created)


def _aware(moment: datetime) -> datetime:
    """A time without a zone is UTC (as Vertex reads it), so naive and aware times compare."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def resolve_schedule_name(
    name: str,
    project: str,
    location: str,
    *,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> str:
    """A schedule's resource name from its resource name, numeric id, or display name.

    Raises:
        UserError: no schedule, or more than one, has that display name.
    """
    if name.startswith("projects/"):
        return name
    if name.isdigit():
        return f"projects/{project}/locations/{location}/schedules/{name}"
    found = list_schedules(
        project, location, display_name=name, api_endpoint=api_endpoint, credentials=credentials
    )
    if len(found) != 1:
        what = "no schedule" if not found else f"{len(found)} schedules"
        raise UserError(
            f"schedule {name!r}: {what} with this display name in {location}; give the schedule id"
        )
    return found[0].resource_name


def _call(
    verb: str,
    name: str,
    project: str,
    location: str,
    api_endpoint: str | None,
    credentials: Credentials | None,
    action: Callable[[aiplatform_v1.ScheduleServiceClient, str], Any],
) -> str:
    resource = resolve_schedule_name(
        name, project, location, api_endpoint=api_endpoint, credentials=credentials
    )
    client = schedule_service_client(location, api_endpoint, credentials)
    try:
        action(client, resource)
    except api_exceptions.NotFound:
        raise UserError(f"schedule {name!r}: not found in project {project}, {location}") from None
    except api_exceptions.BadRequest as exc:  # 400: INVALID_ARGUMENT or FAILED_PRECONDITION over REST
        raise UserError(f"cannot {verb} schedule {name!r}: {exc.message}") from None
    except api_exceptions.GoogleAPIError as exc:
        raise CloudOperationError(f"Vertex AI did not {verb} schedule {name!r}: {exc}") from exc
    return resource


def pause_schedule(
    name: str,
    project: str,
    location: str,
    *,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> str:
    """Pause a schedule (no new runs; running ones go on). Returns its resource name."""
    return _call(
        "pause", name, project, location, api_endpoint, credentials, lambda c, n: c.pause_schedule(name=n)
    )


def resume_schedule(
    name: str,
    project: str,
    location: str,
    *,
    catch_up: bool = False,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> str:
    """Resume a paused schedule; ``catch_up`` also starts the runs missed while paused."""
    return _call(
        "resume",
        name,
        project,
        location,
        api_endpoint,
        credentials,
        lambda c, n: c.resume_schedule(name=n, catch_up=catch_up),
    )


def delete_schedule(
    name: str,
    project: str,
    location: str,
    *,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Delete a schedule and wait for the deletion to finish. Runs it started are kept."""
    return _call(
        "delete",
        name,
        project,
        location,
        api_endpoint,
        credentials,
        lambda c, n: c.delete_schedule(name=n).result(timeout=timeout_s),
    )


# -- command line ----------------------------------------------------------------------------


def add_schedule_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``vxdeploy schedule create|list|pause|resume|delete``; each ``func(args)`` returns an exit code."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "schedule",
        help="Manage Vertex AI schedules that run the pipeline on a cron.",
        description="Create, list, pause, resume or delete Vertex AI pipeline schedules.",
    )
    actions = parser.add_subparsers(dest="schedule_action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="Schedule the pipeline on a cron.")
    add_run_target_arguments(create)
    create.add_argument(
        "--cron", required=True, help="Five cron fields, e.g. '0 3 * * *', optionally 'TZ=Zone ...'."
    )
    create.add_argument("--time-zone", help="IANA time zone of --cron, e.g. America/New_York (default UTC).")
    create.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=1,
        help="Runs allowed at once (default 1: rollouts never overlap).",
    )
    create.add_argument(
        "--allow-queueing", action="store_true", help="Queue a due run instead of skipping it."
    )
    create.add_argument("--max-runs", type=int, default=None, help="Stop after this many runs.")
    create.add_argument(
        "--start-time", type=datetime.fromisoformat, help="ISO 8601 time of the first possible run."
    )
    create.add_argument(
        "--end-time", type=datetime.fromisoformat, help="ISO 8601 time after which no run starts."
    )
    create.set_defaults(func=run_schedule_create_command)

    for action, help_text in (
        ("list", "List schedules."),
        ("pause", "Pause a schedule."),
        ("resume", "Resume a paused schedule."),
        ("delete", "Delete a schedule."),
    ):
        sub = actions.add_parser(action, help=help_text)
        if action != "list":
            sub.add_argument("name", help="Schedule id, resource name, or display name.")
        sub.add_argument("--project", required=True, help="Google Cloud project id.")
        sub.add_argument(
            "--location", default=DEFAULT_LOCATION, help=f"Vertex AI region (default {DEFAULT_LOCATION})."
        )
        sub.add_argument("--api-endpoint", help="Vertex AI API endpoint override.")
        if action == "resume":
            sub.add_argument(
                "--catch-up", action="store_true", help="Also start the runs missed while paused."
            )
        sub.set_defaults(func=_COMMANDS[action])
    return parser


def run_schedule_create_command(args: argparse.Namespace) -> int:
    config = config_from_arguments(args)
    with vertex_errors(args.location, args.api_endpoint):
        info = create_schedule(
            config,
            project=args.project,
            location=args.location,
            pipeline_root=args.pipeline_root,
            cron=args.cron,
            display_name=args.display_name or f"vxdeploy {config.model.name}",
            template_path=args.template,
            time_zone=args.time_zone,
            max_concurrent_run_count=args.max_concurrent_runs,
            allow_queueing=args.allow_queueing,
            start_time=args.start_time,
            end_time=args.end_time,
            max_run_count=args.max_runs,
            **run_target_options(args),
        )
    print(f"Created {info.resource_name} ({info.display_name}): {info.cron}, {info.state}")
    print(f"Console: https://console.cloud.google.com/vertex-ai/pipelines/schedules?project={args.project}")
    return 0


def run_schedule_list_command(args: argparse.Namespace) -> int:
    with vertex_errors(args.location, args.api_endpoint):
        schedules = list_schedules(args.project, args.location, api_endpoint=args.api_endpoint)
    if not schedules:
        print(f"No schedules in {args.project}, {args.location}.")
        return 0
    rows = [("ID", "DISPLAY NAME", "STATE", "CRON", "NEXT RUN", "RUNS")]
    rows += [
        (s.schedule_id, s.display_name, s.state, s.cron, s.next_run_time or "-", str(s.started_run_count))
        for s in schedules
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _simple_command(verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with vertex_errors(args.location, args.api_endpoint):
            if verb == "pause":
                name = pause_schedule(args.name, args.project, args.location, api_endpoint=args.api_endpoint)
            elif verb == "resume":
                name = resume_schedule(
                    args.name,
                    args.project,
                    args.location,
                    catch_up=args.catch_up,
                    api_endpoint=args.api_endpoint,
                )
            else:
                name = delete_schedule(args.name, args.project, args.location, api_endpoint=args.api_endpoint)
        print(f"{_PAST_TENSE[verb]} {name}")
        return 0

    return run


_PAST_TENSE = {"pause": "Paused", "resume": "Resumed", "delete": "Deleted"}
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": run_schedule_list_command,
    "pause": _simple_command("pause"),
    "resume": _simple_command("resume"),
    "delete": _simple_command("delete"),
}
