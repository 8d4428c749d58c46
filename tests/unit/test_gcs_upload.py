"""Repository upload with the real google-cloud-storage client against gcp-storage-emulator on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.gcs import GcsEmulator, gcs_emulator
from vxdeploy.components.common.errors import UserError
from vxdeploy.components.package.gcs import UploadConflictError, upload_repository
from vxdeploy.components.package.manifest import ManifestMismatchError, write_manifest


@pytest.fixture()
def gcs() -> Iterator[GcsEmulator]:
    with gcs_emulator() as emulator:
        yield emulator


def _repository(root: Path, weights: bytes = b"weights-v1") -> Path:
    model = root / "model_repository" / "digits"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "digits"\nplatform: "onnxruntime_onnx"\n')
    (model / "1" / "model.onnx").write_bytes(weights)
    write_manifest(root)
    return root


def test_upload_puts_every_file_and_the_manifest_under_a_versioned_prefix(
    tmp_path: Path, gcs: GcsEmulator
) -> None:
    root = _repository(tmp_path / "repo")

    result = upload_repository(root, f"gs://{gcs.bucket}/staging/digits", client=gcs.client)

    prefix = f"staging/digits/{result.version}"
    assert result.uri == f"gs://{gcs.bucket}/{prefix}"
    assert result.model_repository_uri == f"{result.uri}/model_repository"
    assert gcs.names("staging/") == [
        f"{prefix}/manifest.json",
        f"{prefix}/model_repository/digits/1/model.onnx",
        f"{prefix}/model_repository/digits/config.pbtxt",
    ]
    assert gcs.read(f"{prefix}/model_repository/digits/1/model.onnx") == b"weights-v1"


def test_a_retry_uploads_nothing_and_lands_on_the_same_prefix(tmp_path: Path, gcs: GcsEmulator) -> None:
    root = _repository(tmp_path / "repo")
    first = upload_repository(root, f"gs://{gcs.bucket}/staging", client=gcs.client)

    again = upload_repository(root, f"gs://{gcs.bucket}/staging", client=gcs.client)

    assert again.uri == first.uri
    assert again.uploaded == []
    assert sorted(again.skipped) == sorted(first.uploaded)


def test_a_retry_after_a_partial_upload_sends_only_the_missing_file(tmp_path: Path, gcs: GcsEmulator) -> None:
    root = _repository(tmp_path / "repo")
    first = upload_repository(root, f"gs://{gcs.bucket}/staging", client=gcs.client)
    gcs.client.bucket(gcs.bucket).blob(f"staging/{first.version}/manifest.json").delete()

    again = upload_repository(root, f"gs://{gcs.bucket}/staging", client=gcs.client)

    assert again.uploaded == ["manifest.json"]


def test_a_different_file_at_an_existing_path_is_an_error_not_an_overwrite(
    tmp_path: Path, gcs: GcsEmulator
) -> None:
    root = _repository(tmp_path / "repo")
    first = upload_repository(root, f"gs://{gcs.bucket}/staging", client=gcs.client)
    name = f"staging/{first.version}/model_repository/digits/1/model.onnx"
    gcs.client.bucket(gcs.bucket).blob(name).upload_from_string(b"someone else's bytes")

    with pytest.raises(UploadConflictError, match=r"model\.onnx exists with other content"):
        upload_repository(root, f"gs://{gcs.bucket}/staging", client=gcs.client)
    assert gcs.read(name) == b"someone else's bytes"


def test_a_changed_repository_goes_to_a_new_prefix_beside_the_old_one(
    tmp_path: Path, gcs: GcsEmulator
) -> None:
    old = upload_repository(_repository(tmp_path / "v1"), f"gs://{gcs.bucket}/staging", client=gcs.client)

    new = upload_repository(
        _repository(tmp_path / "v2", b"weights-v2"), f"gs://{gcs.bucket}/staging", client=gcs.client
    )

    assert new.uri != old.uri
    assert gcs.read(f"staging/{old.version}/model_repository/digits/1/model.onnx") == b"weights-v1"


def test_a_repository_that_no_longer_matches_its_manifest_is_not_uploaded(
    tmp_path: Path, gcs: GcsEmulator
) -> None:
    root = _repository(tmp_path / "repo")
    (root / "model_repository" / "digits" / "1" / "model.onnx").write_bytes(b"edited after packaging")

    with pytest.raises(ManifestMismatchError, match="changed"):
        upload_repository(root, f"gs://{gcs.bucket}/staging", client=gcs.client)
    assert gcs.names() == []


def test_a_prefix_that_is_not_a_gs_uri_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="give a gs://bucket/path URI"):
        upload_repository(_repository(tmp_path / "repo"), "/local/dir", client=object())
