"""A container registry on 127.0.0.1 speaking the Docker Registry HTTP API v2 manifest protocol.

``HEAD``/``GET /v2/<name>/manifests/<reference>`` answer 200 with the manifest's digest, or 404 with
``MANIFEST_UNKNOWN`` / ``NAME_UNKNOWN``. With ``require_token`` (the default) every ``/v2/`` call without
a token the fake issued is answered 401 with Docker's ``WWW-Authenticate: Bearer realm=...`` challenge,
and ``GET /token`` hands out pull tokens, as Docker Hub and Artifact Registry do.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.loopback import LoopbackHTTPServer

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class RegistryRequest:
    method: str
    path: str
    authorized: bool


class FakeRegistry(LoopbackHTTPServer):
    """An in-memory registry holding image manifests by repository and tag.

    Args:
        require_token: Refuse ``/v2/`` calls without a bearer token from ``/token`` (401 challenge).
        accepted_tokens: Bearer tokens accepted as they are (a Google access token, say).
    """

    def __init__(self, *, require_token: bool = True, accepted_tokens: tuple[str, ...] = ()) -> None:
        self.require_token = require_token
        self._manifests: dict[tuple[str, str], bytes] = {}
        self._denied: set[str] = set()
        self._tokens: set[str] = set(accepted_tokens)
        self.requests: list[RegistryRequest] = []
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of the image references it serves."""
        return f"127.0.0.1:{self.port}"

    def prefix(self, path: str = "vxdeploy-test/vxdeploy") -> str:
        """A registry prefix on this fake, for ``VXDEPLOY_REGISTRY`` or ``vxdeploy compile --registry``."""
        return f"{self.host}/{path}"

    def push(self, image: str) -> str:
        """Store a manifest for ``HOST/REPOSITORY:TAG`` (the host must be this fake's); return its digest."""
        host, _, rest = image.partition("/")
        if host != self.host:
            raise ValueError(f"{image!r} is not on this registry ({self.host})")
        repository, _, tag = rest.rpartition(":")
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": {"digest": f"sha256:{tag}"}}
        ).encode()
        with self._lock:
            self._manifests[(repository, tag)] = body
        return _digest(body)

    def deny(self, repository: str) -> None:
        """Answer 403 DENIED for ``repository`` (a caller without reader rights)."""
        with self._lock:
            self._denied.add(repository)

    def start(self, port: int = 0) -> FakeRegistry:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._serve(Handler, port, name="fake-registry")
        return self

    # ----------------------------------------------------------------- protocol
    def answer(self, method: str, url: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        path = parts.path
        if path == "/token":
            token = secrets.token_hex(8)
            with self._lock:
                self._tokens.add(token)
            scope = parse_qs(parts.query).get("scope", [""])[0]
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps(
                    {"token": token, "access_token": token, "expires_in": 300, "scope": scope}
                ).encode(),
            )
        if not path.startswith("/v2/"):
            return _error(404, "NOT_FOUND", f"{path} is not a registry API path")
        auth = str(headers.get("Authorization", ""))
        with self._lock:
            authorized = auth.startswith("Bearer ") and auth.removeprefix("Bearer ") in self._tokens
            self.requests.append(RegistryRequest(method, path, authorized))
        name, sep, reference = path.removeprefix("/v2/").rpartition("/manifests/")
        if self.require_token and not authorized:
            scope = f"repository:{name}:pull" if sep else "registry:catalog:*"
            status, hdrs, body = _error(401, "UNAUTHORIZED", "authentication required")
            hdrs["WWW-Authenticate"] = (
                f'Bearer realm="http://{self.host}/token",service="fake-registry",scope="{scope}"'
            )
            return status, hdrs, body
        if path == "/v2/":
            return 200, {"Content-Type": "application/json"}, b"{}"
        if not sep:
            return _error(404, "NOT_FOUND", f"{path} is not served by this fake")
        with self._lock:
            if name in self._denied:
                return _error(403, "DENIED", f"permission denied on repository {name}")
            manifest = self._manifests.get((name, reference))
            known = any(repo == name for repo, _ in self._manifests)
        if manifest is None:
            if known:
                return _error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {name}:{reference}")
            return _error(404, "NAME_UNKNOWN", f"repository name not known to registry: {name}")
        return (
            200,
            {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": _digest(manifest)},
            manifest,
        )


def _digest(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return status, {"Content-Type": "application/json"}, body


class _Handler(BaseHTTPRequestHandler):
    owner: FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def _reply(self, send_body: bool) -> None:
        status, headers, body = self.owner.answer(self.command, self.path, self.headers)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(send_body=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(send_body=True)
