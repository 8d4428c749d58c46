"""Submit the compiled vxdeploy pipeline to Vertex AI Pipelines, and follow it to the end.

Unlike ``aiplatform.PipelineJob.submit()``, nothing here calls a Google host the caller did not
ask for: the pipeline root's bucket is checked through an injectable function with a bounded
deadline (``check_bucket``), the project number is never looked up (Vertex returns it in the
job's name), and the Vertex endpoint is a parameter (``api_endpoint``), so the same code runs
against the real service and against a loopback fake.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials
from google.cloud import aiplatform_v1
from google.protobuf import json_format

from vxdeploy.components.cloud.labels import label_value
from vxdeploy.components.cloud.vertex import vertex_api_endpoint, vertex_client
from vxdeploy.components.common.config import RunConfig, load_config, parse_set_override
from vxdeploy.components.common.errors import CloudOperationError, ConfigError, UserError
from vxdeploy.components.common.images import VERSION
from vxdeploy.components.common.uris import localize

DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "compiled" / "optimize_and_deploy.yaml"
"""The compiled pipeline shipped with the package (package data ``vxdeploy.compiled``; in a checkout,
the repository's ``compiled/``), whatever the current directory."""
DEFAULT_LOCATION = "us-central1"
JOB_ID_PATTERN = re.compile(r"^[a-z][-a-z0-9]{0,127}$")
TERMINAL_STATES = frozenset(
    {
        "PIPELINE_STATE_SUCCEEDED",
        "PIPELINE_STATE_FAILED",
        "PIPELINE_STATE_CANCELLED",
        "PIPELINE_STATE_PAUSED",
    }
)
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
# Vertex answers these when it is briefly unable to take a request; a retried create is safe
# because the job id is fixed before the first attempt.
_TRANSIENT = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.TooManyRequests,
    api_exceptions.InternalServerError,
    api_exceptions.GatewayTimeout,
)

BucketCheck = Callable[[str, str], None]
"""``check_bucket(pipeline_root, project)``: raise when the pipeline root cannot be used."""
ProgressReporter = Callable[[str], None]


@dataclass(frozen=True)
class SubmittedRun:
    """A pipeline job on Vertex AI, as submitted (and, after waiting, as it ended).

    Attributes:
        resource_name: ``projects/NUMBER/locations/L/pipelineJobs/ID`` as Vertex returned it.
        job_id: The job id (last part of the name).
        console_url: Where the run shows in the Google Cloud console.
        state: The ``PipelineState`` name, e.g. ``PIPELINE_STATE_RUNNING``.
        error: Vertex's error message for a failed run.
        reused: True when the job existed already (made by an earlier attempt or event).
    """

    resource_name: str
    job_id: str
    console_url: str
    state: str
    error: str = ""
    reused: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state == "PIPELINE_STATE_SUCCEEDED"


# -- clients ---------------------------------------------------------------------------------


@contextmanager
def vertex_errors(location: str, api_endpoint: str | None = None) -> Iterator[None]:
    """Turn "no credentials" and "cannot connect" from a Vertex AI call into one message with the fix.

    Raises:
        UserError: no Application Default Credentials, or the API endpoint cannot be reached.
    """
    from google.auth.exceptions import DefaultCredentialsError, TransportError
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout

    endpoint = vertex_api_endpoint(location, api_endpoint)
    try:
        yield
    except DefaultCredentialsError:
        raise UserError(
            "no Google Cloud credentials found; run `gcloud auth application-default login` (or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file), then try again"
        ) from None
    except (RequestsConnectionError, Timeout, TransportError, api_exceptions.RetryError) as exc:
        raise UserError(
            f"cannot reach Vertex AI at {endpoint} ({_root_cause(exc)}); check --api-endpoint, --location "
            "and the network (proxy, VPC Service Controls)"
        ) from None


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()
    reason = re.sub(r"<[^>]*>: ", "", text[-1] if text else "")
    return f"{type(exc).__name__}: {reason}"[:200]


def pipeline_service_client(
    location: str, api_endpoint: str | None = None, credentials: Credentials | None = None
) -> aiplatform_v1.PipelineServiceClient:
    """A REST ``PipelineServiceClient`` for ``location`` (or for the given endpoint)."""
    return vertex_client(aiplatform_v1.PipelineServiceClient, location, api_endpoint, credentials)


# -- the pipeline job ------------------------------------------------------------------------


def load_pipeline_spec(template_path: str | Path) -> dict[str, Any]:
    """Read a compiled pipeline (KFP IR YAML/JSON, local or ``gs://``) and return its PipelineSpec."""
    path_text = str(template_path)
    with tempfile.TemporaryDirectory() as tmp:
        if path_text.startswith("gs://"):
            local = localize(path_text, tmp, what="--template")
        else:
            local = Path(path_text)
            if not local.is_file():
                raise ConfigError(
                    "--template", path_text, "no such file; compile the pipeline first (`vxdeploy compile`)"
                )
        documents = [d for d in yaml.safe_load_all(local.read_text()) if d]
    if not documents or not isinstance(documents[0], dict):
        raise ConfigError("--template", path_text, "not a compiled pipeline (empty or not a mapping)")
    spec = documents[0].get("pipelineSpec", documents[0])
    if "root" not in spec or "pipelineInfo" not in spec:
        raise ConfigError(
            "--template", path_text, "not a KFP pipeline spec (no root / pipelineInfo); recompile it"
        )
    return dict(spec)


def fill_deployment_defaults(config: RunConfig, project: str, location: str) -> RunConfig:
    """The config with an empty ``deployment.project`` and an unset ``deployment.location`` filled in.

    A run submitted to a project deploys there unless the config names another project.
    """
    deployment = config.deployment
    updates: dict[str, Any] = {}
    if not deployment.project:
        updates["project"] = project
    if "location" not in deployment.model_fields_set:
        updates["location"] = location
    if not updates:
        return config
    return config.model_copy(update={"deployment": deployment.model_copy(update=updates)})


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    """``['team=ml', ...]`` to a dict, each key and value checked against Google Cloud's label rules."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError("--label", pair, "write labels as key=value")
        labels[key] = value
    return check_labels(labels)


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ConfigError(
                "--label",
                key,
                "label keys are 1-63 lowercase letters, digits, '_' or '-', starting with a letter",
            )
        if not _LABEL_VALUE.match(value):
            raise ConfigError(
                "--label",
                f"{key}={value}",
                "label values are at most 63 lowercase letters, digits, '_' or '-'",
            )
    return dict(labels)


def default_labels(config: RunConfig) -> dict[str, str]:
    """Labels every vxdeploy run carries, so runs can be filtered in the console and in billing."""
    return {"vxdeploy-version": label_value(VERSION), "vxdeploy-model": label_value(config.model.name)}


def make_job_id(config: RunConfig, now: datetime | None = None) -> str:
    """``vxdeploy-<model name>-<UTC timestamp>``: unique per second, readable in the console."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    name = re.sub(r"[^a-z0-9-]+", "-", config.model.name.lower()).strip("-")[:80] or "model"
    return f"vxdeploy-{name}-{stamp}"


def set_caching(pipeline_spec: dict[str, Any], enable_caching: bool | None) -> None:
    """Apply a run-wide caching choice to every task of ``pipeline_spec`` (in place).

    ``False`` turns caching off everywhere. ``None`` and ``True`` keep what was compiled: the
    stages with side effects (intake, deploy, canary, monitoring, rollback) are compiled without
    caching on purpose, and forcing it on would let a re-run skip a rollout.
    """
    if enable_caching is not False:
        return
    for component in [pipeline_spec["root"], *pipeline_spec.get("components", {}).values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            task["cachingOptions"] = {"enableCache": False}


def build_pipeline_job(
    config: RunConfig,
    pipeline_spec: Mapping[str, Any],
    pipeline_root: str,
    *,
    display_name: str = "",
    labels: Mapping[str, str] | None = None,
    enable_caching: bool | None = None,
    service_account: str | None = None,
    network: str | None = None,
    encryption_spec_key_name: str | None = None,
) -> aiplatform_v1.PipelineJob:
    """The ``PipelineJob`` message for one run: the spec, the config as parameter values, the options.

    Raises:
        ConfigError: when the pipeline root is not a ``gs://`` URI, or the template lacks a
            parameter the config has (it was compiled from another vxdeploy version).
    """
    from google.cloud.aiplatform.utils.pipeline_utils import PipelineRuntimeConfigBuilder

    if not pipeline_root.startswith("gs://") or len(pipeline_root) <= len("gs://"):
        raise ConfigError(
            "--pipeline-root", pipeline_root, "give a gs://BUCKET/PATH URI where runs keep their artifacts"
        )
    spec = yaml.safe_load(yaml.safe_dump(dict(pipeline_spec)))  # a deep copy the caching choice may change
    set_caching(spec, enable_caching)
    parameters = config.to_pipeline_parameters()
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    missing = sorted(set(parameters) - set(declared))
    if missing:
        raise ConfigError(
            "--template",
            spec["pipelineInfo"].get("name", ""),
            f"the compiled pipeline has no parameter(s) {', '.join(missing)}; recompile it with this "
            "vxdeploy (`vxdeploy compile`)",
        )
    builder = PipelineRuntimeConfigBuilder.from_job_spec_json({"pipelineSpec": spec, "runtimeConfig": {}})
    builder.update_pipeline_root(pipeline_root)
    builder.update_runtime_parameters(parameters)
    job: dict[str, Any] = {
        "displayName": display_name or f"vxdeploy {config.model.name}",
        "pipelineSpec": spec,
        "runtimeConfig": builder.build(),
        "labels": {**default_labels(config), **check_labels(labels or {})},
    }
    if service_account:
        job["serviceAccount"] = service_account
    if network:
        job["network"] = network
    if encryption_spec_key_name:
        job["encryptionSpec"] = {"kmsKeyName": encryption_spec_key_name}
    pb = aiplatform_v1.PipelineJob.pb()()
    json_format.ParseDict(job, pb)
    wrapped: aiplatform_v1.PipelineJob = aiplatform_v1.PipelineJob.wrap(pb)
    return wrapped


# -- the bucket check ------------------------------------------------------------------------


def check_pipeline_root(
    pipeline_root: str,
    project: str,
    *,
    credentials: Credentials | None = None,
    timeout_s: float = 20.0,
    storage_client: Any = None,
) -> None:
    """Check that the pipeline root's bucket exists and its objects can be listed, within ``timeout_s``.

    Uses ``storage_client`` (a ``google.cloud.storage.Client``) or a new one for ``project``
    (``STORAGE_EMULATOR_HOST`` points that at an emulator). Never creates a bucket: a missing
    one is the caller's to create, in the region they choose.

    Raises:
        ConfigError: not a ``gs://`` URI. UserError: no such bucket, or no permission.
        CloudOperationError: Cloud Storage did not answer within ``timeout_s``.
    """
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage  # type: ignore[attr-defined]
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket_name = pipeline_root.removeprefix("gs://").split("/", 1)[0]
    if not pipeline_root.startswith("gs://") or not bucket_name:
        raise ConfigError(
            "--pipeline-root", pipeline_root, "give a gs://BUCKET/PATH URI where runs keep their artifacts"
        )
    prefix = pipeline_root.removeprefix(f"gs://{bucket_name}").lstrip("/")
    try:
        client = storage_client or storage.Client(project=project, credentials=credentials)
        # Listing needs storage.objects.list, which the roles that can use a pipeline root have
        # (objectAdmin, objectViewer); reading the bucket itself would need storage.buckets.get.
        blobs = client.list_blobs(
            bucket_name,
            prefix=prefix,
            max_results=1,
            timeout=timeout_s,
            retry=DEFAULT_RETRY.with_timeout(timeout_s),
        )
        next(iter(blobs), None)
    except DefaultCredentialsError as exc:
        raise UserError(
            f"no Google Cloud credentials to check --pipeline-root={pipeline_root!r} ({exc}); "
            "run `gcloud auth application-default login`"
        ) from None
    except api_exceptions.NotFound:
        raise UserError(
            f"--pipeline-root={pipeline_root!r}: bucket {bucket_name} does not exist; create it in the "
            f"pipeline's region: gcloud storage buckets create gs://{bucket_name} --project={project} "
            "--location=REGION"
        ) from None
    except api_exceptions.Forbidden:
        raise UserError(
            f"--pipeline-root={pipeline_root!r}: no permission to list objects in bucket {bucket_name}; "
            "grant the submitting identity and the pipeline's service account roles/storage.objectAdmin on it"
        ) from None
    except (api_exceptions.GoogleAPIError, OSError) as exc:
        raise CloudOperationError(
            f"could not check bucket {bucket_name} within {timeout_s:.0f} s ({type(exc).__name__}: {exc}); "
            "check the network, or skip the check (--skip-bucket-check)"
        ) from exc


# -- submit and wait -------------------------------------------------------------------------


def console_url(location: str, job_id: str, project: str) -> str:
    """The Google Cloud console page of a pipeline run."""
    return f"https://console.cloud.google.com/vertex-ai/locations/{location}/pipelines/runs/{job_id}?project={project}"


def _state_name(job: aiplatform_v1.PipelineJob) -> str:
    return str(aiplatform_v1.PipelineState(job.state).name)


def _run_from_job(job: aiplatform_v1.PipelineJob, project: str, *, reused: bool = False) -> SubmittedRun:
    parts = job.name.split("/")
    location, job_id = parts[3], parts[-1]
    return SubmittedRun(
        resource_name=job.name,
        job_id=job_id,
        console_url=console_url(location, job_id, project),
        state=_state_name(job),
        error=job.error.message,
        reused=reused,
    )


def create_pipeline_job(
    client: aiplatform_v1.PipelineServiceClient,
    parent: str,
    job: aiplatform_v1.PipelineJob,
    job_id: str,
    *,
    attempts: int = 4,
    backoff_s: float = 1.0,
    reuse_existing_job: bool = False,
) -> tuple[aiplatform_v1.PipelineJob, bool]:
    """Create the job, retrying transient errors; returns the job and whether it existed already.

    The job id is fixed before the first attempt, so a retry after a create that did reach Vertex
    answers ALREADY_EXISTS, and the existing job is returned instead of a duplicate. With
    ``reuse_existing_job`` a job that had this id before the call is returned too (a redelivered
    trigger event); otherwise that is an error.

    Raises:
        UserError: the job id was already taken before this call.
        CloudOperationError: Vertex kept failing, or refused the job.
    """
    for attempt in range(1, attempts + 1):
        try:
            return client.create_pipeline_job(parent=parent, pipeline_job=job, pipeline_job_id=job_id), False
        except api_exceptions.Conflict:  # 409: ALREADY_EXISTS over REST
            if attempt == 1 and not reuse_existing_job:
                raise UserError(
                    f"--job-id={job_id!r}: a pipeline job with this id exists already; choose another id"
                ) from None
            return client.get_pipeline_job(name=f"{parent}/pipelineJobs/{job_id}"), True
        except api_exceptions.BadRequest as exc:  # 400: INVALID_ARGUMENT over REST
            raise CloudOperationError(f"Vertex AI refused the pipeline job: {exc.message}") from exc
        except _TRANSIENT as exc:
            if attempt == attempts:
                raise CloudOperationError(
                    f"Vertex AI did not accept the pipeline job after {attempts} attempts: {exc}"
                ) from exc
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def wait_for_pipeline_job(
    client: aiplatform_v1.PipelineServiceClient,
    run: SubmittedRun,
    project: str,
    *,
    poll_interval_s: float = 30.0,
    timeout_s: float | None = None,
    report_progress: ProgressReporter | None = None,
) -> SubmittedRun:
    """Poll the job until it reaches a terminal state, reporting each change of job and task state.

    Raises:
        CloudOperationError: ``timeout_s`` passed first (the job keeps running on Vertex).
    """
    report = report_progress or _print
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_state = ""
    task_states: dict[str, str] = {}
    while True:
        try:
            job = client.get_pipeline_job(name=run.resource_name)
        except _TRANSIENT as exc:
            report(f"{run.job_id}: could not read the state ({type(exc).__name__}); retrying")
        else:
            current = _run_from_job(job, project, reused=run.reused)
            if current.state != last_state:
                report(f"{run.job_id}: {current.state.removeprefix('PIPELINE_STATE_')}")
                last_state = current.state
            for task in job.job_detail.task_details:
                state = aiplatform_v1.PipelineTaskDetail.State(task.state).name
                if task.task_name and task_states.get(task.task_name) != state:
                    task_states[task.task_name] = state
                    report(f"  {task.task_name}: {state}")
            if current.state in TERMINAL_STATES:
                if current.error:
                    report(f"{run.job_id}: {current.error}")
                return current
        if deadline is not None and time.monotonic() >= deadline:
            raise CloudOperationError(
                f"{run.job_id} was still {last_state or 'unknown'} after {timeout_s} s; "
                f"it keeps running: {run.console_url}"
            )
        time.sleep(poll_interval_s)


def _print(line: str) -> None:
    print(line, flush=True)


def submit_pipeline(
    config: RunConfig,
    project: str,
    location: str,
    pipeline_root: str,
    template_path: str | Path = DEFAULT_TEMPLATE,
    service_account: str | None = None,
    network: str | None = None,
    labels: Mapping[str, str] | None = None,
    enable_caching: bool | None = None,
    encryption_spec_key_name: str | None = None,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
    wait: bool = False,
    *,
    job_id: str | None = None,
    display_name: str = "",
    check_bucket: BucketCheck | None = check_pipeline_root,
    reuse_existing_job: bool = False,
    poll_interval_s: float = 30.0,
    timeout_s: float | None = None,
    report_progress: ProgressReporter | None = None,
) -> SubmittedRun:
    """Submit one vxdeploy run as a Vertex AI PipelineJob; optionally wait for it to end.

    Args:
        config: The run's configuration; each section becomes the pipeline parameter of its name.
            An empty ``deployment.project`` becomes ``project``; an unset ``deployment.location``
            becomes ``location``.
        project: The Google Cloud project (id or number) to run in.
        location: The Vertex AI region, e.g. ``us-central1``.
        pipeline_root: ``gs://BUCKET/PATH`` where the run keeps its artifacts.
        template_path: The compiled pipeline (local path or ``gs://``).
        service_account: The service account the run's tasks act as (default: Compute Engine's).
        network: Full name of a peered VPC network, ``projects/NUMBER/global/networks/NAME``.
        labels: Extra labels on the job (Google Cloud label rules).
        enable_caching: ``False`` turns task caching off for this run; ``None``/``True`` keep
            what was compiled (side-effecting stages never cache).
        encryption_spec_key_name: A Cloud KMS key (CMEK) for the job's resources.
        api_endpoint: Vertex AI endpoint override (``http://127.0.0.1:PORT`` for a fake).
        credentials: Credentials for Vertex AI (default: Application Default Credentials;
            anonymous for a plain-HTTP endpoint).
        wait: Poll until the run ends, reporting each state change.
        job_id: The pipeline job id (default ``vxdeploy-<model>-<timestamp>``); a fixed id makes
            a retried submission idempotent.
        display_name: The console's name for the run (default ``vxdeploy <model name>``).
        check_bucket: Checks the pipeline root before submitting (default:
            :func:`check_pipeline_root`); ``None`` skips it.
        reuse_existing_job: When a job with ``job_id`` exists already, return it instead of
            failing (for callers whose job id names one event, like the trigger).
        poll_interval_s: Seconds between polls when waiting.
        timeout_s: Give up waiting after this long (the run keeps going).
        report_progress: Receives progress lines (default: printed to stdout).

    Returns:
        The submitted run (its final state when ``wait``).

    Raises:
        UserError: bad pipeline root, labels, job id or template. CloudOperationError: Vertex
        AI or Cloud Storage failed.
    """
    report = report_progress or _print
    config = fill_deployment_defaults(config, project, location)
    spec = load_pipeline_spec(template_path)
    job = build_pipeline_job(
        config,
        spec,
        pipeline_root,
        display_name=display_name,
        labels=labels,
        enable_caching=enable_caching,
        service_account=service_account,
        network=network,
        encryption_spec_key_name=encryption_spec_key_name,
    )
    job_id = job_id or make_job_id(config)
    if not JOB_ID_PATTERN.match(job_id):
        raise ConfigError(
            "--job-id", job_id, "use 1-128 lowercase letters, digits and '-', starting with a letter"
        )
    if check_bucket is not None:
        check_bucket(pipeline_root, project)
    client = pipeline_service_client(location, api_endpoint, credentials)
    created, reused = create_pipeline_job(
        client, f"projects/{project}/locations/{location}", job, job_id, reuse_existing_job=reuse_existing_job
    )
    run = _run_from_job(created, project, reused=reused)
    report(f"{'Found' if reused else 'Submitted'} {run.resource_name}")
    report(f"Console: {run.console_url}")
    if wait:
        run = wait_for_pipeline_job(
            client, run, project, poll_interval_s=poll_interval_s, timeout_s=timeout_s, report_progress=report
        )
    return run


# -- command line ----------------------------------------------------------------------------


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``['model.uri=gs://b/m.pt2', 'canary.steps=[50, 100]']`` to dotted overrides (values read as YAML)."""
    return dict(parse_set_override(pair) for pair in pairs)


def add_run_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``submit`` and ``schedule create`` share: where and how the pipeline runs."""
    parser.add_argument("--project", required=True, help="Google Cloud project id to run in.")
    parser.add_argument(
        "--location", default=DEFAULT_LOCATION, help=f"Vertex AI region (default {DEFAULT_LOCATION})."
    )
    parser.add_argument(
        "--pipeline-root", required=True, help="gs://BUCKET/PATH where runs keep their artifacts."
    )
    parser.add_argument(
        "--config", help="Run configuration YAML (docs/configuration.md); defaults otherwise."
    )
    parser.add_argument(
        "--model",
        help="The model (overrides model.uri): gs:// file or projects/P/locations/L/models/M@alias.",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="Override one config field (repeatable).",
    )
    parser.add_argument(
        "--template",
        default=str(DEFAULT_TEMPLATE),
        help=f"Compiled pipeline, a path or gs:// URI (default: the one installed with vxdeploy, "
        f"{DEFAULT_TEMPLATE}).",
    )
    parser.add_argument("--service-account", help="Service account the run's tasks act as.")
    parser.add_argument("--network", help="Peered VPC network: projects/NUMBER/global/networks/NAME.")
    parser.add_argument("--api-endpoint", help="Vertex AI API endpoint override (private endpoints, tests).")
    parser.add_argument("--no-cache", action="store_true", help="Run every task, ignoring cached results.")
    parser.add_argument("--kms-key", help="Cloud KMS key for customer-managed encryption (CMEK).")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="Label on the run (repeatable)."
    )
    parser.add_argument("--display-name", default="", help="Name shown in the console.")
    parser.add_argument(
        "--skip-bucket-check",
        action="store_true",
        help="Do not check that the pipeline root's bucket exists.",
    )


def config_from_arguments(args: argparse.Namespace) -> RunConfig:
    """The run config of ``--config`` with ``--model`` and ``--set`` overrides applied, validated."""
    overrides = parse_overrides(args.set)
    if args.model:
        overrides["model.uri"] = args.model
    return load_config(args.config, overrides)


def add_submit_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``vxdeploy submit`` to an argparse subparsers object; its ``func(args)`` returns an exit code."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "submit",
        help="Submit the compiled pipeline to Vertex AI Pipelines.",
        description="Submit the compiled pipeline as a Vertex AI PipelineJob; prints its console URL.",
    )
    add_run_target_arguments(parser)
    parser.add_argument("--job-id", help="Pipeline job id (default vxdeploy-<model>-<timestamp>).")
    parser.add_argument(
        "--wait", action="store_true", help="Follow the run until it ends; exit 1 unless it succeeds."
    )
    parser.add_argument(
        "--poll-interval", type=float, default=30.0, help="Seconds between polls with --wait."
    )
    parser.add_argument("--timeout", type=float, default=None, help="Stop waiting after this many seconds.")
    parser.set_defaults(func=run_submit_command)
    return parser


def run_target_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the options :func:`add_run_target_arguments` adds, as the API takes them."""
    return {
        "service_account": args.service_account,
        "network": args.network,
        "labels": parse_labels(args.label),
        "enable_caching": False if args.no_cache else None,
        "encryption_spec_key_name": args.kms_key,
        "api_endpoint": args.api_endpoint,
        "check_bucket": None if args.skip_bucket_check else check_pipeline_root,
    }


def run_submit_command(args: argparse.Namespace) -> int:
    """``vxdeploy submit``: 0 when submitted (with ``--wait``: succeeded), 1 when the run did not succeed."""
    config = config_from_arguments(args)
    with vertex_errors(args.location, args.api_endpoint):
        run = submit_pipeline(
            config,
            project=args.project,
            location=args.location,
            pipeline_root=args.pipeline_root,
            template_path=args.template,
            **run_target_options(args),
            wait=args.wait,
            job_id=args.job_id,
            display_name=args.display_name,
            poll_interval_s=args.poll_interval,
            timeout_s=args.timeout,
        )
    if args.wait and not run.succeeded:
        print(
            f"{run.job_id} ended {run.state.removeprefix('PIPELINE_STATE_')}: {run.console_url}",
            file=sys.stderr,
        )
        return 1
    return 0
