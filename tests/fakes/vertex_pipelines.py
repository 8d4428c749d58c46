"""A loopback fake of Vertex AI's REST API: PipelineJobs, Schedules, and the Model/Endpoint reads a run needs.

It speaks the wire protocol the real ``google-cloud-aiplatform`` clients use with
``transport="rest"``: JSON bodies parsed into (and printed from) the real ``aiplatform_v1`` protobuf
messages, so a request with an unknown or misspelt field fails here as it would on Vertex;
enums as integers when the client asks ``$alt=json;enum-encoding=int``; errors as
``{"error": {"code", "message", "status"}}``; resource names returned with the project *number*,
as Vertex does. Faults are injected with :meth:`FakeVertexPipelines.fail_next`.

Separate from ``tests/fakes/vertex.py`` (model upload and endpoint deployment): this one holds
what submission, schedules and the retraining trigger touch. Fixtures: import
``vertex_pipelines_fixture`` (a fresh fake per test, ``vertex_pipelines``) and
``compiled_template_fixture`` (the pipeline compiled once per session, ``compiled_template``).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from google.cloud import aiplatform_v1
from google.protobuf import json_format
from google.protobuf.message import Message

from tests.fakes.loopback import LoopbackHTTPServer

_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_JOB_ID = re.compile(r"^[a-z][-a-z0-9]{0,127}$")
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?]+$")


class _ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Fault:
    method: str
    path_pattern: re.Pattern[str]
    code: int
    remaining: int
    after_applying: bool


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]


@dataclass
class _ModelVersion:
    version_id: str
    artifact_uri: str
    labels: dict[str, str]
    display_name: str
    aliases: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pb(message_type: Any) -> Message:
    """A fresh raw protobuf message of a proto-plus ``aiplatform_v1`` type."""
    pb: Message = message_type.pb()()
    return pb


class FakeVertexPipelines(LoopbackHTTPServer):
    """In-memory Vertex AI REST service on ``127.0.0.1``; use as a context manager.

    Args:
        project_id: The project id clients are configured with; requests for other projects get 403.
        project_number: What Vertex puts in the resource names it returns.
        job_states: Per pipeline job, the states successive GETs move it through (a string, or a
            ``(state, {task_name: task_state})`` pair to also report task details).
    """

    def __init__(
        self,
        project_id: str = "vx-project",
        project_number: str = "424242424242",
        job_states: list[str | tuple[str, dict[str, str]]] | None = None,
    ) -> None:
        self.project_id = project_id
        self.project_number = project_number
        self.job_states = list(
            job_states or ["PIPELINE_STATE_RUNNING", "PIPELINE_STATE_RUNNING", "PIPELINE_STATE_SUCCEEDED"]
        )
        self.pipeline_jobs: dict[str, Message] = {}
        self.schedules: dict[str, Message] = {}
        self.requests: list[RecordedRequest] = []
        self._job_scripts: dict[str, list[str | tuple[str, dict[str, str]]]] = {}
        self._models: dict[tuple[str, str], list[_ModelVersion]] = {}
        self._endpoints: dict[tuple[str, str], Message] = {}
        self._faults: list[_Fault] = []
        self.default_page_size = 100
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: pass as ``api_endpoint``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeVertexPipelines:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake._dispatch(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._dispatch(self, "POST")

            def do_DELETE(self) -> None:  # noqa: N802
                fake._dispatch(self, "DELETE")

            def do_PATCH(self) -> None:  # noqa: N802
                fake._dispatch(self, "PATCH")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._serve(Handler, name="fake-vertex-pipelines")
        return self

    # -- test controls -----------------------------------------------------------------------

    def fail_next(
        self, method: str, path_regex: str, code: int = 503, times: int = 1, *, after_applying: bool = False
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and ``path_regex`` with HTTP ``code``.

        With ``after_applying`` the request takes effect first and only its answer is lost (a
        create that reached Vertex but whose response timed out).
        """
        self._faults.append(_Fault(method, re.compile(path_regex), code, times, after_applying))

    def add_model_version(
        self,
        model_id: str,
        version_id: str,
        artifact_uri: str,
        *,
        location: str = "us-central1",
        aliases: list[str] | None = None,
        labels: dict[str, str] | None = None,
        display_name: str = "",
    ) -> str:
        """Register a model version (the first version of a model gets the alias 'default')."""
        versions = self._models.setdefault((location, model_id), [])
        new_aliases = list(aliases or [])
        if not versions and "default" not in new_aliases:
            new_aliases.append("default")
        for other in versions:  # an alias names one version of a model at a time
            other.aliases = [a for a in other.aliases if a not in new_aliases]
        versions.append(
            _ModelVersion(version_id, artifact_uri, dict(labels or {}), display_name or model_id, new_aliases)
        )
        return f"projects/{self.project_number}/locations/{location}/models/{model_id}"

    def add_endpoint(
        self,
        endpoint_id: str,
        display_name: str,
        deployed: list[dict[str, Any]] | None = None,
        *,
        location: str = "us-central1",
    ) -> str:
        """Create an endpoint; ``deployed`` items: ``{"id", "model", "model_version_id", "traffic"}``."""
        name = f"projects/{self.project_number}/locations/{location}/endpoints/{endpoint_id}"
        endpoint = _pb(aiplatform_v1.Endpoint)
        json_format.ParseDict(
            {
                "name": name,
                "displayName": display_name,
                "deployedModels": [
                    {"id": d["id"], "model": d["model"], "modelVersionId": d["model_version_id"]}
                    for d in deployed or []
                ],
                "trafficSplit": {d["id"]: d.get("traffic", 0) for d in deployed or []},
            },
            endpoint,
        )
        self._endpoints[(location, endpoint_id)] = endpoint
        return name

    def job_json(self, job_id: str) -> dict[str, Any]:
        """A stored pipeline job as the JSON Vertex would return (camelCase, enum names)."""
        for name, job in self.pipeline_jobs.items():
            if name.endswith(f"/pipelineJobs/{job_id}"):
                return json_format.MessageToDict(job)
        raise KeyError(job_id)

    def schedule_json(self, schedule_name_or_id: str) -> dict[str, Any]:
        for name, schedule in self.schedules.items():
            if name == schedule_name_or_id or name.endswith(f"/schedules/{schedule_name_or_id}"):
                return json_format.MessageToDict(schedule)
        raise KeyError(schedule_name_or_id)

    # -- HTTP plumbing -----------------------------------------------------------------------

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        query = parse_qs(split.query)
        int_enums = "enum-encoding=int" in split.query
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = unquote(split.path)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, body))
            try:
                fault = self._matching_fault(method, path)
                if fault is not None and not fault.after_applying:
                    raise _ApiError(fault.code, f"injected fault {fault.code} for {method} {path}")
                code, payload = self._route(method, path, query, raw)
                if fault is not None:
                    raise _ApiError(fault.code, f"injected fault {fault.code} after applying {method} {path}")
            except _ApiError as err:
                code = err.code
                payload = {
                    "error": {
                        "code": err.code,
                        "message": err.message,
                        "status": _HTTP_STATUS.get(err.code, "UNKNOWN"),
                    }
                }
        if isinstance(payload, Message):
            payload = json_format.MessageToDict(payload, use_integers_for_enums=int_enums)
        data = json.dumps(payload).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _matching_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method == method and fault.path_pattern.search(path):
                fault.remaining -= 1
                return fault
        return None

    def _parse(self, raw: bytes, message_type: Any) -> Message:
        message = _pb(message_type)
        try:
            json_format.Parse(raw or b"{}", message)
        except json_format.ParseError as exc:
            raise _ApiError(400, f"Invalid JSON payload received. {exc}") from None
        return message

    def _location_path(self, path: str) -> tuple[str, str, str]:
        """Split ``/v1/projects/P/locations/L/rest`` into (location, canonical parent, rest)."""
        match = re.match(r"^/v1/projects/([^/]+)/locations/([^/]+)(?:/(.*))?$", path)
        if not match:
            raise _ApiError(404, f"no such path {path}")
        project, location, rest = match.group(1), match.group(2), match.group(3) or ""
        if project not in (self.project_id, self.project_number):
            raise _ApiError(403, f"Permission denied on resource project {project}.")
        return location, f"projects/{self.project_number}/locations/{location}", rest

    def _route(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> tuple[int, Any]:
        location, parent, rest = self._location_path(path)
        if rest == "pipelineJobs" and method == "POST":
            return 200, self._create_pipeline_job(parent, query, raw)
        if rest == "pipelineJobs" and method == "GET":
            return 200, {
                "pipelineJobs": [
                    json_format.MessageToDict(j)
                    for n, j in self.pipeline_jobs.items()
                    if n.startswith(parent)
                ]
            }
        if m := re.fullmatch(r"pipelineJobs/([^/:]+)", rest):
            return 200, self._get_pipeline_job(f"{parent}/pipelineJobs/{m.group(1)}")
        if (m := re.fullmatch(r"pipelineJobs/([^/:]+):cancel", rest)) and method == "POST":
            return 200, self._cancel_pipeline_job(f"{parent}/pipelineJobs/{m.group(1)}")
        if rest == "schedules" and method == "POST":
            return 200, self._create_schedule(parent, raw)
        if rest == "schedules" and method == "GET":
            return 200, self._list_schedules(parent, query)
        if m := re.fullmatch(r"schedules/([^/:]+)(?::(pause|resume))?", rest):
            return 200, self._schedule_call(method, f"{parent}/schedules/{m.group(1)}", m.group(2))
        if (m := re.fullmatch(r"models/([^/:@]+)(?:@([^/:]+))?", rest)) and method == "GET":
            return 200, self._get_model(location, parent, m.group(1), m.group(2))
        if rest == "endpoints" and method == "GET":
            return 200, self._list_endpoints(location, query)
        if (m := re.fullmatch(r"endpoints/([^/:]+)", rest)) and method == "GET":
            if (location, m.group(1)) not in self._endpoints:
                raise _ApiError(404, f"Endpoint {parent}/endpoints/{m.group(1)} not found.")
            return 200, self._endpoints[(location, m.group(1))]
        raise _ApiError(404, f"The fake has no {method} {path}")

    # -- PipelineJobs ------------------------------------------------------------------------

    def _validate_job(self, job: Message) -> None:
        runtime = job.runtime_config  # type: ignore[attr-defined]
        if not runtime.gcs_output_directory.startswith("gs://"):
            raise _ApiError(400, "runtime_config.gcs_output_directory must be a gs:// URI.")
        spec = json_format.MessageToDict(job.pipeline_spec)  # type: ignore[attr-defined]
        declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
        unknown = sorted(set(runtime.parameter_values) - set(declared))
        if unknown:
            raise _ApiError(
                400,
                f"The pipeline parameter(s) {unknown} are not found in the pipeline job input definitions.",
            )

    def _create_pipeline_job(self, parent: str, query: dict[str, list[str]], raw: bytes) -> Message:
        job = self._parse(raw, aiplatform_v1.PipelineJob)
        job_id = (query.get("pipelineJobId") or [""])[0] or f"job-{next(self._ids)}"
        if not _JOB_ID.match(job_id):
            raise _ApiError(400, f"pipeline_job_id {job_id!r} must match [a-z][-a-z0-9]{{0,127}}.")
        name = f"{parent}/pipelineJobs/{job_id}"
        if name in self.pipeline_jobs:
            raise _ApiError(409, f"PipelineJob {name} already exists.")
        self._validate_job(job)
        job.name = name  # type: ignore[attr-defined]
        job.state = aiplatform_v1.PipelineState.PIPELINE_STATE_PENDING.value  # type: ignore[attr-defined]
        job.create_time.FromJsonString(_now())  # type: ignore[attr-defined]
        job.update_time.FromJsonString(_now())  # type: ignore[attr-defined]
        self.pipeline_jobs[name] = job
        self._job_scripts[name] = list(self.job_states)
        return job

    def _get_pipeline_job(self, name: str) -> Message:
        if name not in self.pipeline_jobs:
            raise _ApiError(404, f"PipelineJob {name} not found.")
        job = self.pipeline_jobs[name]
        script = self._job_scripts[name]
        if script:
            step = script.pop(0)
            state, tasks = (step, {}) if isinstance(step, str) else step
            job.state = aiplatform_v1.PipelineState[state].value  # type: ignore[attr-defined]
            job.update_time.FromJsonString(_now())  # type: ignore[attr-defined]
            if state == "PIPELINE_STATE_FAILED":
                job.error.code = 9  # type: ignore[attr-defined]
                job.error.message = "The DAG failed because some tasks failed."  # type: ignore[attr-defined]
            for task_name, task_state in tasks.items():
                details = job.job_detail.task_details  # type: ignore[attr-defined]
                found = next((t for t in details if t.task_name == task_name), None)
                if found is None:
                    found = details.add(task_name=task_name, task_id=next(self._ids))
                found.state = aiplatform_v1.PipelineTaskDetail.State[task_state].value
        return job

    def _cancel_pipeline_job(self, name: str) -> dict[str, Any]:
        job = self._get_pipeline_job(name)
        job.state = aiplatform_v1.PipelineState.PIPELINE_STATE_CANCELLED.value  # type: ignore[attr-defined]
        self._job_scripts[name] = []
        return {}

    # -- Schedules ---------------------------------------------------------------------------

    def _create_schedule(self, parent: str, raw: bytes) -> Message:
        schedule = self._parse(raw, aiplatform_v1.Schedule)
        s: Any = schedule
        if not s.display_name:
            raise _ApiError(400, "schedule.display_name is required.")
        _validate_cron(s.cron)
        if s.max_concurrent_run_count <= 0:
            raise _ApiError(400, "schedule.max_concurrent_run_count must be greater than 0.")
        request = s.create_pipeline_job_request
        if not s.HasField("create_pipeline_job_request") or not request.HasField("pipeline_job"):
            raise _ApiError(400, "schedule.create_pipeline_job_request.pipeline_job is required.")
        request_parent = request.parent.replace(
            f"projects/{self.project_id}/", f"projects/{self.project_number}/"
        )
        if request_parent != parent:
            raise _ApiError(
                400, f"create_pipeline_job_request.parent {request.parent!r} must be the schedule's parent."
            )
        self._validate_job(request.pipeline_job)
        s.name = f"{parent}/schedules/{next(self._ids)}"
        s.state = aiplatform_v1.Schedule.State.ACTIVE.value
        s.create_time.FromJsonString(_now())
        s.update_time.FromJsonString(_now())
        self.schedules[s.name] = schedule
        return schedule

    def _list_schedules(self, parent: str, query: dict[str, list[str]]) -> dict[str, Any]:
        matches = [s for n, s in self.schedules.items() if n.startswith(parent + "/")]
        flt = (query.get("filter") or [""])[0]
        if flt:
            m = re.fullmatch(r'\s*display_name\s*=\s*"([^"]*)"\s*', flt)
            if not m:
                raise _ApiError(400, f'The fake understands only display_name="..." filters, got {flt!r}.')
            matches = [s for s in matches if s.display_name == m.group(1)]  # type: ignore[attr-defined]
        size = int((query.get("pageSize") or ["0"])[0]) or self.default_page_size
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        page = matches[start : start + size]
        out: dict[str, Any] = {"schedules": [json_format.MessageToDict(s) for s in page]}
        if start + size < len(matches):
            out["nextPageToken"] = str(start + size)
        return out

    def _schedule_call(self, method: str, name: str, verb: str | None) -> Any:
        if name not in self.schedules:
            raise _ApiError(404, f"Schedule {name} not found.")
        schedule: Any = self.schedules[name]
        active = aiplatform_v1.Schedule.State.ACTIVE.value
        paused = aiplatform_v1.Schedule.State.PAUSED.value
        if method == "GET" and verb is None:
            return schedule
        if method == "DELETE" and verb is None:
            del self.schedules[name]
            return {
                "name": f"{name}/operations/{next(self._ids)}",
                "done": True,
                "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
            }
        if method == "POST" and verb == "pause":
            if schedule.state != active:
                raise _ApiError(400, f"Schedule {name} is not active, so it cannot be paused.")
            schedule.state = paused
            return {}
        if method == "POST" and verb == "resume":
            if schedule.state != paused:
                raise _ApiError(400, f"Schedule {name} is not paused, so it cannot be resumed.")
            schedule.state = active
            return {}
        raise _ApiError(404, f"The fake has no {method} {name}:{verb}")

    # -- Models and endpoints ----------------------------------------------------------------

    def _get_model(self, location: str, parent: str, model_id: str, version: str | None) -> Message:
        versions = self._models.get((location, model_id))
        if not versions:
            raise _ApiError(404, f"Model {parent}/models/{model_id} not found.")
        wanted = version or "default"
        found = next((v for v in versions if v.version_id == wanted or wanted in v.aliases), None)
        if found is None:
            raise _ApiError(404, f"Model version {parent}/models/{model_id}@{wanted} not found.")
        model = _pb(aiplatform_v1.Model)
        json_format.ParseDict(
            {
                "name": f"{parent}/models/{model_id}",
                "displayName": found.display_name,
                "versionId": found.version_id,
                "versionAliases": found.aliases,
                "artifactUri": found.artifact_uri,
                "labels": found.labels,
            },
            model,
        )
        return model

    def _list_endpoints(self, location: str, query: dict[str, list[str]]) -> dict[str, Any]:
        endpoints = [e for (loc, _), e in self._endpoints.items() if loc == location]
        flt = (query.get("filter") or [""])[0]
        if flt:
            m = re.fullmatch(r'\s*display_name\s*=\s*"([^"]*)"\s*', flt)
            if not m:
                raise _ApiError(400, f'The fake understands only display_name="..." filters, got {flt!r}.')
            endpoints = [e for e in endpoints if e.display_name == m.group(1)]  # type: ignore[attr-defined]
        return {"endpoints": [json_format.MessageToDict(e) for e in endpoints]}

    def iter_requests(self, method: str, path_regex: str) -> Iterator[RecordedRequest]:
        pattern = re.compile(path_regex)
        return (r for r in list(self.requests) if r.method == method and pattern.search(r.path))


def _validate_cron(cron: str) -> None:
    """Vertex's cron: five fields, optionally prefixed with ``TZ=<IANA zone>`` or ``CRON_TZ=<zone>``."""
    parts = cron.split()
    if parts and (parts[0].startswith("TZ=") or parts[0].startswith("CRON_TZ=")):
        zone = parts.pop(0).split("=", 1)[1]
        if zone not in zoneinfo.available_timezones():
            raise _ApiError(400, f"Invalid time zone {zone!r} in cron {cron!r}.")
    if len(parts) != 5 or not all(_CRON_FIELD.match(p) for p in parts):
        raise _ApiError(400, f"Invalid cron expression {cron!r}.")


@pytest.fixture(scope="session", name="compiled_template")
def compiled_template_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline compiled once per test session (as `vxdeploy compile` does) to a temporary file."""
    from vxdeploy.pipelines.compile import compile_pipeline

    return compile_pipeline(tmp_path_factory.mktemp("compiled") / "optimize_and_deploy.yaml")


@pytest.fixture(name="vertex_pipelines")
def vertex_pipelines_fixture() -> Iterator[FakeVertexPipelines]:
    """A fresh fake per test."""
    with FakeVertexPipelines() as fake:
        yield fake
