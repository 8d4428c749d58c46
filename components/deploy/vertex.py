"""Vertex AI clients with a configurable API endpoint, operation polling and ``gcp_resources`` records.

Every Vertex AI call of vxdeploy goes through :class:`VertexApi`: the GAPIC ``aiplatform_v1``
REST clients, pointed at ``{location}-aiplatform.googleapis.com`` or at an override (a test
fake, a VPC-SC endpoint), with the transient-error retry and the operation polling used
everywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2

from components.common.config import DeploymentConfig
from components.common.errors import CloudOperationError
from components.common.stage import write_json

MANAGED_BY_KEY = "managed-by"
MANAGED_BY_VALUE = "vxdeploy"
RUN_ID_KEY = "vxdeploy-run-id"
CHECKSUM_KEY = "vxdeploy-artifact-sha256"

_T = TypeVar("_T")

# A 503 or 429 means the service did not act on the request, so even a non-idempotent call
# (deploy, upload) may be sent again; a dropped connection may have been acted on, so only
# reads and compare-and-set updates retry on it.
_REJECTED = (gexc.ServiceUnavailable, gexc.TooManyRequests)
WRITE_RETRY = gretry.Retry(
    predicate=gretry.if_exception_type(*_REJECTED), initial=0.2, maximum=5.0, multiplier=2.0, timeout=60.0
)
READ_RETRY = gretry.Retry(
    predicate=gretry.if_exception_type(*_REJECTED, requests.ConnectionError),
    initial=0.2,
    maximum=5.0,
    multiplier=2.0,
    timeout=60.0,
)


class OperationTimeoutError(CloudOperationError):
    """A long-running operation did not finish in time; it is left running on Vertex AI."""

    def __init__(self, message: str, operation_name: str) -> None:
        super().__init__(message)
        self.operation_name = operation_name


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
    """

    project: str
    location: str
    models: aiplatform_v1.ModelServiceClient
    endpoints: aiplatform_v1.EndpointServiceClient
    base_url: str
    credentials: Credentials
    max_poll_interval_s: float = 15.0
    call_timeout_s: float = 60.0
    retry_timeout_s: float = 60.0
    overridden: bool = False
    insecure: bool = False
    _endpoints_beta: Any = field(default=None, repr=False)
    _http: requests.Session | None = field(default=None, repr=False)

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

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


def connect(deployment: DeploymentConfig, credentials: Credentials | None = None) -> VertexApi:
    """Vertex AI clients for the deployment section.

    Requests go to ``{location}-aiplatform.googleapis.com`` or to ``deployment.api_endpoint``, with
    Application Default Credentials; a plain-HTTP override (``http://127.0.0.1:PORT``, a test fake)
    gets anonymous credentials instead.
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
            credentials = AnonymousCredentials()
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
        retry_timeout_s=deployment.retry_timeout_s,
        overridden=bool(override),
        insecure=insecure,
    )


def call(fn: Callable[..., _T], request: Any, *, api: VertexApi, write: bool = False) -> _T:
    """One GAPIC call with vxdeploy's retry and timeout."""
    retry = (WRITE_RETRY if write else READ_RETRY).with_timeout(api.retry_timeout_s)
    return fn(request=request, retry=retry, timeout=api.call_timeout_s)


def get_operation(api: VertexApi, name: str) -> operations_pb2.Operation:
    """Read an operation by name (any Vertex AI operation, whichever service made it)."""
    request = operations_pb2.GetOperationRequest(name=name)
    op: operations_pb2.Operation = READ_RETRY.with_timeout(api.retry_timeout_s)(api.endpoints.get_operation)(
        request=request, timeout=api.call_timeout_s
    )
    return op


def cancel_operation(api: VertexApi, name: str) -> None:
    request = operations_pb2.CancelOperationRequest(name=name)
    READ_RETRY.with_timeout(api.retry_timeout_s)(api.endpoints.cancel_operation)(
        request=request, timeout=api.call_timeout_s
    )


def wait_for_operation(
    api: VertexApi,
    name: str,
    *,
    timeout_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> operations_pb2.Operation:
    """Poll an operation until it is done, backing off from 0.05 s to ``api.max_poll_interval_s``.

    Raises:
        CloudOperationError: the operation finished with an error (its message and code named).
        OperationTimeoutError: it is still running after ``timeout_s``; it is left running so that
            a retried task can resume it.
    """
    deadline = time.monotonic() + timeout_s
    interval = 0.05
    while True:
        op = get_operation(api, name)
        if op.done:
            if op.HasField("error"):
                raise CloudOperationError(
                    f"{what} failed: {op.error.message or 'no message'} (google.rpc code {op.error.code}); "
                    f"operation {name}"
                )
            return op
        left = deadline - time.monotonic()
        if left <= 0:
            raise OperationTimeoutError(
                f"{what} did not finish within {timeout_s:g} s; operation {name} is still running on Vertex "
                "AI. "
                "A retry of this task resumes it; to stop it instead: gcloud ai operations cancel "
                f"{name.rsplit('/', 1)[-1]} --region=<location>",
                name,
            )
        sleep(min(interval, left))
        interval = min(interval * 2, api.max_poll_interval_s)


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


def label_value(text: str) -> str:
    """``text`` as a valid label value (lowercase letters, digits, ``_``, ``-``; at most 63).

    Long values keep a readable head and a hash of the whole, so two different run ids never
    collide after truncation.
    """
    value = re.sub(r"[^a-z0-9_-]", "-", text.lower())
    if len(value) <= 63:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{value[:50]}-{digest}"


def resource_id(name: str) -> str:
    """The last segment of a resource name, without a version (``.../models/42@3`` -> ``42``)."""
    return name.rsplit("/", 1)[-1].split("@", 1)[0]


def same_resource(a: str, b: str) -> bool:
    """Whether two resource names denote one resource (project id and number are interchangeable)."""
    strip = re.compile(r"^projects/[^/]+/")
    return strip.sub("", a.split("@", 1)[0]) == strip.sub("", b.split("@", 1)[0])
