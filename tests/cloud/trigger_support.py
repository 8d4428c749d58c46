"""What the trigger tests share: a trigger on loopback with its caller check, and HTTP clients for it.

``TriggerUnderTest`` serves the real trigger (:func:`vxdeploy.pipelines.trigger.serve`) submitting to the
Vertex AI pipelines fake and checking tokens against the fake OIDC issuer. ``post`` sends a request
as Pub/Sub push does; ``exchange`` writes raw bytes to the socket, for framing that no HTTP client
would produce.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.oidc import FakeOidcIssuer
from tests.fakes.vertex_pipelines import FakeVertexPipelines
from vxdeploy.pipelines.trigger import TriggerServer, TriggerSettings, serve

MODEL = "projects/vx-project/locations/us-central1/models/digits"
AUDIENCE = "https://vxdeploy-trigger-abc123-uc.a.run.app"
PUSH_ACCOUNT = "pubsub-push@vx-project.iam.gserviceaccount.com"
EVENTARC_ACCOUNT = "eventarc-trigger@vx-project.iam.gserviceaccount.com"


@dataclass
class TriggerUnderTest:
    """A served trigger and the fakes behind it."""

    server: TriggerServer
    vertex: FakeVertexPipelines
    issuer: FakeOidcIssuer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def token(self, email: str = PUSH_ACCOUNT, audience: str = AUDIENCE, **claims: Any) -> str:
        return self.issuer.token(email=email, audience=audience, **claims)

    def jobs(self) -> int:
        return len(self.vertex.pipeline_jobs)


@contextmanager
def trigger(
    vertex: FakeVertexPipelines, template: Path, issuer: FakeOidcIssuer, **settings: Any
) -> Iterator[TriggerUnderTest]:
    """The trigger on a free loopback port (bucket check off); ``settings`` override the defaults."""
    options: dict[str, Any] = {
        "project": "vx-project",
        "location": "us-central1",
        "pipeline_root": "gs://vx-bucket/runs",
        "template_path": str(template),
        "api_endpoint": vertex.endpoint,
        "audiences": (AUDIENCE,),
        "invokers": (PUSH_ACCOUNT, EVENTARC_ACCOUNT),
        "certs_url": issuer.certs_url,
        **settings,
    }
    server = serve(TriggerSettings(**options), "127.0.0.1", 0, check_bucket=None)
    try:
        yield TriggerUnderTest(server, vertex, issuer)
    finally:
        server.shutdown()
        server.server_close()


def push(data: str, message_id: str | None = "m-1", **attributes: str) -> dict[str, Any]:
    """A Pub/Sub push envelope whose message data is ``data``."""
    message: dict[str, Any] = {"data": base64.b64encode(data.encode()).decode()}
    if message_id is not None:
        message["messageId"] = message_id
    if attributes:
        message["attributes"] = attributes
    return {"message": message, "subscription": "projects/vx-project/subscriptions/vxdeploy-trigger"}


def post(
    url: str,
    body: Any,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60,
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` (bytes as they are, anything else as JSON); the status and the JSON answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method="POST", headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read() or b"{}")


@dataclass(frozen=True)
class RawAnswer:
    status: int | None  # None: the server closed without answering
    text: str
    elapsed_s: float


def exchange(port: int, request: bytes | None, *, timeout_s: float = 30) -> RawAnswer:
    """Write ``request`` as it is, keep the connection open, and read the answer until the server closes.

    ``None`` sends nothing and closes the sending side at once.
    """
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
        if request is None:
            connection.shutdown(socket.SHUT_WR)
        else:
            connection.sendall(request)
        received = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    elapsed = time.monotonic() - started
    text = received.decode("latin-1")
    parts = text.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and text.startswith("HTTP/") and parts[1].isdigit() else None
    return RawAnswer(status, text, elapsed)
