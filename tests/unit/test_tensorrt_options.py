"""The TensorRT parts that need no GPU: profiles, metadata, timing caches, compatibility, Q/DQ checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vxdeploy.components.common.config import CompilationConfig
from vxdeploy.components.common.errors import CandidateUnavailable, ConfigError
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.compile import tensorrt
from vxdeploy.components.compile.gpus import gpu_family, resolve_gpu
from vxdeploy.components.compile.tensorrt import (
    EngineCompatibilityError,
    EngineMetadata,
    build_options,
    check_engine_compatibility,
    check_qdq_for_tensorrt,
    engine_metadata,
    optimization_profile,
    timing_cache_file,
    timing_cache_location,
)

IMAGE = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 3, 32, 32)),),
    outputs=(TensorSpec("output", "float32", ("batch", 10)),),
)
TEXT = ModelSignature(
    inputs=(
        TensorSpec("ids", "int64", ("batch", "seq")),
        TensorSpec("mask", "int64", ("batch", "seq")),
    ),
    outputs=(TensorSpec("logits", "float32", ("batch", 2)),),
)


def test_batch_profile_sets_min_opt_max_of_the_batch_dim() -> None:
    cfg = CompilationConfig(batch_profile={"min": 1, "opt": 8, "max": 64})

    profile = optimization_profile(cfg, IMAGE)

    assert profile["input"].to_dict() == {
        "min": [1, 3, 32, 32],
        "opt": [8, 3, 32, 32],
        "max": [64, 3, 32, 32],
    }


def test_other_dynamic_dims_take_their_profile_by_symbol_for_every_input() -> None:
    cfg = CompilationConfig(dim_profiles={"seq": {"min": 4, "opt": 128, "max": 512}})

    profile = optimization_profile(cfg, TEXT)

    assert profile["ids"] == profile["mask"]
    assert (profile["ids"].min, profile["ids"].opt, profile["ids"].max) == ((1, 4), (8, 128), (32, 512))


def test_dynamic_dim_without_profile_names_the_field_and_the_symbol() -> None:
    with pytest.raises(ConfigError, match=r"compilation\.dim_profiles.*'seq'"):
        optimization_profile(CompilationConfig(), TEXT)


def test_profile_for_a_dim_the_model_lacks_is_refused() -> None:
    cfg = CompilationConfig(dim_profiles={"height": {"min": 16, "opt": 32, "max": 64}})

    with pytest.raises(ConfigError, match=r"'height' is not a dynamic dim"):
        optimization_profile(cfg, IMAGE)


def test_build_options_carry_workspace_level_and_max_batch() -> None:
    cfg = CompilationConfig(workspace_gib=2, tensorrt_optimization_level=5)

    opts = build_options(cfg, IMAGE, "fp16")

    assert (opts.workspace_bytes, opts.optimization_level, opts.max_batch) == (2 << 30, 5, 32)
    assert opts.to_dict()["strongly_typed"] is True


def test_static_batch_model_has_fixed_shapes_and_no_max_batch() -> None:
    static = ModelSignature((TensorSpec("x", "float32", (1, 4)),), (TensorSpec("y", "float32", (1, 2)),))

    opts = build_options(CompilationConfig(), static, "fp32")

    assert opts.profile["x"].min == opts.profile["x"].max == (1, 4) and opts.max_batch is None


def _meta(gpu: str = "NVIDIA L4", cc: str = "8.9", version: str = "10.4.0.26") -> EngineMetadata:
    return engine_metadata(version, gpu, cc, build_options(CompilationConfig(), IMAGE, "fp16"))


def test_engine_metadata_records_version_gpu_capability_and_profile() -> None:
    meta = engine_metadata(
        "10.4.0.26", "NVIDIA L4", (8, 9), build_options(CompilationConfig(), IMAGE, "int8")
    )

    d = meta.to_dict()
    assert (d["tensorrt_version"], d["gpu_name"], d["gpu_family"], d["compute_capability"]) == (
        "10.4.0.26",
        "NVIDIA L4",
        "L4",
        "8.9",
    )
    assert d["precision"] == "int8" and d["build_options"]["profile"]["input"]["max"] == [32, 3, 32, 32]
    assert EngineMetadata.from_dict(d) == meta


def test_engine_serves_on_the_vertex_accelerator_it_was_built_on() -> None:
    check_engine_compatibility(_meta().to_dict(), "NVIDIA_L4", "10.4.0")


def test_engine_built_on_an_l4_is_refused_on_a_t4() -> None:
    with pytest.raises(EngineCompatibilityError, match=r"built on NVIDIA L4.*NVIDIA_TESLA_T4 \(Tesla T4"):
        check_engine_compatibility(_meta(), "NVIDIA_TESLA_T4", "10.4.0")


def test_a100_40gb_engine_is_refused_on_the_80gb_part() -> None:
    meta = _meta("NVIDIA A100-SXM4-40GB", "8.0")

    with pytest.raises(EngineCompatibilityError):
        check_engine_compatibility(meta, "NVIDIA_A100_80GB", "10.4.0")


def test_engine_from_another_tensorrt_release_is_refused() -> None:
    with pytest.raises(
        EngineCompatibilityError, match=r"TensorRT 10\.4\.0\.26 but the serving image has TensorRT 10\.3\.0"
    ):
        check_engine_compatibility(_meta(), "NVIDIA_L4", "10.3.0")


def test_serving_on_cpu_cannot_take_an_engine() -> None:
    with pytest.raises(ConfigError, match="deployment.accelerator_type"):
        check_engine_compatibility(_meta(), "", "10.4.0")


def test_partial_serving_version_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ConfigError, match="major.minor.patch"):
        check_engine_compatibility(_meta(), "NVIDIA_L4", "10.4")


@pytest.mark.parametrize(
    ("device_name", "accelerator"),
    [
        ("Tesla T4", "NVIDIA_TESLA_T4"),
        ("NVIDIA L4", "NVIDIA_L4"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA_A100_80GB"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA_H100_80GB"),
        ("NVIDIA H200", "NVIDIA_H200_141GB"),
    ],
)
def test_cuda_device_names_map_to_their_vertex_accelerator(device_name: str, accelerator: str) -> None:
    assert gpu_family(device_name) == gpu_family(accelerator)
    gpu = resolve_gpu(device_name)
    assert gpu is not None and gpu.family == resolve_gpu(accelerator).family  # type: ignore[union-attr]


def test_timing_cache_defaults_beside_the_candidates(tmp_path: Path) -> None:
    assert timing_cache_location(CompilationConfig(), tmp_path) == tmp_path / "timing_cache"


def test_gcs_timing_cache_uri_uses_the_vertex_mount(tmp_path: Path) -> None:
    cfg = CompilationConfig(timing_cache_uri="gs://bucket/trt-cache/")

    assert timing_cache_location(cfg, tmp_path) == Path("/gcs/bucket/trt-cache")


def test_timing_cache_uri_of_another_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compilation.timing_cache_uri"):
        timing_cache_location(CompilationConfig(timing_cache_uri="s3://b/c"), tmp_path)


def test_timing_cache_file_is_specific_to_tensorrt_version_and_gpu(tmp_path: Path) -> None:
    l4 = timing_cache_file(tmp_path, "10.4.0", "NVIDIA L4", "8.9")

    assert l4.name == "trt-10.4.0-L4-sm89.cache"
    assert timing_cache_file(tmp_path, "10.4.0", "Tesla T4", "7.5") != l4
    assert timing_cache_file(tmp_path, "10.5.0", "NVIDIA L4", "8.9") != l4


def test_saved_timing_cache_is_reused_by_the_next_build(tmp_path: Path) -> None:
    path = timing_cache_file(tmp_path / "cache", "10.4.0", "NVIDIA L4", "8.9")
    assert tensorrt.load_timing_cache(path) == b""

    tensorrt.save_timing_cache(path, b"\x01cache")

    assert tensorrt.load_timing_cache(path) == b"\x01cache"
    assert list(path.parent.iterdir()) == [path]


def _qdq_model(path: Path, zero_point: np.ndarray) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale")
    zp = numpy_helper.from_array(zero_point, "zp")
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"]),
        ],
        "qdq",
        [x],
        [y],
        [scale, zp],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def test_symmetric_int8_qdq_is_accepted_for_tensorrt(tmp_path: Path) -> None:
    check_qdq_for_tensorrt(_qdq_model(tmp_path / "s8.onnx", np.array(0, dtype=np.int8)))


def test_onnxruntime_style_uint8_qdq_is_refused_for_tensorrt_with_the_fix(tmp_path: Path) -> None:
    path = _qdq_model(tmp_path / "u8.onnx", np.array(128, dtype=np.uint8))

    with pytest.raises(CandidateUnavailable, match="quantization.backend=modelopt"):
        check_qdq_for_tensorrt(path)


def test_building_without_tensorrt_or_gpu_is_unavailable_not_an_error(tmp_path: Path) -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are here: the gpu tests cover building")
    opts = build_options(CompilationConfig(), IMAGE, "fp32")

    with pytest.raises(CandidateUnavailable):
        tensorrt.build_tensorrt_engine(tmp_path / "missing.onnx", tmp_path / "m.plan", opts)
