"""Upload a packaged repository to Cloud Storage under a versioned prefix that is never overwritten.

The version is the repository's manifest digest, so the same repository always lands at the
same prefix: a retried upload skips every object whose checksum already matches, and a
different file at an existing path is an error, never an overwrite. The manifest goes last,
so its presence marks a complete upload.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api_core.exceptions import PreconditionFailed

from vxdeploy.components.common.errors import UserError
from vxdeploy.components.package.manifest import MANIFEST_FILE, manifest_digest, verify_manifest
from vxdeploy.components.package.repository import MODEL_REPOSITORY_DIR

VERSION_LENGTH = 16


class UploadConflictError(UserError):
    """An object at the versioned prefix differs from the file that belongs there."""


@dataclass(frozen=True)
class UploadResult:
    """Where the repository is and what this call uploaded."""

    uri: str
    """``gs://bucket/<prefix>/<version>``: the repository root (manifest.json, model_repository/)."""
    version: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0

    @property
    def model_repository_uri(self) -> str:
        """The Triton model repository, Vertex AI's ``artifact_uri``."""
        return f"{self.uri}/{MODEL_REPOSITORY_DIR}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "model_repository_uri": self.model_repository_uri,
            "version": self.version,
            "uploaded": self.uploaded,
            "skipped": self.skipped,
            "bytes_uploaded": self.bytes_uploaded,
        }


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> (``bucket``, ``a/b``).

    Raises:
        UserError: when ``uri`` is not a ``gs://`` URI with a bucket.
    """
    if not uri.startswith("gs://") or not uri.removeprefix("gs://").split("/", 1)[0]:
        raise UserError(f"gcs_prefix={uri!r}: give a gs://bucket/path URI (e.g. deployment.staging_bucket)")
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    return bucket, path.strip("/")


def _md5_base64(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


def _already_there(bucket: Any, bucket_name: str, blob_name: str, md5: str, path: Path) -> bool:
    """True when the object holds exactly this file; False when absent.

    Raises:
        UploadConflictError: when the object holds something else.
    """
    existing = bucket.get_blob(blob_name)
    if existing is None:
        return False
    if existing.md5_hash == md5 and existing.size == path.stat().st_size:
        return True
    raise UploadConflictError(
        f"gs://{bucket_name}/{blob_name} exists with other content (md5 {existing.md5_hash}, local {md5}); "
        "versioned prefixes are never overwritten. Delete the object or upload to a new gcs_prefix"
    )


def default_client() -> Any:
    """A Cloud Storage client with the environment's project and credentials."""
    import google.cloud.storage as storage

    return storage.Client()


def upload_repository(local_dir: str | Path, gcs_prefix: str, client: Any = None) -> UploadResult:
    """Upload a packaged repository to ``<gcs_prefix>/<version>``; safe to retry.

    Args:
        local_dir: The packaged repository (holding ``manifest.json``); verified before upload.
        gcs_prefix: ``gs://bucket/path`` under which the version folder is made.
        client: A ``google.cloud.storage.Client``; default: one for the environment.

    Returns:
        The versioned URI and which files were uploaded or already there.

    Raises:
        ManifestMismatchError: when the local files do not match their manifest.
        UploadConflictError: when an object at the versioned prefix has other content.
    """
    root = Path(local_dir)
    manifest = verify_manifest(root)
    version = manifest_digest(root)[:VERSION_LENGTH]
    bucket_name, base = split_gcs_uri(gcs_prefix)
    prefix = f"{base}/{version}" if base else version
    client = client if client is not None else default_client()
    bucket = client.bucket(bucket_name)
    # The manifest last: a reader that finds it can trust every file it lists is uploaded.
    names = sorted(manifest["files"]) + [MANIFEST_FILE]
    uploaded: list[str] = []
    skipped: list[str] = []
    sent = 0
    for name in names:
        path = root / name
        blob_name = f"{prefix}/{name}"
        md5 = _md5_base64(path)
        if _already_there(bucket, bucket_name, blob_name, md5, path):
            skipped.append(name)
            continue
        blob = bucket.blob(blob_name)
        blob.metadata = {"sha256": manifest["files"][name]["sha256"]} if name in manifest["files"] else {}
        try:
            # if_generation_match=0: the service itself refuses to replace an object made meanwhile.
            blob.upload_from_filename(str(path), if_generation_match=0)
        except PreconditionFailed:
            if not _already_there(bucket, bucket_name, blob_name, md5, path):
                raise
            skipped.append(name)
            continue
        uploaded.append(name)
        sent += path.stat().st_size
    return UploadResult(
        uri=f"gs://{bucket_name}/{prefix}",
        version=version,
        uploaded=uploaded,
        skipped=skipped,
        bytes_uploaded=sent,
    )
