"""A Cloud Storage fake on loopback: ``gcp-storage-emulator`` speaking the real JSON API.

Wrap ``gcs_emulator()`` in a fixture of your own (as ``tests/unit/test_gcs_upload.py`` does),
or import the ready ``gcs`` fixture into a ``conftest.py``::

    @pytest.fixture()
    def gcs() -> Iterator[GcsEmulator]:
        with gcs_emulator(bucket="my-bucket") as emulator:
            yield emulator

    def test_upload(gcs: GcsEmulator) -> None:
        gcs.client.bucket(gcs.bucket).blob("a.txt").upload_from_string(b"x")
        assert gcs.read("a.txt") == b"x"

The client is a real ``google.cloud.storage.Client`` pointed at the emulator through
``client_options={"api_endpoint": ...}`` with anonymous credentials, so no environment
variable (``STORAGE_EMULATOR_HOST``) is changed and tests may run side by side. Code that
builds its own client can be handed ``gcs.client``; a subprocess can use ``gcs.env``.
The emulator ignores preconditions (``if_generation_match``): do not test them against it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

DEFAULT_BUCKET = "vxdeploy-test"
DEFAULT_PROJECT = "vxdeploy-test"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class GcsEmulator:
    """A running emulator: its address, its default bucket and a client for it."""

    url: str
    bucket: str
    project: str
    client: Any  # google.cloud.storage.Client
    server: Any

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess whose default client should reach this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url, "GOOGLE_CLOUD_PROJECT": self.project}

    def names(self, prefix: str = "") -> list[str]:
        """Object names in the default bucket under ``prefix``, sorted."""
        return sorted(b.name for b in self.client.list_blobs(self.bucket, prefix=prefix))

    def read(self, name: str) -> bytes:
        """One object's bytes from the default bucket."""
        return bytes(self.client.bucket(self.bucket).blob(name).download_as_bytes())

    def new_client(self) -> Any:
        """Another client for this emulator (e.g. one per thread)."""
        return _client(self.url, self.project)


def _client(url: str, project: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
    )


@contextmanager
def gcs_emulator(bucket: str = DEFAULT_BUCKET, project: str = DEFAULT_PROJECT) -> Iterator[GcsEmulator]:
    """Start an in-memory emulator on 127.0.0.1 (a free port) with ``bucket``; always stop it."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        yield GcsEmulator(
            url=url, bucket=bucket, project=project, client=_client(url, project), server=server
        )
    finally:
        server.stop()


@pytest.fixture()
def gcs() -> Iterator[GcsEmulator]:
    """A fresh emulator per test with an empty default bucket."""
    with gcs_emulator() as emulator:
        yield emulator
