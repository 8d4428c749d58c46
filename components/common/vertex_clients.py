"""Vertex AI GAPIC clients over REST, for the regional endpoint or an override (a loopback fake).

One rule for every caller: real credentials never travel over plain HTTP, so a ``http://``
endpoint (a test fake) gets anonymous credentials; otherwise the given credentials, or
Application Default Credentials when none are given.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials

_Client = TypeVar("_Client")


def vertex_api_endpoint(location: str, api_endpoint: str | None = None) -> str:
    """The Vertex AI API endpoint: ``api_endpoint`` if given, else the regional one."""
    return api_endpoint or f"{location}-aiplatform.googleapis.com"


def client_credentials(api_endpoint: str, credentials: Credentials | None) -> Credentials | None:
    """The credentials to send: the given ones; anonymous for a plain-HTTP (loopback) endpoint.

    ``None`` lets the client find Application Default Credentials.
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
