"""config.pbtxt for every candidate kind, built through Triton's protobuf and parsed back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from vxdeploy.components.common.config import DeploymentConfig, TritonConfig, parse_section
from vxdeploy.components.common.errors import ConfigError, ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package.model_config import parse_model_config
from vxdeploy.components.package.repository import package_triton_repository, resolve_instance_kind

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 4)),),
    outputs=(TensorSpec("output", "float32", ("batch", 3)),),
)


def _tiny_onnx(path: Path, *, external: bool = False) -> Path:
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.save(model, str(path), save_as_external_data=external, location="weights.bin", size_threshold=0)
    return path


def _candidate_file(tmp_path: Path, kind: str) -> Path:
    if kind.startswith("onnxruntime"):
        return _tiny_onnx(tmp_path / "candidate.onnx")
    # Packaging copies engines and AOTI packages byte for byte; their contents do not shape the config.
    path = tmp_path / ("engine.plan" if kind.startswith("tensorrt") else "model.pt2")
    path.write_bytes(b"not parsed by packaging")
    return path


def _read_config(root: Path, model: str = "model") -> mc.ModelConfig:
    return parse_model_config((root / "model_repository" / model / "config.pbtxt").read_text())


EXPECTED = {
    "onnxruntime_fp32": ("onnxruntime_onnx", "", "model.onnx"),
    "onnxruntime_int8": ("onnxruntime_onnx", "", "model.onnx"),
    "tensorrt_fp32": ("tensorrt_plan", "", "model.plan"),
    "tensorrt_fp16": ("tensorrt_plan", "", "model.plan"),
    "tensorrt_int8": ("tensorrt_plan", "", "model.plan"),
    "aoti": ("", "python", "model.pt2"),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_candidate_kind_gets_a_config_triton_parses_with_io_from_the_signature(
    tmp_path: Path, kind: str
) -> None:
    source = _candidate_file(tmp_path, kind)

    repo = package_triton_repository(
        source,
        kind,
        SIGNATURE,
        model_name="model",
        triton=TritonConfig(),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
    )

    config = _read_config(repo.root)
    platform, backend, file_name = EXPECTED[kind]
    assert (config.platform, config.backend) == (platform, backend)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("input", mc.TYPE_FP32, [4])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("output", mc.TYPE_FP32, [3])]
    assert (repo.model_repository / "model" / "1" / file_name).read_bytes() == source.read_bytes()


def test_aoti_version_folder_carries_the_python_backend_model_that_loads_the_package(tmp_path: Path) -> None:
    repo = package_triton_repository(
        _candidate_file(tmp_path, "aoti"),
        "aoti",
        SIGNATURE,
        model_name="model",
        triton=TritonConfig(),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
    )

    config = _read_config(repo.root)
    model_py = (repo.model_repository / "model" / "1" / "model.py").read_text()
    assert config.parameters["runtime"].string_value == "aoti"
    assert config.parameters["model_file"].string_value == "model.pt2"
    assert "aoti_load_package" in model_py


def test_dynamic_dims_become_minus_one_and_the_batch_dim_stays_without_triton_batching(
    tmp_path: Path,
) -> None:
    signature = ModelSignature(
        inputs=(TensorSpec("ids", "int64", ("batch", "seq")),),
        outputs=(TensorSpec("logits", "float16", ("batch", "seq", 8)),),
    )

    repo = package_triton_repository(
        _candidate_file(tmp_path, "tensorrt_fp16"),
        "tensorrt_fp16",
        signature,
        model_name="model",
        triton=TritonConfig(max_batch_size=0),
        instance_kind="KIND_GPU",
        out_dir=tmp_path / "repo",
    )

    config = _read_config(repo.root)
    assert config.max_batch_size == 0
    assert (config.input[0].data_type, list(config.input[0].dims)) == (mc.TYPE_INT64, [-1, -1])
    assert (config.output[0].data_type, list(config.output[0].dims)) == (mc.TYPE_FP16, [-1, -1, 8])


def test_batching_instances_version_policy_and_cache_follow_the_triton_section(tmp_path: Path) -> None:
    triton = parse_section(
        TritonConfig,
        {
            "max_batch_size": 16,
            "dynamic_batching": {"preferred_batch_sizes": [4, 16], "max_queue_delay_microseconds": 750},
            "instance_count": 2,
            "version_policy": "all",
            "response_cache": True,
        },
        "triton",
    )

    repo = package_triton_repository(
        _candidate_file(tmp_path, "onnxruntime_fp32"),
        "onnxruntime_fp32",
        SIGNATURE,
        model_name="model",
        triton=triton,
        instance_kind="KIND_GPU",
        out_dir=tmp_path / "repo",
    )

    config = _read_config(repo.root)
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 750
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]
    assert config.version_policy.HasField("all")
    assert config.response_cache.enable


def test_default_preferred_sizes_above_a_smaller_max_batch_size_are_dropped(tmp_path: Path) -> None:
    repo = package_triton_repository(
        _candidate_file(tmp_path, "onnxruntime_fp32"),
        "onnxruntime_fp32",
        SIGNATURE,
        model_name="model",
        triton=TritonConfig(max_batch_size=8),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
    )

    assert list(_read_config(repo.root).dynamic_batching.preferred_batch_size) == [8]


def test_warmup_samples_point_at_generated_files_of_one_batch_element(tmp_path: Path) -> None:
    repo = package_triton_repository(
        _candidate_file(tmp_path, "onnxruntime_fp32"),
        "onnxruntime_fp32",
        SIGNATURE,
        model_name="model",
        triton=TritonConfig(),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
    )

    config = _read_config(repo.root)
    sizes = [w.batch_size for w in config.model_warmup]
    warm_input = config.model_warmup[0].inputs["input"]
    data = repo.model_repository / "model" / "warmup" / warm_input.input_data_file
    assert sizes == [1, 32]
    assert list(warm_input.dims) == [4]
    assert data.stat().st_size == 4 * np.dtype(np.float32).itemsize


def test_warmup_off_writes_no_samples(tmp_path: Path) -> None:
    repo = package_triton_repository(
        _candidate_file(tmp_path, "onnxruntime_fp32"),
        "onnxruntime_fp32",
        SIGNATURE,
        model_name="model",
        triton=TritonConfig(warmup=False),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
    )

    assert not _read_config(repo.root).model_warmup
    assert not (repo.model_repository / "model" / "warmup").exists()


def test_onnx_external_weights_travel_with_the_model(tmp_path: Path) -> None:
    source = _tiny_onnx(tmp_path / "candidate.onnx", external=True)

    repo = package_triton_repository(
        source,
        "onnxruntime_fp32",
        SIGNATURE,
        model_name="model",
        triton=TritonConfig(),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
    )

    assert (repo.model_repository / "model" / "1" / "weights.bin").is_file()


def test_batching_a_model_without_a_batch_dim_names_the_field_and_the_tensor(tmp_path: Path) -> None:
    fixed = ModelSignature(
        inputs=(TensorSpec("image", "float32", (1, 3, 8, 8)),),
        outputs=(TensorSpec("output", "float32", (1, 10)),),
    )

    with pytest.raises(ConfigError, match=r"triton\.max_batch_size.*'image'.*max_batch_size=0"):
        package_triton_repository(
            _candidate_file(tmp_path, "tensorrt_fp32"),
            "tensorrt_fp32",
            fixed,
            model_name="model",
            triton=TritonConfig(),
            instance_kind="KIND_GPU",
            out_dir=tmp_path / "repo",
        )
    assert not (tmp_path / "repo").exists()


def test_an_unknown_candidate_kind_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelIntakeError, match="known kinds: onnxruntime_fp32"):
        package_triton_repository(
            _candidate_file(tmp_path, "aoti"),
            "openvino",
            SIGNATURE,
            model_name="model",
            triton=TritonConfig(),
            instance_kind="KIND_CPU",
            out_dir=tmp_path / "repo",
        )


@pytest.mark.parametrize(
    ("machine", "accelerator", "count", "expected"),
    [("g2-standard-8", "NVIDIA_L4", 1, "KIND_GPU"), ("n1-standard-4", "", 0, "KIND_CPU")],
)
def test_auto_instance_kind_follows_the_deployment_accelerator(
    machine: str, accelerator: str, count: int, expected: str
) -> None:
    deployment = DeploymentConfig(machine_type=machine, accelerator_type=accelerator, accelerator_count=count)

    assert resolve_instance_kind(TritonConfig(instance_kind="auto"), deployment) == expected


def test_preferred_batch_sizes_above_max_batch_size_are_rejected_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"preferred_batch_sizes \[64\] exceed max_batch_size 32"):
        parse_section(TritonConfig, {"dynamic_batching": {"preferred_batch_sizes": [8, 64]}}, "triton")


def test_a_scalar_per_sample_travels_as_dims_1_reshaped_to_the_models_scalar() -> None:
    from vxdeploy.components.package.model_config import build_model_config, from_wire, to_wire

    # Given a model taking and returning one scalar per sample (shape [batch]) beside a vector
    signature = ModelSignature(
        inputs=(TensorSpec("item_id", "int64", ("batch",)), TensorSpec("features", "float32", ("batch", 4))),
        outputs=(TensorSpec("bucket", "int64", ("batch",)),),
    )

    # When its config is built (batched, and not)
    batched = build_model_config("model", signature, TritonConfig(), platform="onnxruntime_onnx")
    unbatched = build_model_config(
        "model", signature, TritonConfig(), platform="onnxruntime_onnx", max_batch_size=0
    )

    # Then Triton's form for scalars: dims [1] + an empty reshape; other tensors untouched
    item, features = batched.input
    (bucket,) = batched.output
    assert list(item.dims) == [1] and item.HasField("reshape") and not item.reshape.shape
    assert list(bucket.dims) == [1] and bucket.HasField("reshape")
    assert list(features.dims) == [4] and not features.HasField("reshape")
    assert parse_model_config(str(batched)) == batched
    assert [list(t.dims) for t in unbatched.input] == [[-1], [-1, 4]]
    assert not any(t.HasField("reshape") for t in unbatched.input)

    # And clients send [batch, 1] and read answers back in the model's [batch]
    ids = np.arange(5, dtype=np.int64)
    assert to_wire(ids, item).shape == (5, 1)
    assert from_wire(to_wire(ids, item), bucket).shape == (5,)
    assert to_wire(np.zeros((5, 4), np.float32), features).shape == (5, 4)
