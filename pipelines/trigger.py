"""Retraining-to-deploy trigger: an HTTP service that submits a vxdeploy run when a model version appears.

Deploy it on Cloud Run from the runner image; its default command is
``python -m vxdeploy.pipelines.trigger``.
It accepts, from callers that prove who they are (:mod:`vxdeploy.pipelines.trigger_auth`: a Google-signed
OIDC ID token of an allowed service account, as a Pub/Sub push subscription or an Eventarc trigger
sends it),

* a Pub/Sub push message whose data names a model: a registry URI
  (``projects/P/locations/L/models/M@alias``) as plain text, or JSON with a ``model`` field;
* the same message as an Eventarc CloudEvent (``google.cloud.pubsub.topic.v1.messagePublished``);
* a Model Registry change as an Eventarc Cloud Audit Log CloudEvent
  (``google.cloud.audit.log.v1.written`` for ``ModelService.UploadModel`` or
  ``ModelService.MergeVersionAliases``),

and submits the compiled pipeline through :func:`vxdeploy.pipelines.submit.submit_pipeline` with
``model.uri`` set to that version. The job id derives from the event id (or, for an event without
one, from its content), so a redelivered event finds the run it already started instead of
starting a second one. A message that can never name a model (a poison message) is acknowledged
with a logged reason, so Pub/Sub stops redelivering it; bad HTTP framing gets a 4xx without
holding a thread longer than the read timeout. Settings come from the environment
(:meth:`TriggerSettings.from_env`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import http
import ipaddress
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, BinaryIO, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from vxdeploy.components.common.config import load_config
from vxdeploy.components.common.errors import CloudOperationError, ConfigError, UserError, VxdeployError
from vxdeploy.components.common.registry import is_registry_uri, parse_registry_uri
from vxdeploy.pipelines.submit import (
    DEFAULT_LOCATION,
    BucketCheck,
    SubmittedRun,
    check_pipeline_root,
    submit_pipeline,
)
from vxdeploy.pipelines.trigger_auth import (
    AUTH_MODES,
    GOOGLE_CERTS_URL,
    AuthMode,
    CallerCheck,
    CallerRefused,
    CertificatesUnavailable,
    GoogleCertificates,
)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_AUDIT_LOG_TYPE = "google.cloud.audit.log.v1.written"
_PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
_MODEL_NAME = re.compile(r"projects/[^/@\s]+/locations/[^/@\s]+/models/[^/@\s]+(?:@[^/@\s]+)?")
_FULL_MODEL_NAME = re.compile(r"projects/[^/@\s]+/locations/[^/@\s]+/models/[^/@\s]+")
_MODEL_ID = re.compile(r"[^/@\s,]+")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")

#: Cloud Run's default number of concurrent requests per instance.
DEFAULT_CONCURRENCY = 80
#: Pub/Sub push bodies are small (a model name, or an audit-log entry of at most 256 KB, base64-encoded).
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_READ_TIMEOUT_S = 10.0


class BadEvent(UserError):
    """A request that can never name a model (a poison message): acknowledged, logged, never run."""


class EventIgnored(VxdeployError):
    """A well-formed event that asks for no run (answered 200, so Pub/Sub does not redeliver it)."""


class _Refused(VxdeployError):
    """A request refused before it is read as an event (bad framing): answered with ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class TriggerSettings:
    """Where and how the trigger submits runs, and whom it accepts events from.

    Attributes:
        project: Project to run in.
        location: Vertex AI region.
        pipeline_root: ``gs://`` root for the runs' artifacts.
        template_path: The compiled pipeline (local path in the image, or ``gs://``).
        config_path: Base run configuration YAML; the event sets its ``model.uri``.
        alias: Registry alias a run takes when the event names no version (default ``default``).
        service_account: Service account of the runs.
        network: Peered VPC network of the runs.
        api_endpoint: Vertex AI endpoint override.
        encryption_spec_key_name: Cloud KMS key (CMEK) of the runs.
        labels: Extra labels on each run.
        models: Models the trigger acts on, as full resource names
            (``projects/P/locations/L/models/M``); a bare id means that model in ``project`` and
            ``location``. Empty: any. Set it when the trigger hears audit logs: vxdeploy's own
            model gets aliases moved by each promotion.
        auth: ``oidc`` (verify each request's Google ID token), ``cloud-run-iam`` (as ``oidc``, and
            accept tokens whose signature Cloud Run removed after checking it), or ``none`` (no
            check; served on loopback only).
        audiences: Accepted token audiences (the Cloud Run service URL, or the push
            subscription's audience).
        invokers: Service-account e-mails allowed to call: the push subscription's, the Eventarc
            trigger's.
        certs_url: Google's token-signing certificates (a loopback issuer in tests).
        max_body_bytes: Larger bodies are refused with 413.
        read_timeout_s: How long a request may take to arrive; slower ones get 408.
        max_concurrency: Requests handled at once; more wait in the listen queue.
    """

    project: str
    location: str
    pipeline_root: str
    template_path: str
    config_path: str | None = None
    alias: str = "default"
    service_account: str | None = None
    network: str | None = None
    api_endpoint: str | None = None
    encryption_spec_key_name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    auth: AuthMode = "oidc"
    audiences: tuple[str, ...] = ()
    invokers: tuple[str, ...] = ()
    certs_url: str = GOOGLE_CERTS_URL
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ConfigError("VXDEPLOY_TRIGGER_AUTH", self.auth, f"use one of {', '.join(AUTH_MODES)}")
        if self.auth != "none":
            for name, values, fix in (
                ("VXDEPLOY_TRIGGER_AUDIENCE", self.audiences, "the Cloud Run service URL (https://…run.app)"),
                (
                    "VXDEPLOY_TRIGGER_INVOKERS",
                    self.invokers,
                    "the push subscription's service-account e-mail",
                ),
            ):
                if not values or not all(v.strip() for v in values):
                    raise ConfigError(
                        name, ",".join(values), f"set it to {fix} (comma-separated for several)"
                    )
        for name, number, low in (
            ("VXDEPLOY_TRIGGER_MAX_BODY_BYTES", self.max_body_bytes, 1024),
            ("VXDEPLOY_TRIGGER_READ_TIMEOUT_S", self.read_timeout_s, 0.01),
            ("VXDEPLOY_TRIGGER_CONCURRENCY", self.max_concurrency, 1),
        ):
            if not number >= low:  # also refuses NaN
                raise ConfigError(name, number, f"use a number of at least {low}")
        object.__setattr__(self, "models", tuple(self._full_model_name(m) for m in self.models))

    def _full_model_name(self, entry: str) -> str:
        entry = entry.strip()
        if _FULL_MODEL_NAME.fullmatch(entry):
            return entry
        if _MODEL_ID.fullmatch(entry) and "@" not in entry:
            return f"projects/{self.project}/locations/{self.location}/models/{entry}"
        raise ConfigError(
            "VXDEPLOY_MODELS",
            entry,
            "list models as projects/P/locations/L/models/M (no @version), or as a bare model id "
            "in the trigger's own project and location",
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TriggerSettings:
        """Read ``VXDEPLOY_*`` variables (``GOOGLE_CLOUD_PROJECT`` stands in for the project).

        Required: ``VXDEPLOY_PROJECT`` (or ``GOOGLE_CLOUD_PROJECT``), ``VXDEPLOY_PIPELINE_ROOT``,
        ``VXDEPLOY_TEMPLATE``, and unless ``VXDEPLOY_TRIGGER_AUTH=none``,
        ``VXDEPLOY_TRIGGER_AUDIENCE`` and ``VXDEPLOY_TRIGGER_INVOKERS`` (comma-separated).
        Optional: ``VXDEPLOY_LOCATION``, ``VXDEPLOY_CONFIG``, ``VXDEPLOY_MODEL_ALIAS``,
        ``VXDEPLOY_SERVICE_ACCOUNT``, ``VXDEPLOY_NETWORK``, ``VXDEPLOY_API_ENDPOINT``,
        ``VXDEPLOY_KMS_KEY``, ``VXDEPLOY_LABELS`` (``k=v,k=v``), ``VXDEPLOY_MODELS``
        (comma-separated), ``VXDEPLOY_TRIGGER_AUTH``, ``VXDEPLOY_TRIGGER_CERTS_URL``,
        ``VXDEPLOY_TRIGGER_MAX_BODY_BYTES``, ``VXDEPLOY_TRIGGER_READ_TIMEOUT_S``,
        ``VXDEPLOY_TRIGGER_CONCURRENCY``.

        Raises:
            ConfigError: a required variable is missing, or a value is not one the trigger takes.
        """
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(name) or None

        def listed(name: str) -> tuple[str, ...]:
            return tuple(v.strip() for v in (get(name) or "").split(",") if v.strip())

        def number(name: str, default: float, kind: Callable[[str], float]) -> Any:
            text = get(name)
            if text is None:
                return default
            try:
                return kind(text)
            except ValueError:
                raise ConfigError(name, text, f"use a {kind.__name__} (default {default})") from None

        project = get("VXDEPLOY_PROJECT") or get("GOOGLE_CLOUD_PROJECT")
        for name, value in (
            ("VXDEPLOY_PROJECT", project),
            ("VXDEPLOY_PIPELINE_ROOT", get("VXDEPLOY_PIPELINE_ROOT")),
            ("VXDEPLOY_TEMPLATE", get("VXDEPLOY_TEMPLATE")),
        ):
            if not value:
                raise ConfigError(name, value, "set it in the trigger service's environment")
        labels = dict(pair.split("=", 1) for pair in (get("VXDEPLOY_LABELS") or "").split(",") if "=" in pair)
        return cls(
            project=str(project),
            location=get("VXDEPLOY_LOCATION") or DEFAULT_LOCATION,
            pipeline_root=str(get("VXDEPLOY_PIPELINE_ROOT")),
            template_path=str(get("VXDEPLOY_TEMPLATE")),
            config_path=get("VXDEPLOY_CONFIG"),
            alias=get("VXDEPLOY_MODEL_ALIAS") or "default",
            service_account=get("VXDEPLOY_SERVICE_ACCOUNT"),
            network=get("VXDEPLOY_NETWORK"),
            api_endpoint=get("VXDEPLOY_API_ENDPOINT"),
            encryption_spec_key_name=get("VXDEPLOY_KMS_KEY"),
            labels=labels,
            models=listed("VXDEPLOY_MODELS"),
            auth=cast(AuthMode, get("VXDEPLOY_TRIGGER_AUTH") or "oidc"),
            audiences=listed("VXDEPLOY_TRIGGER_AUDIENCE"),
            invokers=listed("VXDEPLOY_TRIGGER_INVOKERS"),
            certs_url=get("VXDEPLOY_TRIGGER_CERTS_URL") or GOOGLE_CERTS_URL,
            max_body_bytes=number("VXDEPLOY_TRIGGER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int),
            read_timeout_s=number("VXDEPLOY_TRIGGER_READ_TIMEOUT_S", DEFAULT_READ_TIMEOUT_S, float),
            max_concurrency=number("VXDEPLOY_TRIGGER_CONCURRENCY", DEFAULT_CONCURRENCY, int),
        )

    def caller_check(self) -> CallerCheck:
        """The check of each request's ``Authorization`` header these settings ask for."""
        return CallerCheck(
            self.auth, self.audiences, self.invokers, certificates=GoogleCertificates(url=self.certs_url)
        )


@dataclass(frozen=True)
class ModelEvent:
    """What an event asks for: a run on ``model_uri``.

    ``event_id`` identifies the delivery: the Pub/Sub message id or CloudEvent id, or for an event
    without one, ``content-`` and a digest of what it carries (so a resend finds its run, and two
    different messages do not share one).
    """

    model_uri: str
    event_id: str
    kind: str


# -- reading events --------------------------------------------------------------------------


def _kind_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadEvent(f"{what} is {_kind_of(value)}, not a JSON object")
    return value


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadEvent(f"{what} is {_kind_of(value)}, not a string")
    return value


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadEvent(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise BadEvent(f"{what} nests too deeply to read") from None
    except ValueError as exc:
        raise BadEvent(f"{what} is not JSON ({exc})") from None


def _content_id(*parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return "content-" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _model_from_text(text: str, alias: str) -> str:
    """A registry URI from a message's text: a bare resource name, or JSON naming one."""
    text = text.strip()
    candidate = text
    if text.startswith("{"):
        data = _object(_json(text.encode(), "the message data"), "the message data")
        keys = ("model", "model_uri", "modelUri", "name", "resourceName")
        candidate = next((_string(data[k], f"the message data's {k!r}") for k in keys if data.get(k)), "")
    if not is_registry_uri(candidate):
        raise BadEvent(
            f"the message names no Model Registry model ({candidate[:200]!r}); send "
            '\'projects/P/locations/L/models/M@alias\' or {"model": "projects/..."}'
        )
    return candidate if "@" in candidate else f"{candidate}@{alias}"


def _from_pubsub(envelope: Mapping[str, Any], alias: str, what: str) -> tuple[str, str]:
    """The model URI and the event id (message id, or a digest of the content) of a push envelope."""
    message = _object(envelope.get("message"), f"{what}'s 'message'")
    attributes = _object(message.get("attributes") or {}, f"{what}'s 'message.attributes'")
    data = _string(message.get("data"), f"{what}'s 'message.data'")
    message_id = message.get("messageId") or message.get("message_id")
    event_id = str(message_id) if isinstance(message_id, str | int) else _content_id(data, attributes)
    if attributes.get("model"):
        return _model_from_text(_string(attributes["model"], "the attribute 'model'"), alias), event_id
    try:
        text = base64.b64decode(data, validate=True).decode()
    except (binascii.Error, ValueError):
        raise BadEvent(f"{what}'s 'message.data' is not base64-encoded UTF-8 text") from None
    return _model_from_text(text, alias), event_id


def _from_audit_log(data: Mapping[str, Any], alias: str) -> str:
    payload = _object(data.get("protoPayload") or {}, "the audit log entry's 'protoPayload'")
    method = _string(payload.get("methodName"), "'protoPayload.methodName'")
    request = _object(payload.get("request") or {}, "'protoPayload.request'")
    if method.endswith("ModelService.MergeVersionAliases"):
        aliases = request.get("versionAliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise BadEvent(
                f"'protoPayload.request.versionAliases' is {_kind_of(aliases)}, not a list of strings"
            )
        added = [a for a in aliases if not a.startswith("-")]
        if alias not in added:
            raise EventIgnored(f"aliases {added} set, not {alias!r}")
        name = _string(request.get("name") or payload.get("resourceName"), "the audited model name")
    elif method.endswith("ModelService.UploadModel"):
        # The new version's id is only in the operation's result; the run takes what the alias names.
        name = _string(request.get("parentModel") or payload.get("resourceName"), "the audited model name")
        name = name.split("@", 1)[0]
    else:
        raise EventIgnored(f"method {method or '(none)'} does not add or move a model version")
    found = _MODEL_NAME.search(name)
    if not found:
        raise BadEvent(f"the audit log entry of {method} names no model ({name[:200]!r})")
    return _model_from_text(found.group(0), alias)


def parse_event(body: bytes, headers: Mapping[str, str], alias: str = "default") -> ModelEvent:
    """Read a Pub/Sub push message or a CloudEvent (binary or structured mode).

    Args:
        body: The request body.
        headers: Request headers, names in any case.
        alias: Registry alias for events that name a model without a version.

    Raises:
        BadEvent: the body is not one of the accepted shapes or names no model.
        EventIgnored: a well-formed event that should not start a run.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    if "ce-type" in lower:
        ce_type, ce_id, ce_source = lower["ce-type"], lower.get("ce-id", ""), lower.get("ce-source", "")
        data: Any = _json(body, "the CloudEvent data")
    elif lower.get("content-type", "").startswith("application/cloudevents+json"):
        event = _object(_json(body, "the CloudEvent"), "the CloudEvent")
        ce_type = _string(event.get("type"), "the CloudEvent's 'type'")
        ce_id = _string(event.get("id"), "the CloudEvent's 'id'")
        ce_source = _string(event.get("source"), "the CloudEvent's 'source'")
        data = event.get("data") or {}
    else:
        envelope = _object(_json(body, "the Pub/Sub push body"), "the Pub/Sub push body")
        model_uri, event_id = _from_pubsub(envelope, alias, "the Pub/Sub push body")
        return ModelEvent(model_uri, event_id, "pubsub")
    if ce_type == _PUBSUB_TYPE:
        model_uri, message_id = _from_pubsub(
            _object(data, "the CloudEvent's data"), alias, "the CloudEvent's data"
        )
        return ModelEvent(model_uri, ce_id or message_id, "cloudevent-pubsub")
    if ce_type == _AUDIT_LOG_TYPE:
        model_uri = _from_audit_log(_object(data, "the CloudEvent's data"), alias)
        return ModelEvent(model_uri, ce_id or _content_id(ce_type, ce_source, data), "cloudevent-audit-log")
    raise EventIgnored(f"CloudEvent type {ce_type!r} is not one the trigger handles")


def job_id_for_event(event: ModelEvent) -> str:
    """A pipeline job id fixed by the event (a redelivery finds the same job), readable in the console."""
    model_id = parse_registry_uri(event.model_uri).model_id.lower()
    readable = re.sub(r"[^a-z0-9-]+", "-", model_id).strip("-")[:60] or "model"
    digest = hashlib.sha256(f"{event.event_id}|{event.model_uri}".encode()).hexdigest()[:16]
    return f"vxdeploy-{readable}-{digest}"


# -- handling --------------------------------------------------------------------------------


SubmitFunction = Callable[..., SubmittedRun]


class OncePerJob:
    """Concurrent deliveries of one event submit once: later ones wait for the first and share its run.

    Pub/Sub redelivers an event whose acknowledgement is late, so copies can arrive while the first
    is still being submitted. Vertex AI refuses a second job with the same id either way; this keeps
    the copies from all calling it. The last ``remember`` runs are kept, so a redelivery soon after
    is answered without a call.
    """

    def __init__(self, remember: int = 4096, wait_s: float = 300.0) -> None:
        self._remember = remember
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}
        self._done: OrderedDict[str, SubmittedRun] = OrderedDict()

    def submit(self, job_id: str, submit: Callable[[], SubmittedRun]) -> SubmittedRun:
        """``submit()`` once per ``job_id``; the run it returned (marked reused) for every later call."""
        while True:
            with self._lock:
                if job_id in self._done:
                    return dataclasses.replace(self._done[job_id], reused=True)
                running = self._running.get(job_id)
                if running is None:
                    self._running[job_id] = threading.Event()
            if running is None:
                break
            # Another thread submits this job; if it fails, this one tries in turn.
            running.wait(self._wait_s)
        try:
            run = submit()
            with self._lock:
                self._done[job_id] = run
                while len(self._done) > self._remember:
                    self._done.popitem(last=False)
            return run
        finally:
            with self._lock:
                self._running.pop(job_id).set()


def handle_event(
    event: ModelEvent,
    settings: TriggerSettings,
    *,
    submit: SubmitFunction = submit_pipeline,
    check_bucket: BucketCheck | None = check_pipeline_root,
    once: OncePerJob | None = None,
) -> SubmittedRun:
    """Submit one run for ``event``: the base config with ``model.uri`` set to the event's version.

    Raises:
        EventIgnored: the event's model is not one of ``settings.models``.
    """
    ref = parse_registry_uri(event.model_uri)
    if settings.models and ref.model_name not in settings.models:
        raise EventIgnored(
            f"model {ref.model_name} is not one the trigger watches ({', '.join(settings.models)})"
        )
    config = load_config(settings.config_path, {"model.uri": event.model_uri})
    job_id = job_id_for_event(event)

    def submit_once() -> SubmittedRun:
        return submit(
            config,
            project=settings.project,
            location=settings.location,
            pipeline_root=settings.pipeline_root,
            template_path=settings.template_path,
            service_account=settings.service_account,
            network=settings.network,
            labels=settings.labels,
            encryption_spec_key_name=settings.encryption_spec_key_name,
            api_endpoint=settings.api_endpoint,
            job_id=job_id,
            check_bucket=check_bucket,
            reuse_existing_job=True,
            report_progress=_log,
        )

    return submit_once() if once is None else once.submit(job_id, submit_once)


def _log(message: str, **fields: Any) -> None:
    # One JSON object per line is what Cloud Logging parses into a structured entry.
    print(
        json.dumps({"severity": fields.pop("severity", "INFO"), "message": message, **fields}, default=str),
        file=sys.stderr,
        flush=True,
    )


def _declared_length(environ: Mapping[str, Any], limit: int) -> int:
    if environ.get("HTTP_TRANSFER_ENCODING"):
        raise _Refused(411, "a chunked (Transfer-Encoding) body is not accepted: send Content-Length")
    raw = str(environ.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        raise _Refused(411, "a POST needs a Content-Length header")
    if not _CONTENT_LENGTH.fullmatch(raw):
        raise _Refused(400, f"Content-Length {raw[:40]!r} is not a byte count")
    length = int(raw)
    if length > limit:
        raise _Refused(413, f"the body ({length} bytes) is over the trigger's limit of {limit} bytes")
    return length


def _read_body(stream: BinaryIO, length: int, timeout_s: float) -> bytes:
    """Exactly ``length`` bytes, within ``timeout_s`` overall (the socket's own timeout bounds each read)."""
    deadline = time.monotonic() + timeout_s
    read = getattr(stream, "read1", stream.read)
    chunks: list[bytes] = []
    received = 0
    while received < length:
        try:
            chunk = read(min(length - received, 1 << 16))
        except TimeoutError:
            chunk = None
        if chunk is None or (time.monotonic() > deadline and received + len(chunk) < length):
            raise _Refused(
                408, f"the body did not arrive within {timeout_s:g} s ({received} of {length} bytes)"
            )
        if not chunk:
            raise _Refused(
                400, f"the body ended after {received} of the {length} bytes Content-Length announced"
            )
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def make_app(
    settings: TriggerSettings,
    *,
    submit: SubmitFunction = submit_pipeline,
    check_bucket: BucketCheck | None = check_pipeline_root,
) -> WsgiApp:
    """The WSGI application: ``POST`` an event to any path; ``GET /healthz`` answers ``ok``.

    In order: bad framing gets 4xx (411 no length, 400 bad length or short body, 413 over
    ``max_body_bytes``, 408 too slow); a caller without a valid Google ID token gets 401, one not in
    ``invokers`` 403; a poison message (not JSON, the wrong shape, no model) 200 ``rejected`` with
    the reason, so Pub/Sub stops redelivering it; an event that asks for no run 200 ``ignored``;
    a submitted (or already submitted) event 200 with the run. 500 when the trigger's settings are
    wrong and 503 when Vertex AI, Cloud Storage or Google's certificates failed (Pub/Sub
    redelivers on 5xx).
    """
    caller_check = settings.caller_check()
    once = OncePerJob()

    def handle(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "GET" and environ.get("PATH_INFO") in ("/healthz", "/"):
            return _respond(start_response, 200, {"status": "ok"})
        if method != "POST":
            return _respond(start_response, 405, {"error": "POST an event"})
        try:
            length = _declared_length(environ, settings.max_body_bytes)
            body = _read_body(environ["wsgi.input"], length, settings.read_timeout_s)
        except _Refused as exc:
            _log(f"refused request: {exc.reason}", severity="WARNING", status=exc.status)
            return _respond(start_response, exc.status, {"error": exc.reason})
        try:
            claims = caller_check.verify(environ.get("HTTP_AUTHORIZATION"))
        except CallerRefused as exc:
            _log(f"refused caller: {exc}", severity="WARNING", status=exc.status)
            challenge = [("WWW-Authenticate", 'Bearer error="invalid_token"')] if exc.status == 401 else []
            return _respond(start_response, exc.status, {"error": exc.reason}, challenge)
        except CertificatesUnavailable as exc:
            _log(f"cannot check the caller: {exc}", severity="ERROR")
            return _respond(start_response, 503, {"error": str(exc)})
        caller = claims.get("email")
        headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        try:
            event = parse_event(body, headers, settings.alias)
        except EventIgnored as exc:
            _log(f"ignored: {exc}", caller=caller)
            return _respond(start_response, 200, {"status": "ignored", "reason": str(exc)})
        except BadEvent as exc:
            return _reject(start_response, str(exc), caller)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            # Whatever in the body trips the reader, redelivering it would trip it again.
            return _reject(start_response, f"unreadable event ({type(exc).__name__}: {exc})", caller)
        try:
            run = handle_event(event, settings, submit=submit, check_bucket=check_bucket, once=once)
        except EventIgnored as exc:
            _log(f"ignored: {exc}", caller=caller)
            return _respond(start_response, 200, {"status": "ignored", "reason": str(exc)})
        except UserError as exc:
            _log(f"cannot submit: {exc}", severity="ERROR", caller=caller)
            return _respond(start_response, 500, {"error": str(exc)})
        except CloudOperationError as exc:
            _log(f"submission failed: {exc}", severity="ERROR", caller=caller)
            return _respond(start_response, 503, {"error": str(exc)})
        status = "already-submitted" if run.reused else "submitted"
        _log(
            f"{status} {run.resource_name} for {event.model_uri}",
            pipeline_job=run.resource_name,
            caller=caller,
        )
        return _respond(
            start_response,
            200,
            {
                "status": status,
                "model_uri": event.model_uri,
                "event_id": event.event_id,
                "pipeline_job": run.resource_name,
                "console_url": run.console_url,
            },
        )

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return handle(environ, start_response)
        except Exception as exc:  # a defect in the trigger: log it whole; 500 makes Pub/Sub retry
            _log(
                f"internal error: {type(exc).__name__}: {exc}",
                severity="ERROR",
                traceback=traceback.format_exc(),
            )
            return _respond(
                start_response, 500, {"error": f"internal error ({type(exc).__name__}); see the log"}
            )

    return app


def _reject(start_response: StartResponse, reason: str, caller: Any) -> list[bytes]:
    _log(f"rejected (acknowledged, not retried): {reason}", severity="WARNING", caller=caller)
    return _respond(start_response, 200, {"status": "rejected", "reason": reason})


def _respond(
    start_response: StartResponse,
    code: int,
    payload: Mapping[str, Any],
    extra_headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(payload).encode()
    start_response(
        f"{code} {http.HTTPStatus(code).phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(extra_headers or [])],
    )
    return [data]


# -- serving ---------------------------------------------------------------------------------


class _TriggerRequestHandler(WSGIRequestHandler):
    """wsgiref's handler with a read timeout, one Content-Length, and structured logs."""

    server: TriggerServer
    # A request line too broken to name its version still gets a status line in the answer.
    default_request_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        # Bounds every read of the request line, the headers and the body.
        self.connection.settimeout(self.server.read_timeout_s)

    def handle(self) -> None:
        self.requestline, self.request_version, self.command = "", self.default_request_version, ""
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                return
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.parse_request():
                return
        except TimeoutError:
            self.send_error(408, f"the request did not arrive within {self.server.read_timeout_s:g} s")
            return
        if len(set(self.headers.get_all("Content-Length") or [])) > 1:
            self.send_error(400, "conflicting Content-Length headers")
            return
        handler = ServerHandler(
            self.rfile,
            cast(BinaryIO, self.wfile),
            self.get_stderr(),
            self.get_environ(),
            multithread=True,
        )
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref logs through it
        handler.run(self.server.get_app())  # type: ignore[arg-type]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the app logs each event as structured JSON

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        _log(f"http: {format % args}", severity="WARNING", client=self.client_address[0])


class TriggerServer(ThreadingMixIn, WSGIServer):
    """A WSGI server with at most ``max_concurrency`` request threads.

    Connections beyond that wait in the listen queue (``request_queue_size``) until a thread is
    free, instead of each getting a thread of its own. After answering, it reads what the client
    still sends (briefly) before closing, so the client receives the answer rather than a reset.
    """

    daemon_threads = True
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], app: WsgiApp, *, max_concurrency: int, read_timeout_s: float
    ):
        self.read_timeout_s = read_timeout_s
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)
        super().__init__(address, _TriggerRequestHandler)
        self.set_app(app)  # type: ignore[arg-type]

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request: Any) -> None:
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(0.05)
            deadline, drained = time.monotonic() + 0.2, 0
            while drained < (1 << 20) and time.monotonic() < deadline:
                chunk = request.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        kind, error, _ = sys.exc_info()
        _log(
            f"connection from {client_address[0]} failed: {kind.__name__ if kind else ''}: {error}",
            severity="WARNING",
        )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def make_server(
    settings: TriggerSettings,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    submit: SubmitFunction = submit_pipeline,
    check_bucket: BucketCheck | None = check_pipeline_root,
) -> TriggerServer:
    """A bound (not yet serving) server for :func:`make_app`.

    Raises:
        ConfigError: ``auth`` is ``none`` and ``host`` is not a loopback address.
    """
    if settings.auth == "none" and not _is_loopback(host):
        raise ConfigError(
            "VXDEPLOY_TRIGGER_AUTH", "none", f"only for a trigger on loopback, not on {host}: use oidc"
        )
    return TriggerServer(
        (host, port),
        make_app(settings, submit=submit, check_bucket=check_bucket),
        max_concurrency=settings.max_concurrency,
        read_timeout_s=settings.read_timeout_s,
    )


def serve(
    settings: TriggerSettings,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    submit: SubmitFunction = submit_pipeline,
    check_bucket: BucketCheck | None = check_pipeline_root,
) -> TriggerServer:
    """A started server for :func:`make_app` in a background thread (``server.shutdown()`` stops it)."""
    server = make_server(settings, host, port, submit=submit, check_bucket=check_bucket)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="vxdeploy-trigger", daemon=True
    ).start()
    return server


def listen_address(env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Where ``main`` listens: ``VXDEPLOY_TRIGGER_HOST`` (default loopback) and ``PORT`` (default 8080).

    Cloud Run routes requests to ``$PORT`` on the container's external interface, so the runner
    image sets ``VXDEPLOY_TRIGGER_HOST=0.0.0.0``; outside a container the trigger stays on loopback.

    Raises:
        ConfigError: ``PORT`` is not a port number.
    """
    env = os.environ if env is None else env
    host = env.get("VXDEPLOY_TRIGGER_HOST") or "127.0.0.1"
    text = env.get("PORT") or "8080"
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError("PORT", text, "use a port number from 1 to 65535")
    return host, int(text)


def main() -> int:
    """``python -m vxdeploy.pipelines.trigger``: serve until stopped; exit 2 when the settings are wrong."""
    try:
        settings = TriggerSettings.from_env()
        host, port = listen_address()
        server = make_server(settings, host, port)
    except (VxdeployError, OSError) as exc:
        _log(f"vxdeploy trigger cannot start: {exc}", severity="ERROR")
        return 2
    _log(
        f"vxdeploy trigger listening on {host}:{port} for {settings.project}/{settings.location} "
        f"(caller check: {settings.auth})"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
