from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vxdeploy.components.common.config import ExportConfig, ModelConfig, ModelPartConfig, TensorOverride
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.errors import ConfigError, DataError, ModelIntakeError, ParityError
from vxdeploy.components.common.signature import signature_from_exported_program
from vxdeploy.components.export.onnx_export import export_onnx, export_parts
from vxdeploy.components.intake.intake import read_signature


class TinyTextModel(torch.nn.Module):
    """Token ids + attention mask with a dynamic sequence length; class scores and hidden states out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = hidden.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)
        return self.head(pooled), hidden


def _text_inputs(n: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, seq), np.int64)
    mask[:, seq // 2 :] = rng.integers(0, 2, (n, seq - seq // 2))
    return {"input_ids": rng.integers(0, 50, (n, seq)).astype(np.int64), "attention_mask": mask}


@pytest.fixture(scope="module")
def text_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = TinyTextModel().eval()
    batch, seq = torch.export.Dim("batch", max=1024), torch.export.Dim("seq", max=512)
    example = tuple(torch.from_numpy(a) for a in _text_inputs(2, 6).values())
    ep = torch.export.export(model, example, dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    path = tmp_path_factory.mktemp("text") / "text.pt2"
    torch.export.save(ep, str(path))
    return path


@pytest.fixture(scope="module")
def digits_onnx(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    pt2 = digits_dir / "digits_cnn.pt2"
    sig = read_signature(pt2, "torch_export", ModelConfig())
    evaluation = load_dataset(digits_dir / "digits_eval.npz", sig, what="eval")
    out = tmp_path_factory.mktemp("digits_onnx") / "model.onnx"
    result = export_onnx(pt2, "torch_export", sig, out, ExportConfig(), evaluation.inputs)
    return out, result


def test_digits_export_matches_pytorch_on_every_output(digits_onnx: tuple[Path, object]) -> None:
    _, result = digits_onnx

    figures = result.parity_summary()  # type: ignore[attr-defined]

    assert result.parity_reference == "pytorch"  # type: ignore[attr-defined]
    assert figures["max_abs_diff"] < 1e-4 and figures["min_top1_agreement"] == 1.0


def test_digits_export_keeps_names_opset_and_a_batch_symbol(digits_onnx: tuple[Path, object]) -> None:
    path, _ = digits_onnx

    model = onnx.load(str(path))

    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == [
        "output"
    ]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert next(o.version for o in model.opset_import if o.domain == "") == 19


@pytest.mark.parametrize("batch", [1, 32])
def test_dynamic_batch_really_runs(digits_onnx: tuple[Path, object], batch: int) -> None:
    path, _ = digits_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    (out,) = session.run(None, {"input": np.zeros((batch, 1, 8, 8), np.float32)})

    assert out.shape == (batch, 10)


def test_multi_input_model_exports_with_dynamic_batch_and_sequence(text_pt2: Path, tmp_path: Path) -> None:
    sig = read_signature(text_pt2, "torch_export", ModelConfig(output_names=["logits", "hidden"]))

    result = export_onnx(
        text_pt2, "torch_export", sig, tmp_path / "model.onnx", ExportConfig(), _text_inputs(40, 7)
    )

    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    logits, hidden = session.run(None, _text_inputs(32, 11, seed=1))
    assert [c.name for c in result.parity] == ["logits", "hidden"]
    assert result.signature.input_names == ["input_ids", "attention_mask"]
    assert logits.shape == (32, 3) and hidden.shape == (32, 11, 8)


def test_torchscript_model_exports_through_the_torchscript_path(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.jit.script(TinyTextModel().eval()).save(str(path))
    cfg = ModelConfig(
        inputs=[
            TensorOverride(name="input_ids", dtype="int64", shape=["batch", "seq"]),
            TensorOverride(name="attention_mask", dtype="int64", shape=["batch", "seq"]),
        ],
        output_names=["logits", "hidden"],
    )
    sig = read_signature(path, "torchscript", cfg)

    result = export_onnx(
        path, "torchscript", sig, tmp_path / "model.onnx", ExportConfig(), _text_inputs(16, 5)
    )

    assert result.parity_reference == "pytorch" and result.parity_summary()["max_abs_diff"] < 1e-5
    assert result.signature.inputs[0].shape == ("batch", "seq")


def test_parity_failure_names_the_output_and_its_shape(digits_dir: Path, tmp_path: Path) -> None:
    pt2 = digits_dir / "digits_cnn.pt2"
    sig = read_signature(pt2, "torch_export", ModelConfig())
    evaluation = load_dataset(digits_dir / "digits_eval.npz", sig, what="eval")
    strict = ExportConfig(atol=1e-12, rtol=1e-12, parity_samples=16)

    with pytest.raises(ParityError, match=r"'output' shape \(16, 10\): max abs diff"):
        export_onnx(pt2, "torch_export", sig, tmp_path / "model.onnx", strict, evaluation.inputs)
    assert not (tmp_path / "model.onnx").exists()


def test_eval_inputs_with_a_wrong_name_are_rejected(digits_dir: Path, tmp_path: Path) -> None:
    pt2 = digits_dir / "digits_cnn.pt2"
    sig = read_signature(pt2, "torch_export", ModelConfig())

    with pytest.raises(DataError, match=r"missing \['input'\]"):
        export_onnx(
            pt2, "torch_export", sig, tmp_path / "m.onnx", ExportConfig(), {"pixels": np.zeros((4, 1, 8, 8))}
        )


def _opset17_model(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"), helper.make_node("Relu", ["mm"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_onnx_source_skips_export_but_is_converted_and_checked(tmp_path: Path) -> None:
    src = _opset17_model(tmp_path / "src.onnx")
    sig = read_signature(src, "onnx", ModelConfig())
    x = {"x": np.random.default_rng(1).standard_normal((20, 4)).astype(np.float32)}

    result = export_onnx(src, "onnx", sig, tmp_path / "out" / "model.onnx", ExportConfig(), x)

    assert not result.exported and result.opset == 19 and result.parity_reference == "onnx_source"
    assert result.parity_summary()["max_abs_diff"] == 0.0


def test_parts_export_into_their_own_folders(text_pt2: Path, tmp_path: Path) -> None:
    onnx_part = _opset17_model(tmp_path / "head.onnx")
    parts = [
        ModelPartConfig(name="text", uri=str(text_pt2), output_names=["logits", "hidden"]),
        ModelPartConfig(name="head", uri=str(onnx_part)),
    ]

    results = export_parts(parts, tmp_path / "out", ExportConfig(), tmp_path / "work")

    assert (tmp_path / "out" / "text" / "model.onnx").is_file() and (
        tmp_path / "out" / "head" / "model.onnx"
    ).is_file()
    assert results["text"].signature.output_names == ["logits", "hidden"]
    assert results["head"].signature.input_names == ["x"]


def test_duplicate_part_names_are_a_config_error(tmp_path: Path) -> None:
    parts = [ModelPartConfig(name="a", uri="x.onnx"), ModelPartConfig(name="a", uri="y.onnx")]

    with pytest.raises(ConfigError, match="unique"):
        export_parts(parts, tmp_path, ExportConfig(), tmp_path)


def test_signature_from_program_matches_exported_graph(text_pt2: Path, tmp_path: Path) -> None:
    ep = torch.export.load(str(text_pt2))
    sig = signature_from_exported_program(ep, ["logits", "hidden"])

    result = export_onnx(text_pt2, "torch_export", sig, tmp_path / "model.onnx", ExportConfig(), None)

    assert result.signature.outputs[1].shape == ("batch", sig.inputs[0].shape[1], 8)


def test_static_batch_program_is_checked_in_batches_of_its_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    ep = torch.export.export(model, (torch.zeros(2, 4),))
    torch.export.save(ep, str(tmp_path / "static.pt2"))
    sig = signature_from_exported_program(ep)
    x = {"input": np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)}

    result = export_onnx(tmp_path / "static.pt2", "torch_export", sig, tmp_path / "m.onnx", ExportConfig(), x)

    assert result.signature.inputs[0].shape == (2, 4) and result.parity_samples == 8


def test_onnx_file_onnxruntime_cannot_load_is_a_model_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    src = tmp_path / "future.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=14), str(src))
    sig = read_signature(src, "onnx", ModelConfig())

    with pytest.raises(ModelIntakeError, match="cannot load"):
        export_onnx(src, "onnx", sig, tmp_path / "out.onnx", ExportConfig(), None)
