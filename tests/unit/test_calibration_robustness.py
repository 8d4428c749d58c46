"""Calibration on the inputs users bring: any sample count, and transformers' attention masks."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vxdeploy.components.calibrate.backends import HISTOGRAM_SAFE_LIMIT, compute_ranges
from vxdeploy.components.calibrate.int8 import calibrate_int8
from vxdeploy.components.common.config import DataConfig, QuantizationConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.signature import signature_from_onnx
from vxdeploy.components.verify.runners import run_onnxruntime

FEW_OK = DataConfig(min_calibration_samples=8, warn_calibration_samples=8)
SEQ = 16


def _mlp(path: Path) -> Path:
    """Two Gemm layers with a dynamic batch: the smallest model calibration runs on."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 16)) / np.sqrt(8)).astype(np.float32)
    w2 = (rng.standard_normal((16, 4)) / 4).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2"], ["scores"], name="fc2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9), str(path))
    return path


def _additive_mask_model(path: Path) -> Path:
    """Scores + an additive mask input (0 or finfo.min, as transformers build it), then Softmax and MatMul."""
    rng = np.random.default_rng(1)
    wq = (rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32)
    wv = (rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "wq"], ["q"], name="query"),
            helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1], name="keys"),
            helper.make_node("MatMul", ["q", "xt"], ["scores"], name="scores"),
            helper.make_node("Add", ["scores", "mask_bias"], ["masked"], name="mask_add"),
            helper.make_node("Softmax", ["masked"], ["probs"], axis=-1, name="softmax"),
            helper.make_node("MatMul", ["x", "wv"], ["v"], name="value"),
            helper.make_node("MatMul", ["probs", "v"], ["out"], name="context"),
        ],
        "attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 8]),
            helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["batch", 1, 6]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 6, 8])],
        [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(wv, "wv")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9), str(path))
    return path


def _mask_bias(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 7, n)
    bias = np.where(np.arange(6)[None, :] < lengths[:, None], 0.0, np.finfo(np.float32).min)
    return bias.astype(np.float32)[:, None, :]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer BERT (random init) exported by torch.onnx from input_ids/attention_mask keywords."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )

    class Encoder(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.BertModel(config, add_pooling_layer=False).eval()

        def forward(self, input_ids: object, attention_mask: object) -> object:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = _tokens(4, seed=0)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        Encoder().eval(),
        (),
        kwargs={k: torch.from_numpy(v) for k, v in example.items()},
        dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}},
    )
    onnx_program = torch.onnx.export(
        program, (), dynamo=True, opset_version=19, optimize=True, verify=False, report=False
    )
    path = tmp_path_factory.mktemp("tiny_bert") / "model.onnx"
    onnx.save(onnx_program.model_proto, str(path))
    return path


def _tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids with right padding: half the rows are shorter than SEQ (mask 0 past their length)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, (n, SEQ)).astype(np.int64)
    mask = np.ones((n, SEQ), np.int64)
    mask[n // 2 :, SEQ * 3 // 4 :] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize("method", ["entropy", "percentile", "max"])
@pytest.mark.parametrize("samples", [96, 100, 33])
def test_any_sample_count_calibrates(tmp_path: Path, method: str, samples: int) -> None:
    # Given a sample count that is (96) or is not (100, 33) a multiple of the batch size 32
    path = _mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(2).standard_normal((samples, 8)).astype(np.float32)

    # When calibrating with the method
    ranges = compute_ranges(path, {"x": x}, QuantizationConfig(method=method), tmp_path / "cache.json")

    # Then every activation gets a range
    assert {"x", "h", "r", "scores"} <= set(ranges.ranges)


def test_remainder_batch_reaches_the_ranges(tmp_path: Path) -> None:
    # Given 100 samples whose largest value is in the last, short batch (samples 96..99)
    path = _mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(3).uniform(-1, 1, (100, 8)).astype(np.float32)
    x[99, 0] = 50.0

    # When calibrating with max
    ranges = compute_ranges(path, {"x": x}, QuantizationConfig(method="max"), tmp_path / "cache.json")

    # Then the range covers it
    assert max(ranges.ranges["x"][1]) == pytest.approx(50.0)


@pytest.mark.parametrize("method", ["entropy", "percentile", "max"])
def test_input_holding_float32_min_is_left_in_float(tmp_path: Path, method: str) -> None:
    # Given a model whose input is an additive mask holding finfo(float32).min
    path = _additive_mask_model(tmp_path / "attention.onnx")
    rng = np.random.default_rng(4)
    cal = {"x": rng.standard_normal((70, 6, 8)).astype(np.float32), "mask_bias": _mask_bias(70, 5)}
    ev = {"x": rng.standard_normal((64, 6, 8)).astype(np.float32), "mask_bias": _mask_bias(64, 6)}

    # When calibrating and gating
    result = calibrate_int8(
        path,
        signature_from_onnx(path),
        Dataset(cal),
        Dataset(ev),
        tmp_path / "out",
        QuantizationConfig(method=method),
        FEW_OK,
    )

    # Then the mask is not quantized and the INT8 model keeps the FP32 outputs
    assert result.model_path is not None
    consumers = {n.name for n in onnx.load(str(result.model_path)).graph.node if "mask_bias" in n.input}
    assert consumers == {"mask_add"}
    assert result.accepted, result.reason


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_transformer_with_attention_mask_calibrates_with_histograms(
    tiny_bert: Path, tmp_path: Path, method: str
) -> None:
    # Given a BERT exported from input_ids/attention_mask (its mask arithmetic holds -3.4e38)
    # and 100 calibration samples (not a multiple of 32)
    cal, ev = _tokens(100, seed=1), _tokens(64, seed=2)

    # When calibrating with a histogram method
    ranges = compute_ranges(tiny_bert, cal, QuantizationConfig(method=method), tmp_path / "cache.json")

    # Then the sentinel tensors are named and left out, the others calibrated
    assert ranges.unquantizable
    assert all(peak > HISTOGRAM_SAFE_LIMIT for peak in ranges.unquantizable.values())
    assert not set(ranges.unquantizable) & set(ranges.ranges)
    result = calibrate_int8(
        tiny_bert,
        signature_from_onnx(tiny_bert),
        Dataset(cal),
        Dataset(ev),
        tmp_path / "out",
        QuantizationConfig(method=method),
        FEW_OK,
        task="embedding",
    )
    assert result.model_path is not None
    fp32 = run_onnxruntime(tiny_bert, ev)
    int8 = run_onnxruntime(result.model_path, ev)
    (name,) = fp32
    mask = ev["attention_mask"].astype(bool)
    a, b = fp32[name][mask], int8[name][mask]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99


def test_attention_graph_quantizes_weight_products_only_and_gates_a_dynamic_model(
    tiny_bert: Path, tmp_path: Path
) -> None:
    # Given a BERT (softmax, layer norm and mask arithmetic in its graph)
    cal, ev = _tokens(64, seed=3), _tokens(64, seed=4)

    # When calibrating with the defaults (operators and dynamic: auto)
    result = calibrate_int8(
        tiny_bert,
        signature_from_onnx(tiny_bert),
        Dataset(cal),
        Dataset(ev),
        tmp_path / "out",
        QuantizationConfig(method="max"),
        FEW_OK,
        task="embedding",
    )

    # Then only MatMul/Gemm with a constant weight read dequantized tensors in the static model
    assert result.model_path is not None
    graph = onnx.load(str(result.model_path)).graph
    constants = {i.name for i in graph.initializer}
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weight_of = {o: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    readers = [n for n in graph.node if dq_out.intersection(n.input) and n.op_type != "QuantizeLinear"]
    products = [n for n in readers if n.op_type in ("MatMul", "Gemm")]
    assert products and all(any(weight_of.get(i) in constants for i in n.input) for n in products)
    # (a product's dequantized output may feed its bias Add; softmax, norms and the mask stay float)
    assert {n.op_type for n in readers} <= {"MatMul", "Gemm", "Add"}
    # And a dynamic model is written and gated beside it
    assert result.dynamic is not None and result.dynamic.model_path.name == "model.dynamic.onnx"
    ops = {n.op_type for n in onnx.load(str(result.dynamic.model_path)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    assert result.dynamic.steps and result.dynamic.chosen.min_cosine > 0.9


def test_cnn_quantizes_every_operator_and_writes_no_dynamic_model(tmp_path: Path) -> None:
    path = _mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(5).standard_normal((64, 8)).astype(np.float32)

    result = calibrate_int8(
        path,
        signature_from_onnx(path),
        Dataset({"x": x}),
        Dataset({"x": x}),
        tmp_path / "out",
        QuantizationConfig(method="max"),
        FEW_OK,
    )

    assert result.op_types is None and result.dynamic is None


def test_a_fused_vit_quantizes_dynamically_and_keeps_its_answers(tmp_path: Path) -> None:
    import torch

    from tests.zoo.models import vit_classifier
    from vxdeploy.components.calibrate.backends import fuse_transformer, quantize_dynamic_onnxruntime
    from vxdeploy.components.common.config import ExportConfig
    from vxdeploy.components.common.signature import signature_from_exported_program
    from vxdeploy.components.export.onnx_export import export_onnx

    zoo = vit_classifier(tmp_path, n_calib=8, n_eval=8)
    program = torch.export.load(str(zoo.model_path))
    signature = signature_from_exported_program(program)
    fp32 = tmp_path / "model.onnx"
    export_onnx(zoo.model_path, "torch_export", signature, fp32, ExportConfig(), None)

    fused = fuse_transformer(fp32, tmp_path / "fused.onnx")
    quantize_dynamic_onnxruntime(tmp_path / "fused.onnx", tmp_path / "dynamic.onnx", QuantizationConfig())

    x = {"pixel_values": np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)}
    reference = run_onnxruntime(fp32, x)["logits"]
    quantized = run_onnxruntime(tmp_path / "dynamic.onnx", x)["logits"]
    assert fused  # the fusion passes changed the graph (the case whose stale shapes broke quantize_dynamic)
    assert quantized.shape == reference.shape
    assert np.abs(quantized - reference).max() < 0.05
