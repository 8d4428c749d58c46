"""A sha256 manifest of every file of a packaged repository, and its verification.

The manifest lies beside ``model_repository/`` (``<root>/manifest.json``) so Triton never
sees it as a model; deployment calls :func:`verify_manifest` before uploading or serving.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vxdeploy.components.common.errors import InternalError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1


class ManifestMismatchError(InternalError):
    """A repository's files differ from its manifest (changed, missing or unexpected files)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    """Every file under ``root`` except the manifest itself (a deeper manifest.json is content)."""
    own = root / MANIFEST_FILE
    return sorted(p for p in root.rglob("*") if p.is_file() and p != own)


def build_manifest(root: Path) -> dict[str, Any]:
    """The manifest of every file under ``root`` (paths relative to it, '/'-separated)."""
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in _files(root)
    }
    return {"version": MANIFEST_VERSION, "algorithm": "sha256", "files": files}


def write_manifest(root: Path) -> dict[str, Any]:
    """Write ``<root>/manifest.json`` over everything under ``root`` and return it."""
    manifest = build_manifest(root)
    path = root / MANIFEST_FILE
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return manifest


def manifest_digest(root: Path) -> str:
    """The sha256 of ``<root>/manifest.json``: one fingerprint of the whole repository."""
    return sha256_file(root / MANIFEST_FILE)


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise ManifestMismatchError(
            f"{str(root)!r} has no {MANIFEST_FILE}; package the repository with package_triton_repository"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def verify_manifest(root: str | Path) -> dict[str, Any]:
    """Check every file under ``root`` against ``<root>/manifest.json``.

    Args:
        root: The packaged repository (the directory holding ``manifest.json`` and ``model_repository/``).

    Returns:
        The manifest.

    Raises:
        ManifestMismatchError: naming each changed, missing or unexpected file.
    """
    root = Path(root)
    manifest = read_manifest(root)
    expected: dict[str, dict[str, Any]] = manifest["files"]
    actual = {p.relative_to(root).as_posix(): p for p in _files(root)}
    problems = [f"missing {name}" for name in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected {name}" for name in sorted(actual.keys() - expected.keys())]
    for name in sorted(expected.keys() & actual.keys()):
        digest = sha256_file(actual[name])
        if digest != expected[name]["sha256"]:
            problems.append(
                f"changed {name} (sha256 {digest[:12]}..., manifest {expected[name]['sha256'][:12]}...)"
            )
    if problems:
        raise ManifestMismatchError(
            f"repository {str(root)!r} does not match its manifest: {'; '.join(problems)}. "
            "Re-run the package stage instead of editing a packaged repository."
        )
    return manifest
