"""Vertex AI's Triton container settings produced beside the repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.cloud.aiplatform_v1.types import ModelContainerSpec
from onnx import TensorProto, helper, numpy_helper

from vxdeploy.components.common import images
from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package.ensemble import EnsembleStep, ModelPart, package_ensemble
from vxdeploy.components.package.repository import TritonRepository, package_triton_repository
from vxdeploy.components.package.vertex import model_upload_kwargs, vertex_serving_container

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 4)),),
    outputs=(TensorSpec("output", "float32", ("batch", 4)),),
)


def _onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "bias"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "bias")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def _single(
    tmp_path: Path, kind: str = "onnxruntime_fp32", triton: TritonConfig | None = None
) -> TritonRepository:
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = _onnx(tmp_path / "m.onnx") if kind.startswith("onnx") else tmp_path / "m.bin"
    if not kind.startswith("onnx"):
        source.write_bytes(b"engine or package bytes")
    return package_triton_repository(
        source,
        kind,
        SIGNATURE,
        model_name="digits",
        triton=triton or TritonConfig(),
        instance_kind="KIND_GPU",
        out_dir=tmp_path / "repo",
    )


def test_single_model_container_serves_the_repository_vertex_copies_on_port_8000(tmp_path: Path) -> None:
    container = vertex_serving_container(_single(tmp_path), TritonConfig(shared_memory_mb=2048))

    assert container["image_uri"] == images.serving_image()
    assert container["command"] == ["tritonserver"]
    assert "--model-repository=$(AIP_STORAGE_URI)" in container["args"]
    assert not any(a.startswith("--vertex-ai-default-model") for a in container["args"])
    assert container["ports"] == [{"container_port": 8000}]
    assert container["predict_route"] == "/v2/models/digits/infer"
    assert container["health_route"] == "/v2/health/ready"
    assert container["shared_memory_size_mb"] == 2048


def test_the_container_spec_is_accepted_by_aiplatform_as_it_is(tmp_path: Path) -> None:
    container = vertex_serving_container(_single(tmp_path), TritonConfig())

    spec = ModelContainerSpec(**container)

    assert spec.ports[0].container_port == 8000
    assert model_upload_kwargs(container)["serving_container_ports"] == [8000]


def test_every_model_kind_is_served_from_the_project_serving_image_of_the_configured_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a registry chosen for this run (as a compiled pipeline sets it in every task)
    monkeypatch.setenv("VXDEPLOY_REGISTRY", "europe-docker.pkg.dev/acme-ml/serving-images")

    # when ONNX, AOT Inductor and TensorRT repositories are given their containers
    served = {
        kind: vertex_serving_container(_single(tmp_path / kind, kind), TritonConfig())["image_uri"]
        for kind in ("onnxruntime_fp32", "aoti", "tensorrt_fp16")
    }

    # then all of them name that registry's serving image (Vertex AI has no prebuilt Triton image)
    want = f"europe-docker.pkg.dev/acme-ml/serving-images/serving:{images.image_tag()}"
    assert served == dict.fromkeys(served, want)


def test_an_explicit_serving_image_wins(tmp_path: Path) -> None:
    container = vertex_serving_container(
        _single(tmp_path, "aoti"), TritonConfig(serving_image="example/triton:1")
    )

    assert container["image_uri"] == "example/triton:1"


def test_response_cache_gets_a_server_cache_of_the_configured_size(tmp_path: Path) -> None:
    triton = TritonConfig(response_cache=True, response_cache_mb=64)

    container = vertex_serving_container(_single(tmp_path, triton=triton), triton)

    assert f"--cache-config=local,size={64 * 1024 * 1024}" in container["args"]


def test_several_models_name_the_ensemble_as_vertex_default_model(tmp_path: Path) -> None:
    part = ModelPart("encoder", "onnxruntime_fp32", SIGNATURE, _onnx(tmp_path / "e.onnx"))
    repo = package_ensemble(
        [part],
        [EnsembleStep("encoder", {"input": "input"}, {"output": "output"})],
        triton=TritonConfig(),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
        name="pipeline",
    )

    container = vertex_serving_container(repo, TritonConfig())

    assert "--vertex-ai-default-model=pipeline" in container["args"]
    assert container["predict_route"] == "/v2/models/pipeline/infer"
