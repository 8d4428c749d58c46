"""Does a container image exist and can it be read? Asked of its registry's Docker Registry HTTP API v2.

``HEAD /v2/<repository>/manifests/<tag>`` answers 200 when the manifest exists, 404 when it does
not, 401/403 when the caller may not pull it. Artifact Registry (``*.pkg.dev``) and Container Registry
(``gcr.io``) take a Google access token (google-auth, Application Default Credentials) as the
bearer token; other registries hand out one through the ``WWW-Authenticate: Bearer realm=...``
challenge (anonymously for public images). A loopback registry (``127.0.0.1:PORT/...``, a test fake)
is reached over plain HTTP without credentials.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import requests

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
_GOOGLE_HOSTS = re.compile(r"(^|\.)(pkg\.dev|gcr\.io)$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class ImageRef:
    """An image reference split into the registry host, the repository path and the tag or digest."""

    host: str
    repository: str
    reference: str

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        """Split ``host[:port]/path/name[:tag|@digest]`` as Docker does (no host: Docker Hub)."""
        name, at, digest = ref.partition("@")
        tag = ""
        if not at:
            head, colon, maybe_tag = name.rpartition(":")
            if colon and "/" not in maybe_tag:
                name, tag = head, maybe_tag
        first, slash, rest = name.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            host, repository = first, rest
        else:
            host, repository = "registry-1.docker.io", name if slash else f"library/{name}"
        if not repository:
            raise ValueError(f"{ref!r} names no repository")
        return cls(host, repository, digest if at else (tag or "latest"))

    @property
    def loopback(self) -> bool:
        return self.host.split(":")[0] in _LOOPBACK or self.host.startswith("[::1]")


ImageState = Literal["present", "missing", "denied", "unreachable"]


@dataclass(frozen=True)
class ImageStatus:
    """What the registry answered about one image."""

    image: str
    state: ImageState
    detail: str = ""


GoogleToken = Callable[[], str]


def google_access_token() -> str:
    """An OAuth access token from Application Default Credentials (what Vertex AI pulls with)."""
    import google.auth
    from google.auth.transport.requests import Request

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(Request())
    return str(credentials.token)


def check_image(
    image: str,
    *,
    endpoint: str | None = None,
    google_token: GoogleToken = google_access_token,
    session: requests.Session | None = None,
    timeout_s: float = 10.0,
) -> ImageStatus:
    """Ask the image's registry whether its manifest exists and may be pulled.

    Args:
        image: The image reference, e.g. ``us-docker.pkg.dev/my-project/vxdeploy/serving:0.1.0``.
        endpoint: Base URL to send the request to instead of the image's host
            (``http://127.0.0.1:PORT``), for a registry behind another address or a fake.
        google_token: Gives the bearer token for Google registries.
        session: HTTP session to use.
        timeout_s: Timeout of each HTTP request.

    Returns:
        ``present``, ``missing`` (no such repository or tag), ``denied`` (the caller may not
        read it) or ``unreachable`` (no answer, or no credentials), with the detail.
    """
    ref = ImageRef.parse(image)
    http = session or requests.Session()
    base = endpoint.rstrip("/") if endpoint else f"{'http' if ref.loopback else 'https'}://{ref.host}"
    url = f"{base}/v2/{ref.repository}/manifests/{ref.reference}"
    headers = {"Accept": MANIFEST_TYPES}
    google = bool(_GOOGLE_HOSTS.search(ref.host.split(":")[0])) and not ref.loopback
    try:
        if google:
            try:
                headers["Authorization"] = f"Bearer {google_token()}"
            except Exception as exc:  # google.auth raises several kinds (no ADC, refresh failed)
                return ImageStatus(
                    image,
                    "unreachable",
                    f"no Google credentials to read the registry ({type(exc).__name__}: {exc}); run "
                    "`gcloud auth application-default login`",
                )
        resp = http.head(url, headers=headers, timeout=timeout_s, allow_redirects=True)
        if resp.status_code == 401 and "Authorization" not in headers:
            token = _challenge_token(http, resp.headers.get("WWW-Authenticate", ""), timeout_s)
            if token:
                headers["Authorization"] = f"Bearer {token}"
                resp = http.head(url, headers=headers, timeout=timeout_s, allow_redirects=True)
    except requests.RequestException as exc:
        return ImageStatus(image, "unreachable", f"{base} did not answer ({type(exc).__name__})")
    if resp.status_code == 200:
        return ImageStatus(image, "present", resp.headers.get("Docker-Content-Digest", ""))
    if resp.status_code == 404:
        return ImageStatus(image, "missing", f"{ref.host} has no {ref.repository}:{ref.reference}")
    if resp.status_code in (401, 403):
        return ImageStatus(image, "denied", f"{ref.host} answered {resp.status_code}")
    return ImageStatus(image, "unreachable", f"{ref.host} answered HTTP {resp.status_code}")


def _challenge_token(http: requests.Session, challenge: str, timeout_s: float) -> str:
    """A bearer token from the registry's token service (Docker's token authentication), or ''."""
    scheme, _, params_text = challenge.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    params = dict(_CHALLENGE_PARAM.findall(params_text))
    realm = params.pop("realm", "")
    if not realm:
        return ""
    resp = http.get(realm, params=params, timeout=timeout_s)
    if resp.status_code != 200:
        return ""
    body = resp.json()
    return str(body.get("token") or body.get("access_token") or "")
