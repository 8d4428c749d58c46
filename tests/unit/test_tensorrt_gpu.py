"""TensorRT engines built and run for real: FP32, FP16 (converted ONNX) and INT8 (Q/DQ ONNX). GPU only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vxdeploy.components.common.config import CompilationConfig
from vxdeploy.components.common.signature import signature_from_onnx
from vxdeploy.components.compile import tensorrt
from vxdeploy.components.compile.build import CompileSources, build_candidates
from vxdeploy.components.verify.runners import TensorRTRunner

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module]:
    pytest.importorskip("tensorrt", reason="TensorRT is installed only in the optimizer image")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    ).eval()
    d = tmp_path_factory.mktemp("trt")
    fp32 = d / "model.onnx"
    torch.onnx.export(
        module,
        (torch.zeros(2, 3, 16, 16),),
        str(fp32),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=19,
        dynamo=False,
    )
    calib = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": calib[i : i + 8]} for i in range(0, 32, 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    qdq = d / "qdq.onnx"
    # Symmetric int8 activations and weights: the Q/DQ form TensorRT builds.
    quantize_static(
        str(fp32),
        str(qdq),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return fp32, qdq, module


@pytest.mark.parametrize(
    ("kind", "atol"), [("tensorrt_fp32", 1e-3), ("tensorrt_fp16", 2e-2), ("tensorrt_int8", 0.2)]
)
def test_engine_builds_and_answers_like_pytorch(
    models: tuple[Path, Path, nn.Module], tmp_path: Path, kind: str, atol: float
) -> None:
    fp32, qdq, module = models
    signature = signature_from_onnx(fp32)

    manifest = build_candidates(
        tmp_path, CompilationConfig(candidates=[kind]), CompileSources(signature, fp32, qdq)
    )

    cand = manifest.candidates[0]
    assert cand.status == "built", cand.reason
    assert cand.engine["gpu_name"] == torch.cuda.get_device_name() and cand.engine["precision"] == kind[9:]
    runner = TensorRTRunner(kind, tmp_path / cand.file, signature, max_batch=32)
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    (got,) = runner.run({"input": x}).values()
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=atol)


def test_second_build_reuses_the_timing_cache(models: tuple[Path, Path, nn.Module], tmp_path: Path) -> None:
    fp32, _, _ = models
    cfg = CompilationConfig(candidates=["tensorrt_fp32"], timing_cache_uri=str(tmp_path / "cache"))
    sources = CompileSources(signature_from_onnx(fp32), fp32)

    first = build_candidates(tmp_path / "a", cfg, sources).candidates[0]
    second = build_candidates(tmp_path / "b", cfg, sources).candidates[0]

    assert first.engine["timing_cache"]["reused"] is False
    assert second.engine["timing_cache"]["reused"] is True
    assert Path(second.engine["timing_cache"]["file"]).parent == tmp_path / "cache"


def test_engine_is_compatible_with_the_gpu_it_was_built_on(
    models: tuple[Path, Path, nn.Module], tmp_path: Path
) -> None:
    import tensorrt as trt

    fp32, _, _ = models
    cand = build_candidates(
        tmp_path,
        CompilationConfig(candidates=["tensorrt_fp32"]),
        CompileSources(signature_from_onnx(fp32), fp32),
    ).candidates[0]

    tensorrt.check_engine_compatibility(cand.engine, torch.cuda.get_device_name(), trt.__version__)
