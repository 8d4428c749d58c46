"""Retraining-to-deploy trigger: an HTTP service that submits a vxdeploy run when a model version appears.

Deploy it on Cloud Run (or as a Cloud Function) from the runner image, whose default command is
``python -m pipelines.trigger``. It accepts

* a Pub/Sub push message whose data names a model: a registry URI
  (``projects/P/locations/L/models/M@alias``) as plain text, or JSON with a ``model`` field;
* the same message as an Eventarc CloudEvent (``google.cloud.pubsub.topic.v1.messagePublished``);
* a Model Registry change as an Eventarc Cloud Audit Log CloudEvent
  (``google.cloud.audit.log.v1.written`` for ``ModelService.UploadModel`` or
  ``ModelService.MergeVersionAliases``),

and submits the compiled pipeline through :func:`pipelines.submit.submit_pipeline` with
``model.uri`` set to that version. The job id derives from the event id, so a redelivered event
finds the run it already started instead of starting a second one. Settings come from the
environment (:meth:`TriggerSettings.from_env`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from components.common.config import load_config
from components.common.errors import CloudOperationError, ConfigError, UserError, VxdeployError
from components.common.registry import is_registry_uri, parse_registry_uri
from pipelines.submit import DEFAULT_LOCATION, BucketCheck, SubmittedRun, check_pipeline_root, submit_pipeline

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_AUDIT_LOG_TYPE = "google.cloud.audit.log.v1.written"
_PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
_MODEL_NAME = re.compile(r"projects/[^/@\s]+/locations/[^/@\s]+/models/[^/@\s]+(?:@[^/@\s]+)?")


class BadEvent(UserError):
    """The request is not an event the trigger understands (answered 400)."""


class EventIgnored(VxdeployError):
    """A well-formed event that asks for no run (answered 200, so Pub/Sub does not redeliver it)."""


@dataclass(frozen=True)
class TriggerSettings:
    """Where and how the trigger submits runs.

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
        models: Model ids (or resource names) the trigger acts on; empty: any. Set it when the
            trigger hears audit logs: vxdeploy's own model gets aliases moved by each promotion.
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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TriggerSettings:
        """Read ``VXDEPLOY_*`` variables (``GOOGLE_CLOUD_PROJECT`` stands in for the project).

        Required: ``VXDEPLOY_PROJECT`` (or ``GOOGLE_CLOUD_PROJECT``), ``VXDEPLOY_PIPELINE_ROOT``,
        ``VXDEPLOY_TEMPLATE``. Optional: ``VXDEPLOY_LOCATION``, ``VXDEPLOY_CONFIG``,
        ``VXDEPLOY_MODEL_ALIAS``, ``VXDEPLOY_SERVICE_ACCOUNT``, ``VXDEPLOY_NETWORK``,
        ``VXDEPLOY_API_ENDPOINT``, ``VXDEPLOY_KMS_KEY``, ``VXDEPLOY_LABELS`` (``k=v,k=v``),
        ``VXDEPLOY_MODELS`` (model ids, comma-separated).

        Raises:
            ConfigError: a required variable is missing.
        """
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(name) or None

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
            models=tuple(m.strip() for m in (get("VXDEPLOY_MODELS") or "").split(",") if m.strip()),
        )


@dataclass(frozen=True)
class ModelEvent:
    """What an event asks for: a run on ``model_uri``; ``event_id`` identifies the delivery."""

    model_uri: str
    event_id: str
    kind: str


# -- reading events --------------------------------------------------------------------------


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise BadEvent(f"{what} is not JSON") from None


def _model_from_text(text: str, alias: str) -> str:
    """A registry URI from a message's text: a bare resource name, or JSON naming one."""
    text = text.strip()
    candidate = text
    if text.startswith("{"):
        data = _json(text.encode(), "the message data")
        candidate = next(
            (str(data[k]) for k in ("model", "model_uri", "modelUri", "name", "resourceName") if data.get(k)),
            "",
        )
    if not is_registry_uri(candidate):
        raise BadEvent(
            f"the message names no Model Registry model ({candidate[:200]!r}); send "
            '\'projects/P/locations/L/models/M@alias\' or {"model": "projects/..."}'
        )
    return candidate if "@" in candidate else f"{candidate}@{alias}"


def _from_pubsub(envelope: Mapping[str, Any], alias: str) -> tuple[str, str]:
    message = envelope.get("message")
    if not isinstance(message, Mapping):
        raise BadEvent("a Pub/Sub push body needs a 'message' object")
    attributes = message.get("attributes") or {}
    event_id = str(message.get("messageId") or message.get("message_id") or "")
    if attributes.get("model"):
        return _model_from_text(str(attributes["model"]), alias), event_id
    try:
        text = base64.b64decode(str(message.get("data") or ""), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise BadEvent("the Pub/Sub message's data is not base64-encoded text") from None
    return _model_from_text(text, alias), event_id


def _from_audit_log(data: Mapping[str, Any], alias: str) -> str:
    payload = data.get("protoPayload") or {}
    method = str(payload.get("methodName") or "")
    request = payload.get("request") or {}
    if method.endswith("ModelService.MergeVersionAliases"):
        added = [a for a in request.get("versionAliases", []) if not str(a).startswith("-")]
        if alias not in added:
            raise EventIgnored(f"aliases {added} set, not {alias!r}")
        name = str(request.get("name") or payload.get("resourceName") or "")
    elif method.endswith("ModelService.UploadModel"):
        # The new version's id is only in the operation's result; the run takes what the alias names.
        name = str(request.get("parentModel") or payload.get("resourceName") or "")
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
        ce_type, ce_id, data = lower["ce-type"], lower.get("ce-id", ""), _json(body, "the CloudEvent data")
    elif lower.get("content-type", "").startswith("application/cloudevents+json"):
        event = _json(body, "the CloudEvent")
        ce_type, ce_id, data = str(event.get("type", "")), str(event.get("id", "")), event.get("data") or {}
    else:
        model_uri, event_id = _from_pubsub(_json(body, "the Pub/Sub push body"), alias)
        return ModelEvent(model_uri, event_id, "pubsub")
    if ce_type == _PUBSUB_TYPE:
        model_uri, _ = _from_pubsub(data, alias)
        return ModelEvent(model_uri, ce_id, "cloudevent-pubsub")
    if ce_type == _AUDIT_LOG_TYPE:
        return ModelEvent(_from_audit_log(data, alias), ce_id, "cloudevent-audit-log")
    raise EventIgnored(f"CloudEvent type {ce_type!r} is not one the trigger handles")


def job_id_for_event(event: ModelEvent) -> str:
    """A pipeline job id fixed by the event (a redelivery finds the same job), readable in the console."""
    model_id = parse_registry_uri(event.model_uri).model_id.lower()
    readable = re.sub(r"[^a-z0-9-]+", "-", model_id).strip("-")[:60] or "model"
    digest = hashlib.sha256(f"{event.event_id}|{event.model_uri}".encode()).hexdigest()[:16]
    return f"vxdeploy-{readable}-{digest}"


# -- handling --------------------------------------------------------------------------------


SubmitFunction = Callable[..., SubmittedRun]


def handle_event(
    event: ModelEvent,
    settings: TriggerSettings,
    *,
    submit: SubmitFunction = submit_pipeline,
    check_bucket: BucketCheck | None = check_pipeline_root,
) -> SubmittedRun:
    """Submit one run for ``event``: the base config with ``model.uri`` set to the event's version.

    Raises:
        EventIgnored: the event's model is not one of ``settings.models``.
    """
    ref = parse_registry_uri(event.model_uri)
    if settings.models and not {ref.model_id, ref.model_name} & set(settings.models):
        raise EventIgnored(
            f"model {ref.model_id} is not one the trigger watches ({', '.join(settings.models)})"
        )
    config = load_config(settings.config_path, {"model.uri": event.model_uri})
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
        job_id=job_id_for_event(event),
        check_bucket=check_bucket,
        reuse_existing_job=True,
        report_progress=_log,
    )


def _log(message: str, **fields: Any) -> None:
    # One JSON object per line is what Cloud Logging parses into a structured entry.
    print(
        json.dumps({"severity": fields.pop("severity", "INFO"), "message": message, **fields}),
        file=sys.stderr,
    )


def make_app(
    settings: TriggerSettings,
    *,
    submit: SubmitFunction = submit_pipeline,
    check_bucket: BucketCheck | None = check_pipeline_root,
) -> WsgiApp:
    """The WSGI application: ``POST`` an event to any path; ``GET /healthz`` answers ``ok``.

    Answers 200 with the run for a submitted (or already submitted) event, 200 ``ignored`` for
    an event that asks for no run, 400 for a malformed one, 500 when the trigger's settings are
    wrong and 503 when Vertex AI or Cloud Storage failed (Pub/Sub redelivers on 5xx).
    """

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "GET" and environ.get("PATH_INFO") in ("/healthz", "/"):
            return _respond(start_response, 200, {"status": "ok"})
        if method != "POST":
            return _respond(start_response, 405, {"error": "POST an event"})
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        try:
            event = parse_event(body, headers, settings.alias)
            run = handle_event(event, settings, submit=submit, check_bucket=check_bucket)
        except EventIgnored as exc:
            _log(f"ignored: {exc}")
            return _respond(start_response, 200, {"status": "ignored", "reason": str(exc)})
        except BadEvent as exc:
            _log(f"bad event: {exc}", severity="WARNING")
            return _respond(start_response, 400, {"error": str(exc)})
        except UserError as exc:
            _log(f"cannot submit: {exc}", severity="ERROR")
            return _respond(start_response, 500, {"error": str(exc)})
        except CloudOperationError as exc:
            _log(f"submission failed: {exc}", severity="ERROR")
            return _respond(start_response, 503, {"error": str(exc)})
        status = "already-submitted" if run.reused else "submitted"
        _log(f"{status} {run.resource_name} for {event.model_uri}", pipeline_job=run.resource_name)
        return _respond(
            start_response,
            200,
            {
                "status": status,
                "model_uri": event.model_uri,
                "pipeline_job": run.resource_name,
                "console_url": run.console_url,
            },
        )

    return app


def _respond(start_response: StartResponse, code: int, payload: Mapping[str, Any]) -> list[bytes]:
    reasons = {
        200: "OK",
        400: "Bad Request",
        405: "Method Not Allowed",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    data = json.dumps(payload).encode()
    start_response(
        f"{code} {reasons[code]}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the app logs each event as structured JSON


def serve(
    settings: TriggerSettings,
    host: str = "0.0.0.0",  # noqa: S104  # Cloud Run routes to the container's port on all interfaces
    port: int = 8080,
    *,
    submit: SubmitFunction = submit_pipeline,
    check_bucket: BucketCheck | None = check_pipeline_root,
) -> WSGIServer:
    """A started threaded HTTP server for :func:`make_app` (``server.shutdown()`` stops it)."""
    server = make_server(
        host,
        port,
        make_app(settings, submit=submit, check_bucket=check_bucket),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="vxdeploy-trigger", daemon=True).start()
    return server


def main() -> int:
    """``python -m pipelines.trigger``: serve on ``$PORT`` (default 8080) until stopped."""
    settings = TriggerSettings.from_env()
    port = int(os.environ.get("PORT", "8080"))
    server = make_server(
        "0.0.0.0",  # noqa: S104
        port,
        make_app(settings),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    _log(f"vxdeploy trigger listening on :{port} for {settings.project}/{settings.location}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
