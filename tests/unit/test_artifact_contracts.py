"""Artifact contracts: what a stage writes on an artifact is what the next one reads, in one spelling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kfp import dsl

from vxdeploy.components.common.artifacts import (
    CONTRACTS,
    ArtifactMetadata,
    ArtifactMetadataError,
    CalibratedModel,
    Candidates,
    DatasetSamples,
    OnnxModel,
    SelectedModel,
    ServingContainer,
    SourceModel,
    TritonRepository,
    VertexEndpoint,
    VertexModel,
)
from vxdeploy.components.deploy.deploy import tensorrt_engines
from vxdeploy.components.deploy.model_upload import ServingContainer as DeployServingContainer

SIGNATURE = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 16]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 4]}],
}
CONTAINER: dict[str, Any] = {
    "image_uri": "us-docker.pkg.dev/p/vxdeploy/serving:0.1.0",
    "command": ["tritonserver"],
    "args": ["--model-repository=$(AIP_STORAGE_URI)"],
    "env": [{"name": "A", "value": "1"}],
    "ports": [{"container_port": 8000}],
    "predict_route": "/v2/models/m/infer",
    "health_route": "/v2/health/ready",
    "shared_memory_size_mb": 1024,
}
ENGINE = {"tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}

EXAMPLES: list[ArtifactMetadata] = [
    SourceModel(format="torch_export", file="model.pt2", signature=SIGNATURE, sha256="ab", uri="u", name="m"),
    DatasetSamples(samples=64, labelled=True),
    OnnxModel(
        file="model.onnx",
        signature=SIGNATURE,
        opset=19,
        sha256="cd",
        source_format="torch_export",
        exported=True,
        parity_reference="pytorch",
        parity_samples=64,
        parity={"max_abs_diff": 1e-6},
        name="m",
    ),
    CalibratedModel(produced=True, accepted=True, file="model.onnx", opset=19, excluded_layers=["conv1"]),
    Candidates(built=["onnxruntime_fp32"], not_built={"tensorrt_fp16": "no GPU"}, signature=SIGNATURE),
    SelectedModel(
        name="tensorrt_fp16",
        kind="tensorrt_fp16",
        precision="fp16",
        runtime="tensorrt",
        device="cuda",
        file="model.plan",
        sha256="ef",
        signature=SIGNATURE,
        engine=ENGINE,
    ),
    TritonRepository(
        model_name="m",
        models=["m"],
        kind="tensorrt_fp16",
        kinds={"m": "tensorrt_fp16"},
        model_repository="model_repository",
        manifest="manifest.json",
        manifest_sha256="12",
        files=3,
        total_bytes=100,
        max_batch_size=32,
        instance_kind="KIND_GPU",
        serving_container=ServingContainer.model_validate(CONTAINER),
        engines={"m": ENGINE},
    ),
    VertexModel(
        resourceName="projects/p/locations/l/models/1@2",
        model="projects/p/locations/l/models/1",
        versionId="2",
        displayName="m",
        artifactUri="gs://b/r",
        sha256="34",
        imageUri="img",
        predictRoute="/v2/models/m/infer",
    ),
    VertexEndpoint(
        resourceName="projects/p/locations/l/endpoints/9",
        endpointId="9",
        displayName="e",
        deployedModelId="7",
    ),
]


def test_every_contract_has_an_example() -> None:
    assert sorted(type(e).__name__ for e in EXAMPLES) == sorted(c.__name__ for c in CONTRACTS)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: type(e).__name__)
def test_what_is_written_on_an_artifact_reads_back_the_same(
    example: ArtifactMetadata, tmp_path: Path
) -> None:
    artifact = dsl.Artifact(name="a", uri=str(tmp_path / "a"), metadata={})

    example.write(artifact)

    assert type(example).read(artifact) == example


def test_ints_kfp_turned_into_floats_read_back_as_ints() -> None:
    # kfp.local hands metadata back through a protobuf Struct: every number is a float
    written = EXAMPLES[0].to_metadata() | {"file": "model.pt2"}
    meta = OnnxModel.from_metadata({**EXAMPLES[2].to_metadata(), "opset": 19.0, "parity_samples": 64.0})

    assert (meta.opset, type(meta.opset), meta.parity_samples) == (19, int, 64)
    assert SourceModel.from_metadata(written).file == "model.pt2"


def test_a_missing_field_is_named_with_the_artifact_and_the_stage_that_writes_it() -> None:
    metadata = EXAMPLES[0].to_metadata()
    del metadata["signature"]

    with pytest.raises(ArtifactMetadataError) as err:
        SourceModel.from_metadata(metadata)

    message = str(err.value)
    assert "source_model" in message and "signature" in message and "intake stage" in message


def test_vertex_artifacts_keep_gcpc_spelling() -> None:
    assert set(EXAMPLES[-1].to_metadata()) == {"resourceName", "endpointId", "displayName", "deployedModelId"}
    assert EXAMPLES[-2].to_metadata()["versionId"] == "2"


def test_other_spellings_are_not_read() -> None:
    # a port spelt the REST way, or a kind under the old name, is not silently taken
    with pytest.raises(ArtifactMetadataError, match="container_port"):
        ServingContainer.from_metadata({**CONTAINER, "ports": [{"containerPort": 8000}]})
    assert tensorrt_engines({"candidate_kind": "tensorrt_fp16", "engine_metadata": ENGINE}) == []


def test_deploy_reads_the_engines_and_container_the_package_stage_writes() -> None:
    repository = EXAMPLES[6].to_metadata()

    engines = tensorrt_engines(repository)
    container = DeployServingContainer.from_metadata(repository["serving_container"], "m")

    assert engines == [("m", ENGINE)]
    assert (container.ports, container.env, container.shared_memory_mb) == ([8000], {"A": "1"}, 1024)
