"""The sha256 manifest beside a packaged repository, and its verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vxdeploy.components.package.manifest import ManifestMismatchError, verify_manifest, write_manifest


def _repository(root: Path) -> Path:
    (root / "model_repository" / "m" / "1").mkdir(parents=True)
    (root / "model_repository" / "m" / "config.pbtxt").write_text('name: "m"\n')
    (root / "model_repository" / "m" / "1" / "model.onnx").write_bytes(b"\x08\x07onnx")
    write_manifest(root)
    return root


def test_manifest_lists_every_file_with_its_sha256_but_not_itself(tmp_path: Path) -> None:
    root = _repository(tmp_path)

    manifest = json.loads((root / "manifest.json").read_text())

    assert sorted(manifest["files"]) == ["model_repository/m/1/model.onnx", "model_repository/m/config.pbtxt"]
    assert len(manifest["files"]["model_repository/m/config.pbtxt"]["sha256"]) == 64


def test_an_untouched_repository_verifies(tmp_path: Path) -> None:
    root = _repository(tmp_path)

    manifest = verify_manifest(root)

    assert len(manifest["files"]) == 2


def test_a_changed_file_is_named(tmp_path: Path) -> None:
    root = _repository(tmp_path)
    (root / "model_repository" / "m" / "1" / "model.onnx").write_bytes(b"tampered")

    with pytest.raises(ManifestMismatchError, match=r"changed model_repository/m/1/model\.onnx"):
        verify_manifest(root)


def test_a_missing_and_an_unexpected_file_are_named(tmp_path: Path) -> None:
    root = _repository(tmp_path)
    (root / "model_repository" / "m" / "config.pbtxt").unlink()
    (root / "model_repository" / "m" / "extra.txt").write_text("x")

    with pytest.raises(ManifestMismatchError, match=r"missing .*config\.pbtxt.*unexpected .*extra\.txt"):
        verify_manifest(root)


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestMismatchError, match="no manifest.json"):
        verify_manifest(tmp_path)
