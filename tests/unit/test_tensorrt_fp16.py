"""FP32 ONNX -> FP16 ONNX, the input of a strongly typed FP16 TensorRT engine (checked under ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from vxdeploy.components.common.errors import CandidateUnavailable
from vxdeploy.components.compile.fp16 import convert_onnx_to_fp16, modelopt_available


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    ).eval()
    path = tmp_path_factory.mktemp("fp16") / "model.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(2, 1, 8, 8),),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=19,
        dynamo=False,
    )
    return path, model


def test_weights_become_fp16_while_inputs_and_outputs_stay_fp32(
    fp32_model: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    src, _ = fp32_model

    used = convert_onnx_to_fp16(src, tmp_path / "fp16.onnx", "onnxconverter")

    model = onnx.load(str(tmp_path / "fp16.onnx"))
    assert used == "onnxconverter"
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_fp16_model_computes_what_the_fp32_model_does_to_fp16_precision(
    fp32_model: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    src, module = fp32_model
    convert_onnx_to_fp16(src, tmp_path / "fp16.onnx", "onnxconverter")
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)

    got = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]

    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=5e-3, rtol=5e-3)


def test_asking_for_modelopt_where_it_is_missing_skips_with_the_fix(
    fp32_model: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    if modelopt_available():
        pytest.skip("ModelOpt is installed here")
    src, _ = fp32_model

    with pytest.raises(CandidateUnavailable, match="nvidia-modelopt"):
        convert_onnx_to_fp16(src, tmp_path / "fp16.onnx", "modelopt")
