"""Vertex AI clients with a configurable API endpoint, the retry policy, operations and ``gcp_resources``.

Every Vertex AI call of vxdeploy goes through :class:`VertexApi`: the GAPIC ``aiplatform_v1``
REST clients, pointed at ``{location}-aiplatform.googleapis.com`` or at an override (a test
fake, a VPC-SC endpoint). Reads and etag-guarded writes go through :func:`call` (the one
:class:`~vxdeploy.components.cloud.retry.RetryPolicy`); creates through :func:`create_once`, which looks
for what a lost create made before sending it again. Long-running operations are
``google.api_core.operation.Operation`` futures, resumable by name (:func:`resume_operation`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core import operation as goperation
from google.api_core import retry as gretry
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from vxdeploy.components.cloud.retry import TRANSIENT_ERRORS, RetryPolicy, describe
from vxdeploy.components.common.config import DeploymentConfig
from vxdeploy.components.common.errors import CloudOperationError
from vxdeploy.components.common.stage import write_json

_T = TypeVar("_T")
_Client = TypeVar("_Client")


class OperationTimeoutError(CloudOperationError):
    """A long-running operation did not finish in time; it is left running on Vertex AI."""

    def __init__(self, message: str, operation_name: str) -> None:
        super().__init__(message)
        self.operation_name = operation_name


# ----------------------------------------------------------------------------- client factory
def vertex_api_endpoint(location: str, api_endpoint: str | None = None) -> str:
    """The Vertex AI API endpoint: ``api_endpoint`` if given, else the regional one."""
    return api_endpoint or f"{location}-aiplatform.googleapis.com"


def client_credentials(api_endpoint: str, credentials: Credentials | None) -> Credentials | None:
    """The credentials to send: the given ones; anonymous for a plain-HTTP (loopback) endpoint.

    Real credentials never travel over plain HTTP. ``None`` lets the client find Application
    Default Credentials.
    """
    if credentials is not None:
        return credentials
    if api_endpoint.startswith("http://"):
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    return None


def vertex_client(
    client_class: type[_Client],
    location: str,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> _Client:
    """A REST client of ``client_class`` (e.g. ``aiplatform_v1.ModelServiceClient``) for ``location``."""
    endpoint = vertex_api_endpoint(location, api_endpoint)
    client: Any = client_class(  # type: ignore[call-arg]
        transport="rest",
        credentials=client_credentials(endpoint, credentials),
        client_options=ClientOptions(api_endpoint=endpoint),
    )
    return client  # type: ignore[no-any-return]


@dataclass
class VertexApi:
    """The Vertex AI clients of one project and location.

    Attributes:
        project: Project id (resource names the API returns carry the project number instead).
        location: Region, e.g. ``us-central1``.
        models: The ``ModelService`` client.
        endpoints: The ``EndpointService`` client.
        base_url: ``https://{location}-aiplatform.googleapis.com`` or the override, without a path.
        credentials: What the clients authenticate with.
        max_poll_interval_s: Longest pause between polls of an operation.
        call_timeout_s: Timeout of one API call.
        retry: The retry policy of every call.
    """

    project: str
    location: str
    models: aiplatform_v1.ModelServiceClient
    endpoints: aiplatform_v1.EndpointServiceClient
    base_url: str
    credentials: Credentials
    max_poll_interval_s: float = 15.0
    call_timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    overridden: bool = False
    insecure: bool = False
    _endpoints_beta: Any = field(default=None, repr=False)
    _http: requests.Session | None = field(default=None, repr=False)

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    @property
    def retry_timeout_s(self) -> float:
        """How long one call is retried (the policy's deadline)."""
        return self.retry.deadline_s

    def with_retry(self, policy: RetryPolicy) -> VertexApi:
        """The same clients under another retry policy (the exit handler's longer one, a test's fast one)."""
        return replace(self, retry=policy)

    @property
    def endpoints_beta(self) -> Any:
        """The ``v1beta1`` EndpointService client: Preview features (scale-to-zero) live only there."""
        if self._endpoints_beta is None:
            from google.cloud import aiplatform_v1beta1

            self._endpoints_beta = aiplatform_v1beta1.EndpointServiceClient(
                credentials=self.credentials,
                transport="rest",
                client_options={"api_endpoint": self._client_host},
            )
        return self._endpoints_beta

    @property
    def _client_host(self) -> str:
        return self.base_url if self.insecure else self.base_url.removeprefix("https://")

    def http(self) -> requests.Session:
        """An HTTP session for calls the GAPIC clients do not cover (invoke, private endpoints)."""
        if self._http is None:
            if self.insecure:
                self._http = requests.Session()
            else:
                from google.auth.transport.requests import AuthorizedSession

                self._http = AuthorizedSession(self.credentials)
        return self._http

    def resource_uri(self, name: str) -> str:
        """The URI ``gcp_resources`` records for a resource or operation name."""
        return f"{self.base_url}/v1/{name}"


def connect(
    deployment: DeploymentConfig,
    credentials: Credentials | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> VertexApi:
    """Vertex AI clients for the deployment section.

    Requests go to ``{location}-aiplatform.googleapis.com`` or to ``deployment.api_endpoint``, with
    Application Default Credentials; a plain-HTTP override (``http://127.0.0.1:PORT``, a test fake)
    gets anonymous credentials instead. Calls are retried for ``deployment.retry_timeout_s``
    unless ``retry`` says otherwise.
    """
    override = deployment.api_endpoint.rstrip("/")
    insecure = override.startswith("http://")
    base_url = (
        (override if "://" in override else f"https://{override}")
        if override
        else f"https://{deployment.location}-aiplatform.googleapis.com"
    )
    if credentials is None:
        if insecure:
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        else:
            import google.auth

            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    creds: Credentials = credentials
    host = base_url if insecure else base_url.removeprefix("https://")
    options = {"api_endpoint": host}
    return VertexApi(
        project=deployment.project,
        location=deployment.location,
        models=aiplatform_v1.ModelServiceClient(credentials=creds, transport="rest", client_options=options),
        endpoints=aiplatform_v1.EndpointServiceClient(
            credentials=creds, transport="rest", client_options=options
        ),
        base_url=base_url,
        credentials=creds,
        max_poll_interval_s=deployment.max_poll_interval_s,
        retry=retry or RetryPolicy(deadline_s=deployment.retry_timeout_s),
        overridden=bool(override),
        insecure=insecure,
    )


# ----------------------------------------------------------------------------- calls
def call(fn: Callable[..., _T], request: Any, *, api: VertexApi) -> _T:
    """One idempotent read or etag-guarded write, retried on transient errors until the deadline."""
    return fn(request=request, retry=api.retry.api_core(), timeout=api.call_timeout_s)


def create_once(
    what: str,
    send: Callable[[], _T],
    look_up: Callable[[], _T | None],
    *,
    api: VertexApi,
    passthrough: tuple[type[Exception], ...] = (),
) -> _T:
    """Send a non-idempotent create; after a transient failure, look for what it made before resending.

    A 500, a 504 or a dropped connection may come after the service acted: ``look_up`` finds that
    result (a version labelled with the run id, an operation under way), so a retry never makes a
    second one.

    Raises:
        CloudOperationError: Transient errors until the deadline, or another failure.
    """
    from vxdeploy.components.cloud.retry import call_with_retry

    def sent() -> _T:
        return send()

    return call_with_retry(
        what, sent, api.retry, recover=look_up, passthrough=passthrough, service="Vertex AI"
    )


# ----------------------------------------------------------------------------- operations
def get_operation(api: VertexApi, name: str) -> operations_pb2.Operation:
    """Read an operation by name (any Vertex AI operation, whichever service made it)."""
    request = operations_pb2.GetOperationRequest(name=name)
    op: operations_pb2.Operation = api.retry.api_core()(api.endpoints.get_operation)(
        request=request, timeout=api.call_timeout_s
    )
    return op


def cancel_operation(api: VertexApi, name: str) -> None:
    request = operations_pb2.CancelOperationRequest(name=name)
    api.retry.api_core()(api.endpoints.cancel_operation)(request=request, timeout=api.call_timeout_s)


def list_operations(api: VertexApi, resource_name: str) -> list[operations_pb2.Operation]:
    """The operations of one resource (an endpoint, a model), e.g. to find one whose answer was lost."""
    request = operations_pb2.ListOperationsRequest(name=resource_name)
    response: Any = api.retry.api_core()(api.endpoints.list_operations)(
        request=request, timeout=api.call_timeout_s
    )
    ops = getattr(response, "operations", response)
    return list(ops)


def pending_operations(api: VertexApi, resource_name: str, metadata_type: Any) -> list[str]:
    """Names of the unfinished operations on ``resource_name`` whose metadata is ``metadata_type``."""
    suffix = "." + metadata_type.__name__
    return [
        op.name
        for op in list_operations(api, resource_name)
        if not op.done and op.metadata.type_url.endswith(suffix)
    ]


def resume_operation(api: VertexApi, name: str, result_type: Any = empty_pb2.Empty) -> goperation.Operation:
    """The ``google.api_core.operation.Operation`` future of an operation known by name.

    Its refresh and cancel go through the retry policy, so a task that lost its process can pick up
    an operation an earlier try started.
    """
    proto = get_operation(api, name)
    if proto.done and proto.HasField("response") and result_type is empty_pb2.Empty:
        result_type = _message_class(proto.response.type_url) or result_type
    return goperation.Operation(
        proto,
        refresh=lambda retry=None: get_operation(api, name),
        cancel=lambda: cancel_operation(api, name),
        result_type=result_type,
    )


def _message_class(type_url: str) -> Any:
    """The protobuf class an ``Any`` of ``type_url`` holds, if it is known to this process."""
    from google.protobuf import descriptor_pool, message_factory

    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    except KeyError:
        return None
    return message_factory.GetMessageClass(descriptor)


class _NotDone(Exception):
    pass


def wait_for_operation(
    api: VertexApi,
    name: str,
    *,
    timeout_s: float,
    what: str,
) -> operations_pb2.Operation:
    """Poll an operation until it is done, backing off from 0.05 s to ``api.max_poll_interval_s``.

    Raises:
        CloudOperationError: the operation finished with an error (its message and code named).
        OperationTimeoutError: it is still running after ``timeout_s``; it is left running so that
            a retried task can resume it.
    """
    future = resume_operation(api, name)
    polling = gretry.Retry(
        predicate=gretry.if_exception_type(_NotDone),
        initial=0.05,
        maximum=api.max_poll_interval_s,
        multiplier=2.0,
        timeout=timeout_s,
    )

    def check() -> None:
        try:
            done = future.done()
        except TypeError:
            done = True  # done, with a response of another type than the future's: read it raw below
        if not done:
            raise _NotDone

    try:
        polling(check)()
    except gexc.RetryError:
        raise OperationTimeoutError(
            f"{what} did not finish within {timeout_s:g} s; operation {name} is still running on Vertex "
            "AI. A retry of this task resumes it; to stop it instead: gcloud ai operations cancel "
            f"{name.rsplit('/', 1)[-1]} --region=<location>",
            name,
        ) from None
    op: operations_pb2.Operation = future.operation
    if op.HasField("error"):
        raise CloudOperationError(
            f"{what} failed: {op.error.message or 'no message'} (google.rpc code {op.error.code}); "
            f"operation {name}"
        )
    return op


# ----------------------------------------------------------------------------- gcp_resources
def record_gcp_resource(path: str | Path | None, resource_type: str, uri: str) -> None:
    """Add one entry to a ``gcp_resources`` file (the Google Cloud Pipeline Components format).

    The file reads ``{"resources": [{"resourceType": "DeployModel", "resourceUri": "https://..."}]}``;
    Vertex AI Pipelines shows these and cancels listed operations when a run is cancelled.
    """
    if path is None:
        return
    entries = _read_resources(path)
    entry = {"resourceType": resource_type, "resourceUri": uri}
    if entry not in entries:
        entries.append(entry)
    write_json(path, {"resources": entries})


def recorded_operations(path: str | Path | None, resource_type: str) -> list[str]:
    """Operation names recorded in a ``gcp_resources`` file for ``resource_type``, newest last."""
    if path is None:
        return []
    names = []
    for entry in _read_resources(path):
        uri = str(entry.get("resourceUri", ""))
        if entry.get("resourceType") == resource_type and "/operations/" in uri:
            names.append(re.sub(r"^.*?/v1(?:beta1)?/", "", uri))
    return names


def _read_resources(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file() or not p.read_text().strip():
        return []
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError:
        return []
    resources = data.get("resources", []) if isinstance(data, dict) else []
    return [r for r in resources if isinstance(r, dict)]


# ----------------------------------------------------------------------------- names
def resource_id(name: str) -> str:
    """The last segment of a resource name, without a version (``.../models/42@3`` -> ``42``)."""
    return name.rsplit("/", 1)[-1].split("@", 1)[0]


def same_resource(a: str, b: str) -> bool:
    """Whether two resource names denote one resource (project id and number are interchangeable)."""
    strip = re.compile(r"^projects/[^/]+/")
    return strip.sub("", a.split("@", 1)[0]) == strip.sub("", b.split("@", 1)[0])


def until_deadline(deadline_s: float, *, start: float | None = None) -> Iterator[float]:
    """Seconds left, yielded until ``deadline_s`` has passed (for loops with a deadline of their own)."""
    t0 = time.monotonic() if start is None else start
    while (left := deadline_s - (time.monotonic() - t0)) > 0:
        yield left


__all__ = [
    "TRANSIENT_ERRORS",
    "OperationTimeoutError",
    "RetryPolicy",
    "VertexApi",
    "call",
    "cancel_operation",
    "client_credentials",
    "connect",
    "create_once",
    "describe",
    "get_operation",
    "list_operations",
    "pending_operations",
    "record_gcp_resource",
    "recorded_operations",
    "resource_id",
    "resume_operation",
    "same_resource",
    "vertex_api_endpoint",
    "vertex_client",
    "wait_for_operation",
]
