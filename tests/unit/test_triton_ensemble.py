"""Multi-part repositories: one model per part, an ensemble wiring them, and the wiring check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package.ensemble import (
    EnsembleStep,
    EnsembleWiringError,
    ModelPart,
    check_ensemble_wiring,
    package_ensemble,
)
from vxdeploy.components.package.model_config import parse_model_config

PIXELS = ModelSignature(
    inputs=(TensorSpec("raw", "uint8", ("batch", 4)),),
    outputs=(TensorSpec("pixels", "float32", ("batch", 4)),),
)
ENCODER = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 4)),),
    outputs=(TensorSpec("embedding", "float32", ("batch", 3)),),
)
HEAD = ModelSignature(
    inputs=(TensorSpec("embedding", "float32", ("batch", 3)),),
    outputs=(TensorSpec("label", "int64", ("batch", 1)),),
)
PROMPT = ModelSignature(
    inputs=(TensorSpec("embedding", "float32", ("batch", 3)),),
    outputs=(TensorSpec("prompt", "object", (1,)),),
)


def _encoder_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["embedding"])],
        "encoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "weight")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def _python_part(tmp_path: Path, name: str, signature: ModelSignature, **kwargs: object) -> ModelPart:
    source = tmp_path / f"{name}.py"
    source.write_text("class TritonPythonModel:\n    def execute(self, requests):\n        return []\n")
    return ModelPart(name, "python", signature, source, **kwargs)  # type: ignore[arg-type]


def _vision_parts(tmp_path: Path) -> list[ModelPart]:
    return [
        _python_part(tmp_path, "preprocess", PIXELS),
        ModelPart("encoder", "onnxruntime_fp32", ENCODER, _encoder_onnx(tmp_path / "encoder.onnx")),
        _python_part(tmp_path, "head", HEAD),
    ]


VISION_STEPS = [
    EnsembleStep("preprocess", {"raw": "image_bytes"}, {"pixels": "pixels"}),
    EnsembleStep("encoder", {"input": "pixels"}, {"embedding": "embedding"}),
    EnsembleStep("head", {"embedding": "embedding"}, {"label": "label"}),
]


def _config(root: Path, model: str) -> mc.ModelConfig:
    return parse_model_config((root / "model_repository" / model / "config.pbtxt").read_text())


def test_ensemble_and_part_configs_parse_and_wire_tensors_between_the_parts(tmp_path: Path) -> None:
    repo = package_ensemble(
        _vision_parts(tmp_path),
        VISION_STEPS,
        triton=TritonConfig(max_batch_size=8, dynamic_batching={"preferred_batch_sizes": [8]}),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
        name="classify",
    )

    ensemble = _config(repo.root, "classify")
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ensemble.ensemble_scheduling.step]
    assert ensemble.platform == "ensemble"
    assert ensemble.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [
        ("image_bytes", mc.TYPE_UINT8, [4])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [("label", mc.TYPE_INT64, [1])]
    assert steps[1] == ("encoder", {"input": "pixels"}, {"embedding": "embedding"})
    assert _config(repo.root, "encoder").platform == "onnxruntime_onnx"
    assert _config(repo.root, "preprocess").backend == "python"
    assert repo.default_model == "classify"
    assert set(repo.models) == {"classify", "encoder", "head", "preprocess"}


def test_the_ensemble_version_folder_survives_an_object_store(tmp_path: Path) -> None:
    repo = package_ensemble(
        _vision_parts(tmp_path),
        VISION_STEPS,
        triton=TritonConfig(),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
        name="classify",
    )

    assert "model_repository/classify/1/.keep" in repo.manifest["files"]


def test_a_vllm_language_part_joins_the_same_ensemble(tmp_path: Path) -> None:
    parts = [
        ModelPart(
            "encoder", "onnxruntime_fp32", ENCODER, _encoder_onnx(tmp_path / "encoder.onnx"), max_batch_size=0
        ),
        _python_part(tmp_path, "prompt", PROMPT, max_batch_size=0),
        ModelPart("llm", "vllm", engine_args={"model": "facebook/opt-125m", "gpu_memory_utilization": 0.5}),
    ]
    steps = [
        EnsembleStep("encoder", {"input": "pixels"}, {"embedding": "embedding"}),
        EnsembleStep("prompt", {"embedding": "embedding"}, {"prompt": "prompt"}),
        EnsembleStep("llm", {"text_input": "prompt", "stream": "stream"}, {"text_output": "caption"}),
    ]

    repo = package_ensemble(
        parts,
        steps,
        triton=TritonConfig(),
        instance_kind="KIND_GPU",
        out_dir=tmp_path / "repo",
        name="caption",
    )

    llm = _config(repo.root, "llm")
    ensemble = _config(repo.root, "caption")
    engine_args = json.loads((repo.model_repository / "llm" / "1" / "model.json").read_text())
    assert (llm.backend, llm.max_batch_size, llm.model_transaction_policy.decoupled) == ("vllm", 0, True)
    assert [g.kind for g in llm.instance_group] == [mc.ModelInstanceGroup.KIND_MODEL]
    assert engine_args["model"] == "facebook/opt-125m"
    assert ensemble.max_batch_size == 0
    assert sorted(t.name for t in ensemble.input) == ["pixels", "stream"]
    assert [(t.name, t.data_type) for t in ensemble.output] == [("caption", mc.TYPE_STRING)]


def test_a_dtype_mismatch_between_steps_is_rejected_naming_the_tensor(tmp_path: Path) -> None:
    wrong_head = ModelSignature(
        inputs=(TensorSpec("embedding", "float16", ("batch", 3)),),
        outputs=(TensorSpec("label", "int64", ("batch", 1)),),
    )
    parts = _vision_parts(tmp_path)[:2] + [_python_part(tmp_path, "head", wrong_head)]

    with pytest.raises(EnsembleWiringError, match=r"tensor 'embedding'.*float32.*'head'.*float16"):
        package_ensemble(
            parts, VISION_STEPS, triton=TritonConfig(), instance_kind="KIND_CPU", out_dir=tmp_path / "repo"
        )
    assert not (tmp_path / "repo").exists()


def test_a_shape_mismatch_between_steps_is_rejected_naming_the_tensor(tmp_path: Path) -> None:
    wide_head = ModelSignature(
        inputs=(TensorSpec("embedding", "float32", ("batch", 5)),),
        outputs=(TensorSpec("label", "int64", ("batch", 1)),),
    )
    parts = _vision_parts(tmp_path)[:2] + [_python_part(tmp_path, "head", wide_head)]

    with pytest.raises(EnsembleWiringError, match=r"tensor 'embedding'.*\[-1, 3\].*\[-1, 5\]"):
        package_ensemble(
            parts, VISION_STEPS, triton=TritonConfig(), instance_kind="KIND_CPU", out_dir=tmp_path / "repo"
        )


def test_a_required_part_input_left_unfed_is_rejected(tmp_path: Path) -> None:
    parts = [ModelPart("llm", "vllm", engine_args={"model": "facebook/opt-125m"})]
    steps = [EnsembleStep("llm", {"text_input": "prompt"}, {"text_output": "text"})]

    with pytest.raises(EnsembleWiringError, match=r"'llm' leaves its required input\(s\) \['stream'\] unfed"):
        package_ensemble(
            parts, steps, triton=TritonConfig(), instance_kind="KIND_GPU", out_dir=tmp_path / "repo"
        )


def test_a_step_output_the_part_does_not_have_is_rejected(tmp_path: Path) -> None:
    steps = [*VISION_STEPS[:2], EnsembleStep("head", {"embedding": "embedding"}, {"logits": "label"})]

    with pytest.raises(EnsembleWiringError, match=r"output 'logits' to tensor 'label'"):
        package_ensemble(
            _vision_parts(tmp_path),
            steps,
            triton=TritonConfig(),
            instance_kind="KIND_CPU",
            out_dir=tmp_path / "r",
        )


def test_a_tensor_produced_twice_is_rejected(tmp_path: Path) -> None:
    steps = [*VISION_STEPS[:2], EnsembleStep("head", {"embedding": "embedding"}, {"label": "pixels"})]

    with pytest.raises(EnsembleWiringError, match=r"tensor 'pixels' is produced twice"):
        package_ensemble(
            _vision_parts(tmp_path),
            steps,
            triton=TritonConfig(),
            instance_kind="KIND_CPU",
            out_dir=tmp_path / "r",
        )


def _part(name: str, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]]) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=8)
    for tensor, dtype in inputs:
        config.input.add(name=tensor, data_type=dtype, dims=[4])
    for tensor, dtype in outputs:
        config.output.add(name=tensor, data_type=dtype, dims=[4])
    return config


ENSEMBLE_TEXT = """
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "z" data_type: TYPE_FP32 dims: [4] }]
ensemble_scheduling {
  step [
    { model_name: "a" model_version: -1
      input_map { key: "in" value: "x" } output_map { key: "out" value: "y" } },
    { model_name: "b" model_version: -1
      input_map { key: "in" value: "%s" } output_map { key: "out" value: "z" } }
  ]
}
"""
PARTS = {
    "a": _part("a", [("in", mc.TYPE_FP32)], [("out", mc.TYPE_FP32)]),
    "b": _part("b", [("in", mc.TYPE_FP32)], [("out", mc.TYPE_FP32)]),
}


def test_a_parsed_ensemble_with_correct_wiring_passes_the_check() -> None:
    ensemble = parse_model_config(ENSEMBLE_TEXT % "y")

    check_ensemble_wiring(ensemble, PARTS)


def test_a_step_consuming_a_tensor_nobody_produces_is_rejected_naming_it() -> None:
    ensemble = parse_model_config(ENSEMBLE_TEXT % "y_typo")

    with pytest.raises(
        EnsembleWiringError, match=r"tensor 'y_typo' consumed by step 'b' .*produced by no step"
    ):
        check_ensemble_wiring(ensemble, PARTS)


def test_steps_that_feed_each_other_in_a_cycle_are_rejected() -> None:
    ensemble = parse_model_config(ENSEMBLE_TEXT % "y")
    ensemble.ensemble_scheduling.step[0].input_map["in"] = "z"
    ensemble.input[0].name = "unused"

    with pytest.raises(EnsembleWiringError, match="cycle"):
        check_ensemble_wiring(ensemble, PARTS)
