"""The package and serve-check stages on KFP artifact objects: metadata, reports, honest skips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kfp import dsl

from vxdeploy.components.common.errors import ConfigError, ModelIntakeError
from vxdeploy.components.common.images import SERVING_IMAGE
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package import stage
from vxdeploy.components.package.manifest import verify_manifest
from vxdeploy.components.package.serve_check import ServeCheckUnavailable
from vxdeploy.components.package.tritonserver import find_bundled_triton

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 4)),),
    outputs=(TensorSpec("output", "float32", ("batch", 2)),),
)
ENGINE_FACTS = {
    "precision": "fp16",
    "device": "cuda",
    "engine": {"tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA L4"},
    "gpu_name": "NVIDIA L4",
    "compute_capability": "8.9",
}


def _selected_engine(tmp_path: Path, **metadata: Any) -> dsl.Model:
    folder = tmp_path / "selected"
    folder.mkdir()
    (folder / "digits_fp16.plan").write_bytes(b"serialized engine")
    base = {
        "kind": "tensorrt_fp16",
        "file": "digits_fp16.plan",
        "signature": SIGNATURE.to_dict(),
        **ENGINE_FACTS,
    }
    return dsl.Model(uri=str(folder), metadata={**base, **metadata})


def _package(tmp_path: Path, selected: dsl.Model) -> tuple[dsl.Model, dict[str, Any]]:
    repository = dsl.Model(uri=str(tmp_path / "triton_repository"))
    report = dsl.Artifact(uri=str(tmp_path / "package_report"))
    stage.run_package(
        selected,
        {"name": "digits"},
        {},
        {"accelerator_type": "NVIDIA_L4", "accelerator_count": 1},
        repository,
        report,
    )
    return repository, json.loads(Path(report.path).read_text())


def test_package_stage_writes_a_verified_repository_and_the_metadata_deployment_needs(tmp_path: Path) -> None:
    repository, report = _package(tmp_path, _selected_engine(tmp_path))

    metadata = repository.metadata
    assert verify_manifest(repository.path)["files"]
    assert metadata["model_name"] == "digits"
    assert metadata["kind"] == "tensorrt_fp16"
    assert metadata["instance_kind"] == "KIND_GPU"
    assert metadata["manifest_sha256"] == report["summary"]["manifest_sha256"]
    assert metadata["serving_container"]["image_uri"] == SERVING_IMAGE
    facts = {k: v for k, v in ENGINE_FACTS.items() if k != "engine"}
    assert {k: metadata[k] for k in facts} == facts
    assert metadata["engines"] == {"digits": ENGINE_FACTS["engine"]}
    assert metadata["kinds"] == {"digits": "tensorrt_fp16"}
    assert report["summary"]["repository_path"] == repository.path


def test_selected_model_without_its_signature_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    selected = _selected_engine(tmp_path)
    del selected.metadata["signature"]

    with pytest.raises(ModelIntakeError, match=r"selected_model .*signature: Field required"):
        _package(tmp_path, selected)


def _source_and_eval(tmp_path: Path) -> tuple[dsl.Model, dsl.Dataset]:
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        torch.nn.Linear(4, 2).eval(), (torch.randn(2, 4),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(source_dir / "model.pt2"))
    eval_path = tmp_path / "eval.npz"
    np.savez(eval_path, input=np.ones((8, 4), np.float32))
    source = dsl.Model(
        uri=str(source_dir),
        metadata={"format": "torch_export", "file": "model.pt2", "signature": SIGNATURE.to_dict()},
    )
    return source, dsl.Dataset(uri=str(eval_path))


def _serve_check(
    tmp_path: Path, repository: dsl.Model, triton: dict[str, Any]
) -> tuple[dsl.Metrics, dict[str, Any]]:
    source, eval_data = _source_and_eval(tmp_path)
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    report = dsl.Artifact(uri=str(tmp_path / "serve_report"))
    stage.run_serve_check(repository, source, eval_data, triton, metrics, report)
    return metrics, json.loads(Path(report.path).read_text())


@pytest.mark.skipif(find_bundled_triton()[0] is None, reason="the skip reason differs without pytriton")
def test_a_best_effort_check_of_a_tensorrt_repository_is_skipped_never_passed(tmp_path: Path) -> None:
    repository, _ = _package(tmp_path, _selected_engine(tmp_path))

    metrics, report = _serve_check(tmp_path, repository, {"serve_check": "best_effort"})

    assert report["status"] == "skipped"
    assert "TensorRT" in report["reason"] and "best_effort: deploying anyway" in report["reason"]
    assert metrics.metadata == {}


@pytest.mark.skipif(find_bundled_triton()[0] is None, reason="the skip reason differs without pytriton")
def test_a_required_check_that_cannot_run_fails_so_deployment_does_not_happen(tmp_path: Path) -> None:
    repository, _ = _package(tmp_path, _selected_engine(tmp_path))

    with pytest.raises(ServeCheckUnavailable, match="serve check required but not run: .*TensorRT"):
        _serve_check(tmp_path, repository, {})

    report = json.loads((tmp_path / "serve_report").read_text())
    assert report["status"] == "failed" and report["summary"]["mode"] == "required"


def test_a_disabled_serve_check_is_reported_skipped(tmp_path: Path) -> None:
    repository, _ = _package(tmp_path, _selected_engine(tmp_path))

    _, report = _serve_check(tmp_path, repository, {"serve_check": False})

    assert report["status"] == "skipped"
    assert report["reason"] == "triton.serve_check is off: deployment goes ahead unchecked"


def test_a_missing_triton_install_is_reported_with_how_to_get_it() -> None:
    install, reason = find_bundled_triton("no_such_pytriton_package")

    assert install is None
    assert "pip install --no-deps nvidia-pytriton" in reason


def test_a_cpu_compiled_aoti_package_gets_cpu_instances_even_on_a_gpu_deployment(tmp_path: Path) -> None:
    folder = tmp_path / "selected"
    folder.mkdir()
    (folder / "model.pt2").write_bytes(b"aoti package")
    selected = dsl.Model(
        uri=str(folder),
        metadata={"kind": "aoti", "file": "model.pt2", "signature": SIGNATURE.to_dict(), "device": "cpu"},
    )

    repository, report = _package(tmp_path, selected)

    config = report["details"]["configs"]["digits"]
    assert repository.metadata["instance_kind"] == "KIND_CPU"
    assert 'key: "device"' in config and 'string_value: "cpu"' in config


def test_a_max_batch_size_beyond_the_engine_profile_is_refused_naming_both(tmp_path: Path) -> None:
    selected = _selected_engine(tmp_path, engine={"build_options": {"max_batch": 16}})

    with pytest.raises(ConfigError, match=r"triton\.max_batch_size=32: .*batches up to 16"):
        _package(tmp_path, selected)
