"""Resolve the URIs a run is given (local paths, ``gs://``, Vertex's ``/gcs/`` mount) to local files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vxdeploy.components.common.errors import UserError


def localize(uri: str, dest_dir: str | Path, *, what: str) -> Path:
    """Return a local path for ``uri``, downloading ``gs://`` objects into ``dest_dir``.

    On Vertex AI, ``gs://bucket/x`` is also mounted at ``/gcs/bucket/x``; that mount is used
    when present so nothing is copied.
    """
    if uri.startswith("gs://"):
        mounted = Path("/gcs") / uri.removeprefix("gs://")
        if mounted.exists():
            return mounted
        return _download(uri, Path(dest_dir))
    path = Path(uri).expanduser()
    if not path.exists():
        raise UserError(f"{what}={uri!r}: no such file; give a local path or a gs:// URI")
    return path


def _download(uri: str, dest_dir: Path) -> Path:
    import google.cloud.storage as storage

    bucket_name, _, blob_name = uri.removeprefix("gs://").partition("/")
    client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "vxdeploy")
    blob = client.bucket(bucket_name).blob(blob_name)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / Path(blob_name).name
    tmp = target.with_suffix(target.suffix + ".part")
    blob.download_to_filename(str(tmp))
    tmp.replace(target)
    return target


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a file so that ``dst`` is either absent or complete."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return dst
