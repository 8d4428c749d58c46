"""A loopback fake of the Vertex AI REST API: models, endpoints, operations and predictions.

It speaks the wire protocol the ``google.cloud.aiplatform_v1`` (and ``v1beta1``) REST clients
use: JSON bodies in the protobuf JSON mapping, ``$alt=json;enum-encoding=int``, long-running
operations polled at ``/ui/...`` or ``/v1/...``, errors as ``{"error": {...}}`` with the HTTP
status the real service sends. Request bodies are parsed strictly into the real protobuf
types, so a field the real API does not know is a 400 here too. State is kept in memory and
checked the way the service checks it (a traffic split must sum to 100, an unknown deployed
model is a 404, an alias lives on one version of a model, ...).

Fault injection (:class:`Faults`): an operation that fails, a 503 before a call is served, an
operation that never finishes, a connection dropped without an answer; and (:meth:`FakeVertex.inject`)
any HTTP status n times, a burst of 503s for a while, an answer lost after the call was served,
or the caller "killed" after a call.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.cloud import aiplatform_v1 as v1
from google.longrunning import operations_pb2
from google.protobuf import json_format
from google.rpc import status_pb2

from tests.fakes.loopback import LoopbackHTTPServer

AUTOSCALING_METRICS = (
    "aiplatform.googleapis.com/prediction/online/cpu/utilization",
    "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle",
    "aiplatform.googleapis.com/prediction/online/request_count",
)
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_ALIAS_RE = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9-]$")
_RESOURCE_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_ENDPOINT_ID_RE = re.compile(r"^(?:[a-z][a-z0-9-]{0,61}[a-z0-9]|[a-z]|[1-9][0-9]{0,8})$")
_NETWORK_RE = re.compile(r"^projects/[0-9]+/global/networks/[^/]+$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# google.rpc.Code numbers, for the error inside a failed operation.
_RPC_CODES = {
    "CANCELLED": 1,
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "INTERNAL": 13,
    "RESOURCE_EXHAUSTED": 8,
    "UNAVAILABLE": 14,
}


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, http_status: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status or _STATUS_NAMES.get(http_status, "UNKNOWN")
        self.message = message


def _bad(message: str) -> ApiError:
    return ApiError(400, message, "INVALID_ARGUMENT")


def _precondition(message: str) -> ApiError:
    return ApiError(400, message, "FAILED_PRECONDITION")


def _not_found(message: str) -> ApiError:
    return ApiError(404, message, "NOT_FOUND")


@dataclass
class RecordedCall:
    """One request as it arrived: the RPC it maps to, the path, query and JSON body."""

    rpc: str
    method: str
    path: str
    api_version: str
    query: dict[str, str]
    body: dict[str, Any]


@dataclass
class ServingProfile:
    """How a deployed model answers predictions and what figures it would report.

    A generation model's profile has a ``generator``: called with a ``generate_stream`` request body,
    it returns (HTTP status, the response objects), which the invoke route answers as Server-Sent
    Events (``tests.fakes.generation.CaptionServer``); ``ttft_ms`` and ``tokens_per_s`` are the
    generation figures its serving side reports.
    """

    fail_predictions: bool = False
    error_rate: float = 0.0
    latency_ms: float = 20.0
    generator: Callable[[dict[str, Any]], tuple[int, list[dict[str, Any]]]] | None = None
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0


@dataclass
class Faults:
    """Faults to inject, each consumed when it fires. RPC names as in the Vertex AI API."""

    fail_operations: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    hang_operations: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    drop_connections: dict[str, int] = field(default_factory=dict)

    injections: list[Injection] = field(default_factory=list)
    killed: bool = False

    def take(self, table: dict[str, int], rpc: str) -> bool:
        left = table.get(rpc, 0)
        if left <= 0:
            return False
        table[rpc] = left - 1
        return True

    def action(self, rpc: str, now: float) -> str | int | None:
        """What the injections say about this call: an HTTP status, "lose", "kill" or None (serve it)."""
        for inj in self.injections:
            if inj.rpc != rpc or inj.spent:
                continue
            if inj.skip > 0:
                inj.skip -= 1
                continue
            if inj.burst_s:
                if inj.burst_until is None:
                    inj.burst_until = now + inj.burst_s
                if now < inj.burst_until:
                    return 503
                inj.spent = True
                continue
            if inj.statuses:
                status = inj.statuses.pop(0)
                inj.spent = not inj.statuses
                return status
            inj.spent = True
            return "kill" if inj.kill else "lose"
        return None


@dataclass
class Injection:
    """A fault on calls of one RPC, after ``skip`` calls of it have been served.

    ``statuses``: answer the next calls with these HTTP statuses, without serving them; ``burst_s``:
    answer 503 to every call for that long; ``lose``: serve the next call, then close the connection
    without an answer (the effect applied, the response lost); ``kill``: serve it, then refuse every
    later call of any RPC (403) until :meth:`FakeVertex.revive`, as if the client's process had died.
    """

    rpc: str
    skip: int = 0
    statuses: list[int] = field(default_factory=list)
    burst_s: float = 0.0
    lose: bool = False
    kill: bool = False
    burst_until: float | None = None
    spent: bool = False


@dataclass
class _Operation:
    name: str
    rpc: str
    metadata: Any
    complete: Callable[[], Any]
    polls_left: float
    done: bool = False
    response: Any = None
    error: tuple[str, str] | None = None
    cancelled: bool = False


@dataclass
class _ModelResource:
    model_id: str
    versions: dict[str, v1.Model] = field(default_factory=dict)
    next_version: int = 1


class FakeVertex(LoopbackHTTPServer):
    """An in-memory Vertex AI served over REST on 127.0.0.1.

    Args:
        project: The project id requests may name.
        project_number: The project number resource names carry (as the real API returns them).
        operation_polls: How many polls an operation answers "not done" before it completes.
        storage_host: A GCS emulator (``http://127.0.0.1:PORT``); when given, an uploaded model's
            ``artifactUri`` must hold objects there, as Vertex AI requires.
        seed: Seed of the traffic-split routing of ``rawPredict``.
        image_registries: Registry prefixes whose images an uploaded model may name (default: the
            registry this run is configured with, ``images.registry()`` when the fake is made).
            Any other image is refused, so a serving image nobody pushed cannot slip through.
    """

    def __init__(
        self,
        project: str = "vxdeploy-test",
        project_number: str = "123456789012",
        *,
        operation_polls: int = 1,
        storage_host: str | None = None,
        seed: int = 0,
        image_registries: Sequence[str] | None = None,
    ) -> None:
        from vxdeploy.components.common import images

        self.image_registries = tuple(r.rstrip("/") for r in (image_registries or (images.registry(),)))
        self.project = project
        self.project_number = project_number
        self.operation_polls = operation_polls
        self.storage_host = storage_host
        self.faults = Faults()
        self.calls: list[RecordedCall] = []
        self.observer: Callable[[RecordedCall], None] | None = None  # called with each call as it arrives
        self.serving_profile: Callable[[v1.DeployedModel], ServingProfile] = lambda _dm: ServingProfile()
        self._models: dict[tuple[str, str], _ModelResource] = {}
        self._endpoints: dict[tuple[str, str], v1.Endpoint] = {}
        self._operations: dict[str, _Operation] = {}
        self._model_invoke: dict[str, str] = {}
        self._ids = itertools.count(1000)
        self._rng = random.Random(seed)
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- lifecycle
    @property
    def address(self) -> str:
        """``http://127.0.0.1:PORT``, the value for ``client_options={"api_endpoint": ...}``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> FakeVertex:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._serve(Handler, port, name="fake-vertex")
        return self

    # ----------------------------------------------------------------- fault hooks
    def fail_next_operation(
        self, rpc: str, message: str = "injected failure", status: str = "INTERNAL"
    ) -> None:
        """The next operation of ``rpc`` (e.g. ``DeployModel``) finishes with this error, changing nothing."""
        with self._lock:
            self.faults.fail_operations.setdefault(rpc, []).append((status, message))

    def hang_next_operation(self, rpc: str, times: int = 1) -> None:
        """The next ``times`` operations of ``rpc`` never finish."""
        with self._lock:
            self.faults.hang_operations[rpc] = self.faults.hang_operations.get(rpc, 0) + times

    def unavailable(self, rpc: str, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``rpc`` with 503 UNAVAILABLE without serving them."""
        with self._lock:
            self.faults.unavailable[rpc] = self.faults.unavailable.get(rpc, 0) + times

    def drop_connection(self, rpc: str, times: int = 1) -> None:
        """Close the connection of the next ``times`` calls of ``rpc`` without serving or answering them."""
        with self._lock:
            self.faults.drop_connections[rpc] = self.faults.drop_connections.get(rpc, 0) + times

    def inject(
        self,
        rpc: str,
        *,
        skip: int = 0,
        statuses: list[int] | None = None,
        burst_s: float = 0.0,
        lose: bool = False,
        kill: bool = False,
    ) -> Injection:
        """Inject one fault on ``rpc`` after ``skip`` of its calls (see :class:`Injection`)."""
        with self._lock:
            inj = Injection(rpc, skip, list(statuses or []), burst_s, lose, kill)
            self.faults.injections.append(inj)
            return inj

    def revive(self) -> None:
        """Serve calls again after a ``kill`` injection fired, and drop the injections left."""
        with self._lock:
            self.faults.killed = False
            self.faults.injections.clear()

    def finish_hung_operations(self) -> None:
        """Let operations that were told to hang complete on their next poll."""
        with self._lock:
            for op in self._operations.values():
                if not op.done and math.isinf(op.polls_left):
                    op.polls_left = 0

    # ----------------------------------------------------------------- inspection
    def calls_of(self, rpc: str) -> list[RecordedCall]:
        with self._lock:
            return [c for c in self.calls if c.rpc == rpc]

    def endpoints(self) -> list[v1.Endpoint]:
        with self._lock:
            return [v1.Endpoint(e) for e in self._endpoints.values()]

    def endpoint(self, endpoint_id: str) -> v1.Endpoint:
        with self._lock:
            for (_, eid), e in self._endpoints.items():
                if eid == endpoint_id:
                    return v1.Endpoint(e)
        raise KeyError(endpoint_id)

    def model_versions(self) -> list[v1.Model]:
        """Every version of every model."""
        with self._lock:
            return [v1.Model(m) for res in self._models.values() for m in res.versions.values()]

    def operations(self) -> list[operations_pb2.Operation]:
        with self._lock:
            return [self._operation_proto(op) for op in self._operations.values()]

    # ----------------------------------------------------------------- seeding
    def seed_serving_endpoint(
        self,
        display_name: str,
        *,
        location: str = "us-central1",
        labels: dict[str, str] | None = None,
        model_display_name: str = "baseline",
        dedicated: bool = True,
        endpoint_id: str | None = None,
    ) -> tuple[v1.Endpoint, str]:
        """An endpoint serving one model version at 100%, as a previous rollout would leave it.

        Returns:
            The endpoint and the serving deployed model's id.
        """
        with self._lock:
            loc = self._location(location)
            model = self._upload(
                loc,
                v1.UploadModelRequest(
                    parent=f"projects/{self.project}/locations/{location}",
                    model=v1.Model(
                        display_name=model_display_name,
                        artifact_uri="gs://seed/model_repository",
                        container_spec=v1.ModelContainerSpec(
                            image_uri=f"{self.image_registries[0]}/serving:seeded",
                            invoke_route_prefix="/*" if dedicated else "",
                            predict_route="" if dedicated else "/v2/models/model/infer",
                        ),
                        version_aliases=["production"],
                    ),
                ),
                check_artifacts=False,
            )
            eid = endpoint_id or str(next(self._ids))
            name = f"{loc}/endpoints/{eid}"
            endpoint = v1.Endpoint(
                name=name,
                display_name=display_name,
                labels=labels or {},
                dedicated_endpoint_enabled=dedicated,
                create_time=datetime.now(UTC),
            )
            self._finish_endpoint(endpoint)
            self._endpoints[(loc, eid)] = endpoint
            dm = self._new_deployed_model(
                endpoint,
                v1.DeployedModel(
                    model=f"{model.name}@{model.version_id}",
                    display_name=model_display_name,
                    dedicated_resources=v1.DedicatedResources(
                        machine_spec=v1.MachineSpec(machine_type="g2-standard-8"),
                        min_replica_count=1,
                        max_replica_count=1,
                    ),
                ),
                model,
            )
            endpoint.deployed_models.append(dm)
            endpoint.traffic_split = {dm.id: 100}
            self._touch(endpoint)
            return v1.Endpoint(endpoint), dm.id

    # ----------------------------------------------------------------- dispatch
    def handle(
        self, method: str, raw_path: str, body_bytes: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Serve one request; returns (HTTP status, JSON body, extra headers)."""
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path
        m = re.match(r"^/(v1beta1|v1|ui)/(.*)$", path)
        if path.startswith("/private/"):
            api_version, rest = "private", path[len("/private/") :]
        elif m:
            api_version, rest = m.group(1), m.group(2)
        else:
            raise _not_found(f"unknown path {path}")
        rpc, args = _route(method, rest)
        try:
            body = json.loads(body_bytes) if body_bytes.strip() else {}
        except json.JSONDecodeError as exc:
            raise _bad(f"Invalid JSON payload received. {exc}") from None
        with self._lock:
            self.calls.append(RecordedCall(rpc, method, path, api_version, query, body))
            if self.observer is not None:
                self.observer(self.calls[-1])
            if self.faults.killed:
                raise ApiError(403, "The caller is gone (injected kill).", "PERMISSION_DENIED")
            if self.faults.take(self.faults.drop_connections, rpc):
                raise _DropConnection
            if self.faults.take(self.faults.unavailable, rpc):
                raise ApiError(503, "The service is currently unavailable.", "UNAVAILABLE")
            action = self.faults.action(rpc, time.monotonic())
            if isinstance(action, int):
                raise ApiError(action, f"Injected HTTP {action}.")
            handler = getattr(self, f"_rpc_{rpc}")
            result = handler(api_version=api_version, query=query, body=body, body_bytes=body_bytes, **args)
            if action == "lose":
                raise _DropConnection
            if action == "kill":
                self.faults.killed = True
        if isinstance(result, tuple):
            return result
        return 200, result, {}

    # ----------------------------------------------------------------- helpers
    def _location(self, location: str) -> str:
        return f"projects/{self.project_number}/locations/{location}"

    def _parent(self, parent: str) -> str:
        m = re.match(r"^projects/([^/]+)/locations/([^/]+)$", parent)
        if not m:
            raise _bad(f"invalid parent {parent!r}")
        if m.group(1) not in (self.project, self.project_number):
            raise ApiError(403, f"Permission denied on resource project {m.group(1)}.", "PERMISSION_DENIED")
        return self._location(m.group(2))

    def _parse(self, cls: Any, body: dict[str, Any], api_version: str) -> Any:
        """Parse a request body strictly into ``cls`` (the v1 type, or its v1beta1 twin)."""
        target = cls
        if api_version == "v1beta1":
            from google.cloud import aiplatform_v1beta1 as v1beta1

            target = getattr(v1beta1, cls.__name__)
        try:
            msg = target.from_json(json.dumps(body), ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            raise _bad(f"Invalid JSON payload received. {exc}") from None
        if target is cls:
            return msg
        # Keep state in v1 types; v1beta1-only fields are read from the raw body where they matter.
        return cls.from_json(type(msg).to_json(msg), ignore_unknown_fields=True)

    def _to_json(self, msg: Any, query: dict[str, str]) -> dict[str, Any]:
        ints = "enum-encoding=int" in query.get("$alt", "")
        out: dict[str, Any] = json.loads(type(msg).to_json(msg, use_integers_for_enums=ints))
        return out

    def _new_operation(
        self, parent_name: str, rpc: str, metadata: Any, complete: Callable[[], Any]
    ) -> _Operation:
        op_id = str(next(self._ids))
        polls: float = self.operation_polls
        if self.faults.take(self.faults.hang_operations, rpc):
            polls = math.inf
        op = _Operation(f"{parent_name}/operations/{op_id}", rpc, metadata, complete, polls)
        failures = self.faults.fail_operations.get(rpc)
        if failures:
            op.error = failures.pop(0)
        self._operations[op.name] = op
        if polls <= 0:
            self._advance(op)
        return op

    def _advance(self, op: _Operation) -> None:
        if op.done:
            return
        if op.polls_left > 0:
            op.polls_left -= 1
            return
        op.done = True
        if op.error is not None:
            return
        try:
            op.response = op.complete()
        except ApiError as exc:
            op.error = (exc.status, exc.message)

    def _operation_proto(self, op: _Operation) -> operations_pb2.Operation:
        proto = operations_pb2.Operation(name=op.name, done=op.done)
        proto.metadata.Pack(type(op.metadata).pb(op.metadata))
        if op.done and op.error is not None:
            status, message = op.error
            proto.error.CopyFrom(status_pb2.Status(code=_RPC_CODES.get(status, 2), message=message))
        elif op.done and op.response is not None:
            proto.response.Pack(type(op.response).pb(op.response))
        return proto

    def _operation_json(self, op: _Operation, query: dict[str, str]) -> dict[str, Any]:
        ints = "enum-encoding=int" in query.get("$alt", "")
        out: dict[str, Any] = json_format.MessageToDict(
            self._operation_proto(op), use_integers_for_enums=ints
        )
        return out

    def _generic_metadata(self) -> v1.GenericOperationMetadata:
        now = datetime.now(UTC)
        return v1.GenericOperationMetadata(create_time=now, update_time=now)

    def _touch(self, endpoint: v1.Endpoint) -> None:
        endpoint.etag = uuid.uuid4().hex
        endpoint.update_time = datetime.now(UTC)

    def _finish_endpoint(self, endpoint: v1.Endpoint) -> None:
        if endpoint.dedicated_endpoint_enabled:
            eid = endpoint.name.rsplit("/", 1)[-1]
            location = endpoint.name.split("/")[3]
            endpoint.dedicated_endpoint_dns = (
                f"{eid}.{location}-{self.project_number}.prediction.vertexai.goog"
            )
        self._touch(endpoint)

    def _get_endpoint(self, parent: str, endpoint_id: str) -> v1.Endpoint:
        loc = self._parent(parent)
        endpoint = self._endpoints.get((loc, endpoint_id))
        if endpoint is None:
            raise _not_found(f"Endpoint {loc}/endpoints/{endpoint_id} is not found.")
        return endpoint

    def _resolve_model(self, name: str) -> v1.Model:
        """A model version from ``projects/P/locations/L/models/M[@version|@alias]``."""
        m = re.match(r"^(projects/[^/]+/locations/[^/]+)/models/([^/@]+)(?:@(.+))?$", unquote(name))
        if not m:
            raise _bad(f"invalid model name {name!r}")
        loc = self._parent(m.group(1))
        res = self._models.get((loc, m.group(2)))
        if res is None:
            raise _not_found(f"Model {loc}/models/{m.group(2)} is not found.")
        ref = m.group(3) or "default"
        if ref in res.versions:
            return res.versions[ref]
        for version in res.versions.values():
            if ref in version.version_aliases:
                return version
        raise _not_found(f"Model {loc}/models/{m.group(2)}@{ref} is not found.")

    def _check_labels(self, labels: dict[str, str], what: str) -> None:
        if len(labels) > 64:
            raise _bad(f"{what}: at most 64 labels")
        for key, value in labels.items():
            if not _LABEL_KEY_RE.match(key):
                raise _bad(
                    f"{what}: label key {key!r} is invalid: lowercase letters, digits, '_' and '-', "
                    "starting with a letter, at most 63 characters"
                )
            if not _LABEL_VALUE_RE.match(value):
                raise _bad(
                    f"{what}: label value {value!r} of {key!r} is invalid: lowercase letters, digits, "
                    "'_' and '-', at most 63 characters"
                )

    def _check_split(self, split: dict[str, int], known: set[str], what: str) -> None:
        if not split:
            return
        for dm_id, pct in split.items():
            if dm_id not in known:
                raise _bad(
                    f"{what}: deployed model {dm_id!r} in the traffic split is not deployed on the endpoint"
                )
            if not 0 <= pct <= 100:
                raise _bad(f"{what}: traffic percentage {pct} of {dm_id!r} is outside [0, 100]")
        total = sum(split.values())
        if total != 100:
            raise _bad(f"{what}: the traffic split must add up to 100, got {total}")

    # ----------------------------------------------------------------- models
    def _rpc_UploadModel(
        self, parent: str, body: dict[str, Any], api_version: str, query: dict[str, str], **_: Any
    ) -> dict[str, Any]:
        req = self._parse(v1.UploadModelRequest, {**body, "parent": parent}, api_version)
        loc = self._parent(parent)
        model = req.model
        if not model.display_name:
            raise _bad("model.display_name is required")
        spec = model.container_spec
        if not spec.image_uri:
            raise _bad("model.container_spec.image_uri is required for a custom container model")
        if not any(spec.image_uri.startswith(f"{r}/") for r in self.image_registries):
            raise _bad(
                f"model.container_spec.image_uri {spec.image_uri!r} is not in the registries this run was "
                f"configured with ({', '.join(self.image_registries)}): nothing would serve it"
            )
        if spec.predict_route and spec.invoke_route_prefix:
            raise _bad(
                "Only one of container_spec.predict_route and container_spec.invoke_route_prefix may be set"
            )
        if spec.invoke_route_prefix and spec.invoke_route_prefix != "/*":
            raise _bad(
                f"container_spec.invoke_route_prefix {spec.invoke_route_prefix!r}: '/*' is the only value"
            )
        if model.artifact_uri and not model.artifact_uri.startswith("gs://"):
            raise _bad(f"model.artifact_uri {model.artifact_uri!r} must be a gs:// URI")
        self._check_labels(dict(model.labels), "model.labels")
        for alias in model.version_aliases:
            if alias != "default" and (not _ALIAS_RE.match(alias) or alias.isdigit()):
                raise _bad(f"version alias {alias!r} must match [a-z][a-zA-Z0-9-]{{0,126}}[a-z0-9-]")
        if req.parent_model:
            self._resolve_model(req.parent_model)
        elif req.model_id:
            if not _RESOURCE_ID_RE.match(req.model_id):
                raise _bad(f"model_id {req.model_id!r} must match [a-z][a-z0-9_-]{{0,62}}")
            if (loc, req.model_id) in self._models:
                raise ApiError(409, f"Model {loc}/models/{req.model_id} already exists.", "ALREADY_EXISTS")
        model_id = req.parent_model.rsplit("/", 1)[-1] if req.parent_model else (req.model_id or "")
        parent_name = f"{loc}/models/{model_id}" if model_id else loc
        op = self._new_operation(
            parent_name,
            "UploadModel",
            v1.UploadModelOperationMetadata(generic_metadata=self._generic_metadata()),
            lambda: self._complete_upload(loc, req),
        )
        return self._operation_json(op, query)

    def _complete_upload(self, loc: str, req: v1.UploadModelRequest) -> v1.UploadModelResponse:
        version = self._upload(loc, req, check_artifacts=True)
        return v1.UploadModelResponse(model=version.name, model_version_id=version.version_id)

    def _upload(self, loc: str, req: v1.UploadModelRequest, *, check_artifacts: bool) -> v1.Model:
        if check_artifacts and self.storage_host and req.model.artifact_uri:
            self._check_artifacts(req.model.artifact_uri)
        if req.parent_model:
            res = self._models[(loc, unquote(req.parent_model).rsplit("/", 1)[-1].split("@")[0])]
        else:
            model_id = req.model_id or str(next(self._ids))
            if (loc, model_id) in self._models:
                raise ApiError(409, f"Model {loc}/models/{model_id} already exists.", "ALREADY_EXISTS")
            res = _ModelResource(model_id)
            self._models[(loc, model_id)] = res
        version_id = str(res.next_version)
        res.next_version += 1
        now = datetime.now(UTC)
        model = v1.Model(req.model)
        model.name = f"{loc}/models/{res.model_id}"
        model.version_id = version_id
        model.create_time = now if version_id == "1" else next(iter(res.versions.values())).create_time
        model.version_create_time = now
        model.update_time = now
        model.version_update_time = now
        model.supported_deployment_resources_types = [v1.Model.DeploymentResourcesType.DEDICATED_RESOURCES]  # type: ignore[list-item]
        aliases = list(dict.fromkeys(model.version_aliases))
        if not res.versions and "default" not in aliases:
            aliases.insert(0, "default")
        model.version_aliases = []
        res.versions[version_id] = model
        self._move_aliases(res, version_id, aliases)
        self._model_invoke[f"{model.name}@{version_id}"] = model.container_spec.invoke_route_prefix
        return model

    def _check_artifacts(self, artifact_uri: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage  # type: ignore[attr-defined]

        bucket, _, prefix = artifact_uri.removeprefix("gs://").partition("/")
        client = storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.storage_host},
        )
        try:
            blobs = list(client.list_blobs(bucket, prefix=prefix.rstrip("/") + "/", max_results=1))
        except Exception as exc:  # noqa: BLE001 - any storage error means the artifacts cannot be read
            raise _bad(f"artifact_uri {artifact_uri}: cannot be read ({exc})") from None
        if not blobs:
            raise _bad(f"artifact_uri {artifact_uri} holds no objects; upload the model files first")

    def _move_aliases(self, res: _ModelResource, version_id: str, aliases: list[str]) -> None:
        target = res.versions[version_id]
        for alias in aliases:
            for other_id, other in res.versions.items():
                if other_id != version_id and alias in other.version_aliases:
                    other.version_aliases = [a for a in other.version_aliases if a != alias]
            if alias not in target.version_aliases:
                target.version_aliases = [*target.version_aliases, alias]

    def _rpc_GetModel(self, name: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._to_json(self._model_view(self._resolve_model(name)), query)

    def _model_view(self, model: v1.Model) -> v1.Model:
        """A model version as the API shows it, with where it is deployed."""
        out = v1.Model(model)
        out.deployed_models = [
            v1.DeployedModelRef(endpoint=e.name, deployed_model_id=dm.id)
            for e in self._endpoints.values()
            for dm in e.deployed_models
            if dm.model == model.name and dm.model_version_id == model.version_id
        ]
        return out

    def _rpc_ListModels(self, parent: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        loc = self._parent(parent)
        matches = _compile_filter(query.get("filter", ""), id_field="model")
        defaults = [
            next(v for v in res.versions.values() if "default" in v.version_aliases)
            for (l2, _), res in self._models.items()
            if l2 == loc
        ]
        models = [m for m in defaults if matches(m.name.rsplit("/", 1)[-1], m.display_name, dict(m.labels))]
        page, token = _page(models, query)
        return self._to_json(
            v1.ListModelsResponse(models=[self._model_view(m) for m in page], next_page_token=token), query
        )

    def _rpc_ListModelVersions(self, name: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        model = self._resolve_model(name.split("@")[0])
        res = self._models[(model.name.rsplit("/models/", 1)[0], model.name.rsplit("/", 1)[-1])]
        matches = _compile_filter(query.get("filter", ""), id_field="model")
        versions = [v for v in res.versions.values() if matches(res.model_id, v.display_name, dict(v.labels))]
        page, token = _page(versions, query)
        return self._to_json(
            v1.ListModelVersionsResponse(models=[self._model_view(m) for m in page], next_page_token=token),
            query,
        )

    def _rpc_MergeVersionAliases(
        self, name: str, body: dict[str, Any], api_version: str, query: dict[str, str], **_: Any
    ) -> dict[str, Any]:
        req = self._parse(v1.MergeVersionAliasesRequest, {**body, "name": name}, api_version)
        model = self._resolve_model(name)
        if not req.version_aliases:
            raise _bad("version_aliases is required")
        res = self._models[(model.name.rsplit("/models/", 1)[0], model.name.rsplit("/", 1)[-1])]
        add: list[str] = []
        remove: list[str] = []
        for alias in req.version_aliases:
            bare = alias.removeprefix("-")
            if bare == "default" and alias.startswith("-"):
                raise _bad("the 'default' alias cannot be removed; move it to another version instead")
            if bare != "default" and (not _ALIAS_RE.match(bare) or bare.isdigit()):
                raise _bad(f"version alias {bare!r} must match [a-z][a-zA-Z0-9-]{{0,126}}[a-z0-9-]")
            (remove if alias.startswith("-") else add).append(bare)
        cancelled = set(add) & set(remove)
        self._move_aliases(res, model.version_id, [a for a in add if a not in cancelled])
        model.version_aliases = [a for a in model.version_aliases if a not in set(remove) - cancelled]
        model.version_update_time = datetime.now(UTC)
        return self._to_json(self._model_view(model), query)

    # ----------------------------------------------------------------- endpoints
    def _rpc_CreateEndpoint(
        self, parent: str, body: dict[str, Any], api_version: str, query: dict[str, str], **_: Any
    ) -> dict[str, Any]:
        endpoint = self._parse(v1.Endpoint, body, api_version)
        loc = self._parent(parent)
        if not endpoint.display_name:
            raise _bad("endpoint.display_name is required")
        self._check_labels(dict(endpoint.labels), "endpoint.labels")
        if endpoint.traffic_split or endpoint.deployed_models:
            raise _bad("deployed_models and traffic_split are output only on create")
        psc = endpoint.private_service_connect_config.enable_private_service_connect
        if endpoint.network and not _NETWORK_RE.match(endpoint.network):
            raise _bad(
                f"network {endpoint.network!r} must be projects/{{project_number}}/global/networks/{{name}}"
            )
        if endpoint.network and psc:
            raise _bad("network and private_service_connect_config are mutually exclusive")
        if endpoint.network and endpoint.dedicated_endpoint_enabled:
            raise _bad("a private endpoint (network) cannot also be a dedicated public endpoint")
        endpoint_id = query.get("endpointId", "")
        if endpoint_id:
            if not _ENDPOINT_ID_RE.match(endpoint_id):
                raise _bad(f"endpoint_id {endpoint_id!r} is invalid")
            if (loc, endpoint_id) in self._endpoints:
                raise ApiError(
                    409, f"Endpoint {loc}/endpoints/{endpoint_id} already exists.", "ALREADY_EXISTS"
                )
        eid = endpoint_id or str(next(self._ids))

        def complete() -> v1.Endpoint:
            if (loc, eid) in self._endpoints:
                raise ApiError(409, f"Endpoint {loc}/endpoints/{eid} already exists.", "ALREADY_EXISTS")
            created = v1.Endpoint(endpoint)
            created.name = f"{loc}/endpoints/{eid}"
            created.create_time = datetime.now(UTC)
            self._finish_endpoint(created)
            self._endpoints[(loc, eid)] = created
            return v1.Endpoint(created)

        op = self._new_operation(
            f"{loc}/endpoints/{eid}",
            "CreateEndpoint",
            v1.CreateEndpointOperationMetadata(generic_metadata=self._generic_metadata()),
            complete,
        )
        return self._operation_json(op, query)

    def _rpc_GetEndpoint(
        self, parent: str, endpoint_id: str, query: dict[str, str], **_: Any
    ) -> dict[str, Any]:
        return self._to_json(self._get_endpoint(parent, endpoint_id), query)

    def _rpc_ListEndpoints(self, parent: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        loc = self._parent(parent)
        matches = _compile_filter(query.get("filter", ""), id_field="endpoint")
        found = [
            e
            for (l2, eid), e in self._endpoints.items()
            if l2 == loc and matches(eid, e.display_name, dict(e.labels))
        ]
        page, token = _page(found, query)
        return self._to_json(v1.ListEndpointsResponse(endpoints=page, next_page_token=token), query)

    def _rpc_UpdateEndpoint(
        self,
        parent: str,
        endpoint_id: str,
        body: dict[str, Any],
        api_version: str,
        query: dict[str, str],
        **_: Any,
    ) -> dict[str, Any]:
        endpoint = self._get_endpoint(parent, endpoint_id)
        update = self._parse(v1.Endpoint, body, api_version)
        if update.etag and update.etag != endpoint.etag:
            raise ApiError(
                409,
                f"The etag {update.etag!r} does not match the endpoint's current etag; "
                "read the endpoint again and retry.",
                "ABORTED",
            )
        mask = [_snake(p) for p in query.get("updateMask", "").split(",") if p]
        allowed = {
            "display_name",
            "description",
            "labels",
            "traffic_split",
            "predict_request_response_logging_config",
            "client_connection_config",
        }
        for path in mask:
            if path not in allowed:
                raise _bad(f"update_mask path {path!r} cannot be updated")
        paths = mask or ["display_name", "description", "labels", "traffic_split"]
        if "labels" in paths:
            self._check_labels(dict(update.labels), "endpoint.labels")
        if "traffic_split" in paths:
            known = {dm.id for dm in endpoint.deployed_models}
            self._check_split(dict(update.traffic_split), known, "endpoint.traffic_split")
        if "display_name" in paths and not update.display_name:
            raise _bad("endpoint.display_name is required")
        for path in paths:
            setattr(endpoint, path, getattr(update, path))
        self._touch(endpoint)
        return self._to_json(endpoint, query)

    def _new_deployed_model(
        self, endpoint: v1.Endpoint, requested: v1.DeployedModel, model: v1.Model
    ) -> v1.DeployedModel:
        dm = v1.DeployedModel(requested)
        dm.id = str(self._rng.randrange(10**18, 10**19))
        dm.model = model.name
        dm.model_version_id = model.version_id
        dm.create_time = datetime.now(UTC)
        if not dm.display_name:
            dm.display_name = model.display_name
        if endpoint.network:
            base = f"/private/{endpoint.name}/deployedModels/{dm.id}"
            dm.private_endpoints = v1.PrivateEndpoints(
                predict_http_uri=f"{self.address}{base}:predict",
                health_http_uri=f"{self.address}{base}:health",
            )
        return dm

    def _rpc_DeployModel(
        self,
        parent: str,
        endpoint_id: str,
        body: dict[str, Any],
        api_version: str,
        query: dict[str, str],
        **_: Any,
    ) -> dict[str, Any]:
        endpoint = self._get_endpoint(parent, endpoint_id)
        req = self._parse(
            v1.DeployModelRequest, {**body, "endpoint": f"{parent}/endpoints/{endpoint_id}"}, api_version
        )
        requested = req.deployed_model
        if not requested.model:
            raise _bad("deployed_model.model is required")
        model = self._resolve_model(requested.model)
        if "dedicatedResources" not in body.get("deployedModel", {}):
            raise _bad(
                f"Model {model.name} supports only DEDICATED_RESOURCES: set "
                "deployed_model.dedicated_resources"
            )
        res = requested.dedicated_resources
        spec = res.machine_spec
        if not spec.machine_type:
            raise _bad("dedicated_resources.machine_spec.machine_type is required")
        if (
            spec.accelerator_count
            and spec.accelerator_type == v1.AcceleratorType.ACCELERATOR_TYPE_UNSPECIFIED
        ):
            raise _bad("machine_spec.accelerator_count is set but accelerator_type is not")
        if (
            spec.accelerator_type != v1.AcceleratorType.ACCELERATOR_TYPE_UNSPECIFIED
            and spec.accelerator_count < 1
        ):
            raise _bad("machine_spec.accelerator_type is set: accelerator_count must be >= 1")
        min_floor = 0 if api_version == "v1beta1" else 1
        if res.min_replica_count < min_floor:
            raise _bad(
                f"dedicated_resources.min_replica_count must be >= {min_floor}"
                + (" (scale-to-zero is in the v1beta1 API)" if min_floor else "")
            )
        if res.max_replica_count and res.max_replica_count < res.min_replica_count:
            raise _bad("dedicated_resources.max_replica_count must be >= min_replica_count")
        if res.min_replica_count == 0:
            spec0 = body["deployedModel"]["dedicatedResources"].get("scaleToZeroSpec", {})
            for key in ("minScaleupPeriod", "idleScaledownPeriod"):
                if key in spec0 and not 300 <= float(str(spec0[key]).rstrip("s")) <= 28800:
                    raise _bad(f"scale_to_zero_spec.{key} {spec0[key]} is outside [300s, 28800s]")
        seen = set()
        for metric in res.autoscaling_metric_specs:
            if metric.metric_name not in AUTOSCALING_METRICS:
                raise _bad(
                    f"autoscaling metric {metric.metric_name!r} is not one of "
                    f"{', '.join(AUTOSCALING_METRICS)}"
                )
            if metric.metric_name in seen:
                raise _bad(f"autoscaling metric {metric.metric_name!r} is given twice")
            seen.add(metric.metric_name)
            if metric.metric_name.endswith("duty_cycle") and not spec.accelerator_count:
                raise _bad("an accelerator duty-cycle target needs machine_spec.accelerator_count > 0")
        if (
            self._model_invoke.get(f"{model.name}@{model.version_id}")
            and not endpoint.dedicated_endpoint_enabled
        ):
            raise _precondition(
                "A model with container_spec.invoke_route_prefix can only be deployed to a dedicated endpoint"
            )
        known = {dm.id for dm in endpoint.deployed_models} | {"0"}
        split = dict(req.traffic_split)
        self._check_split(split, known, "traffic_split")
        endpoint_name = endpoint.name

        def complete() -> v1.DeployModelResponse:
            target = self._endpoints.get(
                (endpoint_name.rsplit("/endpoints/", 1)[0], endpoint_name.rsplit("/", 1)[-1])
            )
            if target is None:
                raise _not_found(f"Endpoint {endpoint_name} is not found.")
            dm = self._new_deployed_model(target, requested, model)
            target.deployed_models.append(dm)
            if split:
                target.traffic_split = {(dm.id if k == "0" else k): v for k, v in split.items()}
            self._touch(target)
            return v1.DeployModelResponse(deployed_model=dm)

        op = self._new_operation(
            endpoint.name,
            "DeployModel",
            v1.DeployModelOperationMetadata(generic_metadata=self._generic_metadata()),
            complete,
        )
        return self._operation_json(op, query)

    def _rpc_UndeployModel(
        self,
        parent: str,
        endpoint_id: str,
        body: dict[str, Any],
        api_version: str,
        query: dict[str, str],
        **_: Any,
    ) -> dict[str, Any]:
        endpoint = self._get_endpoint(parent, endpoint_id)
        req = self._parse(
            v1.UndeployModelRequest, {**body, "endpoint": f"{parent}/endpoints/{endpoint_id}"}, api_version
        )
        ids = {dm.id for dm in endpoint.deployed_models}
        if req.deployed_model_id not in ids:
            raise _not_found(f"Deployed model {req.deployed_model_id!r} is not found on {endpoint.name}.")
        split = dict(req.traffic_split)
        remaining = ids - {req.deployed_model_id}
        if split:
            self._check_split(split, remaining, "traffic_split")
        elif endpoint.traffic_split.get(req.deployed_model_id, 0) > 0 and remaining:
            raise _precondition(
                f"Deployed model {req.deployed_model_id} has "
                f"{endpoint.traffic_split[req.deployed_model_id]}% of "
                "the traffic: give a traffic_split that moves it away"
            )
        dm_id = req.deployed_model_id

        def complete() -> v1.UndeployModelResponse:
            endpoint.deployed_models = [dm for dm in endpoint.deployed_models if dm.id != dm_id]
            if not endpoint.deployed_models:
                endpoint.traffic_split = {}
            elif split:
                endpoint.traffic_split = split
            else:
                endpoint.traffic_split = {k: v for k, v in endpoint.traffic_split.items() if k != dm_id}
            self._touch(endpoint)
            return v1.UndeployModelResponse()

        op = self._new_operation(
            endpoint.name,
            "UndeployModel",
            v1.UndeployModelOperationMetadata(generic_metadata=self._generic_metadata()),
            complete,
        )
        return self._operation_json(op, query)

    def _rpc_MutateDeployedModel(
        self,
        parent: str,
        endpoint_id: str,
        body: dict[str, Any],
        api_version: str,
        query: dict[str, str],
        **_: Any,
    ) -> dict[str, Any]:
        endpoint = self._get_endpoint(parent, endpoint_id)
        req = self._parse(
            v1.MutateDeployedModelRequest,
            {**body, "endpoint": f"{parent}/endpoints/{endpoint_id}"},
            api_version,
        )
        target = next((dm for dm in endpoint.deployed_models if dm.id == req.deployed_model.id), None)
        if target is None:
            raise _not_found(f"Deployed model {req.deployed_model.id!r} is not found on {endpoint.name}.")
        paths = [_snake(p) for p in req.update_mask.paths]
        allowed = {
            "dedicated_resources.min_replica_count",
            "dedicated_resources.max_replica_count",
            "dedicated_resources.autoscaling_metric_specs",
            "disable_container_logging",
        }
        if not paths or any(p not in allowed for p in paths):
            raise _bad(f"update_mask {paths} must name some of {sorted(allowed)}")

        def complete() -> v1.MutateDeployedModelResponse:
            for path in paths:
                obj_t, obj_s = target, req.deployed_model
                *head, leaf = path.split(".")
                for part in head:
                    obj_t, obj_s = getattr(obj_t, part), getattr(obj_s, part)
                setattr(obj_t, leaf, getattr(obj_s, leaf))
            self._touch(endpoint)
            return v1.MutateDeployedModelResponse(deployed_model=target)

        op = self._new_operation(
            endpoint.name,
            "MutateDeployedModel",
            v1.MutateDeployedModelOperationMetadata(generic_metadata=self._generic_metadata()),
            complete,
        )
        return self._operation_json(op, query)

    # ----------------------------------------------------------------- operations
    def _rpc_GetOperation(self, name: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        op = self._find_operation(name)
        self._advance(op)
        return self._operation_json(op, query)

    def _rpc_CancelOperation(self, name: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        op = self._find_operation(name)
        if not op.done:
            op.done = True
            op.cancelled = True
            op.error = ("CANCELLED", "Operation was cancelled.")
        return {}

    def _rpc_ListOperations(self, name: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        prefix = self._canonical(name) + "/operations/"
        ops = [self._operation_json(op, query) for n, op in self._operations.items() if n.startswith(prefix)]
        return {"operations": ops}

    def _canonical(self, name: str) -> str:
        m = re.match(r"^projects/([^/]+)/(locations/.*)$", unquote(name))
        if not m:
            raise _bad(f"invalid name {name!r}")
        self._parent(f"projects/{m.group(1)}/{'/'.join(m.group(2).split('/')[:2])}")
        return f"projects/{self.project_number}/{m.group(2)}"

    def _find_operation(self, name: str) -> _Operation:
        op = self._operations.get(self._canonical(name))
        if op is None:
            raise _not_found(f"Operation {name} is not found.")
        return op

    # ----------------------------------------------------------------- predictions
    def _predict_with(self, dm: v1.DeployedModel, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        profile = self.serving_profile(dm)
        if profile.fail_predictions:
            return 500, {"error": f"deployed model {dm.id} failed to run the request (injected)"}
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return 400, {"error": "request must carry a non-empty 'inputs' list (KServe v2)"}
        batch = None
        sums: list[float] = []
        for tensor in inputs:
            shape, data = tensor.get("shape"), tensor.get("data")
            if not isinstance(shape, list) or not isinstance(data, list):
                return 400, {"error": f"input {tensor.get('name')!r} needs 'shape' and 'data' lists"}
            flat = list(_flatten(data))
            if math.prod(shape) != len(flat):
                return 400, {
                    "error": f"input {tensor.get('name')!r}: {len(flat)} values do not fill shape {shape}"
                }
            batch = shape[0] if shape else 1
            per = len(flat) // max(batch, 1)
            sums = [float(sum(flat[i * per : (i + 1) * per])) for i in range(batch)]
        return 200, {
            "model_name": dm.display_name,
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [batch, 1], "data": sums}],
        }

    def _find_deployed(
        self, parent: str, endpoint_id: str, dm_id: str
    ) -> tuple[v1.Endpoint, v1.DeployedModel]:
        endpoint = self._get_endpoint(parent, endpoint_id)
        dm = next((d for d in endpoint.deployed_models if d.id == dm_id), None)
        if dm is None:
            raise _not_found(f"Deployed model {dm_id!r} is not found on {endpoint.name}.")
        return endpoint, dm

    def _rpc_Invoke(
        self,
        parent: str,
        endpoint_id: str,
        deployed_model_id: str,
        route: str,
        body: dict[str, Any],
        **_: Any,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        endpoint, dm = self._find_deployed(parent, endpoint_id, deployed_model_id)
        if not endpoint.dedicated_endpoint_enabled:
            raise _precondition("invoke is served only by dedicated endpoints")
        if not self._model_invoke.get(f"{dm.model}@{dm.model_version_id}"):
            raise _precondition("the model was uploaded without container_spec.invoke_route_prefix")
        if route.rstrip("/").endswith("/generate_stream"):
            return self._generate_stream(dm, body)
        status, out = self._predict_with(dm, body)
        return status, out, {"X-Vertex-AI-Deployed-Model-Id": dm.id}

    def _generate_stream(self, dm: v1.DeployedModel, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """Triton's generate_stream on the container: one SSE ``data:`` event per generator response."""
        profile = self.serving_profile(dm)
        headers = {"X-Vertex-AI-Deployed-Model-Id": dm.id}
        if profile.fail_predictions:
            return 500, {"error": f"deployed model {dm.id} failed to run the request (injected)"}, headers
        if profile.generator is None:
            # What Triton answers for a model that has no generate route (not a generator).
            return 400, {"error": "generate_stream: the model is not a generation model"}, headers
        status, events = profile.generator(body)
        if status != 200:
            return status, events[0] if events else {"error": "generation failed"}, headers
        stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()
        return 200, stream, {**headers, "Content-Type": "text/event-stream; charset=utf-8"}

    def _rpc_PrivatePredict(
        self, parent: str, endpoint_id: str, deployed_model_id: str, body: dict[str, Any], **_: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        endpoint, dm = self._find_deployed(parent, endpoint_id, deployed_model_id)
        if not endpoint.network:
            raise _precondition("per-model private URLs exist only on peered private endpoints")
        status, out = self._predict_with(dm, body)
        return status, out, {"X-Vertex-AI-Deployed-Model-Id": dm.id}

    def _rpc_RawPredict(
        self, parent: str, endpoint_id: str, body: dict[str, Any], **_: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        endpoint = self._get_endpoint(parent, endpoint_id)
        split = {k: v for k, v in endpoint.traffic_split.items() if v > 0}
        if not split:
            raise _precondition(
                f"Endpoint {endpoint.name} has no traffic split: no deployed model takes traffic"
            )
        dm_id = self._rng.choices(list(split), weights=list(split.values()))[0]
        dm = next(d for d in endpoint.deployed_models if d.id == dm_id)
        status, out = self._predict_with(dm, body)
        return status, out, {"X-Vertex-AI-Deployed-Model-Id": dm.id}

    def predict_via_split(self, endpoint_id: str) -> v1.DeployedModel:
        """The deployed model the traffic split routes one request to (for traffic simulation)."""
        with self._lock:
            endpoint = self.endpoint(endpoint_id)
            split = {k: v for k, v in endpoint.traffic_split.items() if v > 0}
            dm_id = self._rng.choices(list(split), weights=list(split.values()))[0]
            return next(d for d in endpoint.deployed_models if d.id == dm_id)


# --------------------------------------------------------------------- routing

_PARENT = r"projects/[^/]+/locations/[^/]+"


def _route(method: str, rest: str) -> tuple[str, dict[str, str]]:
    """Map a path (after ``/v1/``) to an RPC name and its path arguments."""
    rest = rest.replace("%40", "@").replace("%3A", ":").replace("%2F", "/")
    table: list[tuple[str, str, str]] = [
        ("POST", rf"(?P<parent>{_PARENT})/models:upload", "UploadModel"),
        ("GET", rf"(?P<parent>{_PARENT})/models", "ListModels"),
        ("GET", rf"(?P<name>{_PARENT}/models/[^/:]+):listVersions", "ListModelVersions"),
        ("POST", rf"(?P<name>{_PARENT}/models/[^/:]+):mergeVersionAliases", "MergeVersionAliases"),
        ("GET", rf"(?P<name>{_PARENT}/(?:models|endpoints)/[^/:]+/operations/[^/:]+)", "GetOperation"),
        ("GET", rf"(?P<name>{_PARENT}/operations/[^/:]+)", "GetOperation"),
        (
            "POST",
            rf"(?P<name>{_PARENT}(?:/(?:models|endpoints)/[^/:]+)?/operations/[^/:]+):cancel",
            "CancelOperation",
        ),
        ("GET", rf"(?P<name>{_PARENT}(?:/(?:models|endpoints)/[^/:]+)?)/operations", "ListOperations"),
        ("GET", rf"(?P<name>{_PARENT}/models/[^/:]+)", "GetModel"),
        ("POST", rf"(?P<parent>{_PARENT})/endpoints", "CreateEndpoint"),
        ("GET", rf"(?P<parent>{_PARENT})/endpoints", "ListEndpoints"),
        ("GET", rf"(?P<parent>{_PARENT})/endpoints/(?P<endpoint_id>[^/:]+)", "GetEndpoint"),
        ("PATCH", rf"(?P<parent>{_PARENT})/endpoints/(?P<endpoint_id>[^/:]+)", "UpdateEndpoint"),
        ("POST", rf"(?P<parent>{_PARENT})/endpoints/(?P<endpoint_id>[^/:]+):deployModel", "DeployModel"),
        ("POST", rf"(?P<parent>{_PARENT})/endpoints/(?P<endpoint_id>[^/:]+):undeployModel", "UndeployModel"),
        (
            "POST",
            rf"(?P<parent>{_PARENT})/endpoints/(?P<endpoint_id>[^/:]+):mutateDeployedModel",
            "MutateDeployedModel",
        ),
        ("POST", rf"(?P<parent>{_PARENT})/endpoints/(?P<endpoint_id>[^/:]+):rawPredict", "RawPredict"),
        (
            "POST",
            rf"(?P<parent>{_PARENT})/endpoints/(?P<endpoint_id>[^/:]+)/deployedModels/"
            r"(?P<deployed_model_id>[^/:]+)/invoke(?P<route>/.*)",
            "Invoke",
        ),
        (
            "POST",
            rf"(?P<parent>{_PARENT})/endpoints/(?P<endpoint_id>[^/:]+)/deployedModels/"
            r"(?P<deployed_model_id>[^/:]+):predict",
            "PrivatePredict",
        ),
    ]
    for verb, pattern, rpc in table:
        if verb == method:
            m = re.fullmatch(pattern, rest)
            if m:
                return rpc, {k: v for k, v in m.groupdict().items() if v is not None}
    raise _not_found(f"no method {method} /{rest}")


def _snake(path: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), path)


def _flatten(data: Any) -> Iterator[float]:
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield float(item)


def _page(items: list[Any], query: dict[str, str]) -> tuple[list[Any], str]:
    size = int(query.get("pageSize") or 100)
    start = int(query.get("pageToken") or 0)
    end = start + size
    return items[start:end], (str(end) if end < len(items) else "")


@dataclass(frozen=True)
class _Clause:
    """One clause of a list filter: ``display_name``, the resource id, or ``labels.KEY``."""

    field: str
    op: str
    value: str

    def matches(self, resource_id: str, display_name: str, labels: dict[str, str]) -> bool:
        if self.field.startswith("labels."):
            key = self.field.split(".", 1)[1]
            if self.op == ":":
                return key in labels
            hit = labels.get(key) == self.value
        elif self.field == "display_name":
            hit = display_name == self.value
        else:
            hit = resource_id == self.value
        return hit if self.op == "=" else not hit


def _compile_filter(text: str, *, id_field: str) -> Callable[[str, str, dict[str, str]], bool]:
    """The list filters Vertex AI documents: ``display_name="x"``, ``labels.k="v"``, ``labels.k:*``, AND."""
    clauses: list[_Clause] = []
    for raw in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE) if text.strip() else []:
        m = re.fullmatch(r'\s*([A-Za-z_.\-0-9]+)\s*(!=|=|:)\s*"?([^"]*)"?\s*', raw)
        if not m:
            raise _bad(f"Invalid filter {text!r}: cannot parse {raw!r}")
        key, op, value = m.groups()
        key = _snake(key)
        if key.startswith("labels."):
            if op == ":" and value != "*":
                raise _bad(f"Invalid filter {text!r}: labels support '=', '!=' and ':*'")
        elif key not in ("display_name", id_field) or op == ":":
            raise _bad(f"Invalid filter {text!r}: field {key!r} is not filterable with {op!r}")
        clauses.append(_Clause(key, op, value))
    return lambda i, d, labels: all(c.matches(i, d, labels) for c in clauses)


class _DropConnection(Exception):
    """Close the connection without an answer."""


class _Handler(BaseHTTPRequestHandler):
    owner: FakeVertex
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY each answer waits ~40 ms on a delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        try:
            status, payload, headers = self.owner.handle(self.command, self.path, body)
        except _DropConnection:
            self.close_connection = True
            return
        except ApiError as exc:
            status = exc.http_status
            payload = {"error": {"code": exc.http_status, "message": exc.message, "status": exc.status}}
        if isinstance(payload, bytes):  # a raw body (a Server-Sent Events stream) with its own type
            data, content_type = payload, headers.pop("Content-Type", "application/octet-stream")
        else:
            data, content_type = json.dumps(payload).encode(), "application/json; charset=UTF-8"
        self.send_response(
            status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        )
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve  # noqa: N815 - BaseHTTPRequestHandler's naming
    do_POST = _serve  # noqa: N815
    do_PATCH = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes (for tests on background work)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
