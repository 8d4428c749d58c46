"""Transformer fusion before dynamic INT8: torch.export attention reaches ORT's fused operators."""

from pathlib import Path

import numpy as np
import pytest

from tests.zoo.models import bert_encoder, token_data
from vxdeploy.components.calibrate.backends import (
    FUSED_ATTENTION_OPS,
    FUSION_MIN_COSINE,
    fuse_transformer,
    fusion_mismatch,
    quantize_dynamic_onnxruntime,
)
from vxdeploy.components.common.config import ExportConfig, QuantizationConfig
from vxdeploy.components.common.signature import signature_from_exported_program
from vxdeploy.components.export.onnx_export import export_onnx
from vxdeploy.components.verify.compare import row_cosines
from vxdeploy.components.verify.runners import run_onnxruntime


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's BERT encoder through the pipeline's own export (torch.export program, dynamo ONNX)."""
    import torch

    folder = tmp_path_factory.mktemp("bert")
    zoo = bert_encoder(folder, n_calib=4, n_eval=4)
    signature = signature_from_exported_program(torch.export.load(str(zoo.model_path)))
    path = folder / "model.onnx"
    export_onnx(zoo.model_path, "torch_export", signature, path, ExportConfig(), None)
    return path


def test_dynamo_exported_attention_is_fused_into_an_ort_attention_operator(
    bert_onnx: Path, tmp_path: Path
) -> None:
    # Given the dynamo exporter's BERT graph (attention decomposed into MatMul/Softmax/IsNaN/Where)
    fused_path = tmp_path / "fused.onnx"

    # When it is fused
    fused = fuse_transformer(bert_onnx, fused_path)

    # Then each of its 2 layers' attention is one ORT attention operator, and its norms are fused
    assert sum(n for op, n in fused.items() if op in FUSED_ATTENTION_OPS) == 2
    assert fused.get("SkipLayerNormalization", 0) >= 2


def test_fused_graph_answers_like_the_unfused_one_on_padded_batches(bert_onnx: Path, tmp_path: Path) -> None:
    # Given right-padded token batches (the attention mask is where a wrong fusion shows)
    fuse_transformer(bert_onnx, tmp_path / "fused.onnx")
    tokens = token_data(8, 16, 2000, seed=3)

    # When both graphs run
    reference = run_onnxruntime(bert_onnx, tokens, (8,))
    fused = run_onnxruntime(tmp_path / "fused.onnx", tokens, (8,))

    # Then every output of every sample keeps its direction
    for name, ref in reference.items():
        assert row_cosines(ref, fused[name]).min() >= FUSION_MIN_COSINE, name


def test_fusion_that_changes_the_answers_is_reported(bert_onnx: Path, tmp_path: Path) -> None:
    # Given a "fused" graph that does not compute what the source does: one projection's
    # weights altered, as a fusion that mis-wired an input would
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bert_onnx))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 2 else 0)
    altered = numpy_helper.to_array(weight)[::-1].copy()
    weight.CopyFrom(numpy_helper.from_array(altered, weight.name))
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    tokens = token_data(8, 16, 2000, seed=4)

    # When the fusion check compares it with the source
    reason = fusion_mismatch(bert_onnx, tmp_path / "wrong.onnx", tokens, (8,))

    # Then it says which output moved and how far
    assert "min cosine" in reason and "to the unfused graph" in reason


def test_unpacked_fusion_leaves_qkv_projections_for_dynamic_int8(bert_onnx: Path, tmp_path: Path) -> None:
    import onnx

    # Given the graph fused for dynamic quantization (attention fused, Q/K/V not packed)
    fused = fuse_transformer(bert_onnx, tmp_path / "fused.onnx", packed_qkv=False)

    # When it is quantized dynamically
    quantize_dynamic_onnxruntime(tmp_path / "fused.onnx", tmp_path / "dynamic.onnx", QuantizationConfig())

    # Then attention stays ORT's fused float operator and every projection (Q, K, V, output and
    # the two feed-forward ones, per layer) is an integer MatMul; the model answers like FP32
    assert fused.get("MultiHeadAttention") == 2 and "Attention" not in fused
    ops = [n.op_type for n in onnx.load(str(tmp_path / "dynamic.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 6 * 2 + 1 and ops.count("MultiHeadAttention") == 2  # + pooler
    tokens = token_data(8, 16, 2000, seed=5)
    reference = run_onnxruntime(bert_onnx, tokens, (8,))["last_hidden_state"]
    quantized = run_onnxruntime(tmp_path / "dynamic.onnx", tokens, (8,))["last_hidden_state"]
    assert row_cosines(reference, quantized).min() > 0.99


def test_packed_attention_takes_the_padding_mask_and_quantizes_into_one_int8_gemm(
    bert_onnx: Path, tmp_path: Path
) -> None:
    import onnx

    # Given the graph fused with Q/K/V packed (the default)
    fuse_transformer(bert_onnx, tmp_path / "fused.onnx")
    model = onnx.load(str(tmp_path / "fused.onnx"))
    producers = {out: n for n in model.graph.node for out in n.output}
    initializers = {i.name for i in model.graph.initializer}

    # Then each layer's Attention reads the model's attention_mask as its key padding mask (no
    # 4-D additive bias left) and one packed constant weight
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(attention) == 2
    for node in attention:
        assert len(node.input) == 4 and node.input[1] in initializers, list(node.input)
        mask = producers[node.input[3]]
        assert mask.op_type == "Cast" and list(mask.input) == ["attention_mask"]
        assert not any(a.name == "qkv_hidden_sizes" for a in node.attribute)

    # When it is quantized dynamically, attention's three projections become one QAttention,
    # and the INT8 model still answers like FP32 on right-padded batches
    quantize_dynamic_onnxruntime(tmp_path / "fused.onnx", tmp_path / "dynamic.onnx", QuantizationConfig())
    ops = [n.op_type for n in onnx.load(str(tmp_path / "dynamic.onnx")).graph.node]
    assert ops.count("QAttention") == 2 and "Attention" not in ops
    tokens = token_data(8, 16, 2000, seed=6)
    reference = run_onnxruntime(bert_onnx, tokens, (8,))["last_hidden_state"]
    quantized = run_onnxruntime(tmp_path / "dynamic.onnx", tokens, (8,))["last_hidden_state"]
    assert row_cosines(reference, quantized).min() > 0.99


def test_fp32_candidate_of_a_transformer_serves_the_fused_graph(bert_onnx: Path, tmp_path: Path) -> None:
    import onnx

    from vxdeploy.components.common.config import CompilationConfig
    from vxdeploy.components.common.signature import signature_from_onnx
    from vxdeploy.components.compile.build import CompileSources, build_candidates

    # Given a transformer's FP32 export
    sources = CompileSources(signature_from_onnx(bert_onnx), bert_onnx)

    # When its ONNX Runtime FP32 candidate is built
    manifest = build_candidates(tmp_path, CompilationConfig(candidates=["onnxruntime_fp32"]), sources)

    # Then the served graph has ORT's fused attention, and the manifest says what was fused
    (fp32,) = manifest.built
    ops = {n.op_type for n in onnx.load(str(tmp_path / fp32.file)).graph.node}
    assert FUSED_ATTENTION_OPS & ops
    assert FUSED_ATTENTION_OPS & set(fp32.options["fused_operators"])


def test_fp32_candidate_of_a_cnn_is_the_export_unchanged(tmp_path: Path) -> None:
    from vxdeploy.components.common.config import CompilationConfig
    from vxdeploy.components.common.signature import signature_from_onnx
    from vxdeploy.components.compile.build import CompileSources, build_candidates
    from vxdeploy.components.compile.candidates import sha256_file

    # Given a CNN's FP32 export (no attention)
    cnn = _conv_net(tmp_path / "cnn.onnx")

    # When its ONNX Runtime FP32 candidate is built
    manifest = build_candidates(
        tmp_path / "candidates",
        CompilationConfig(candidates=["onnxruntime_fp32"]),
        CompileSources(signature_from_onnx(cnn), cnn),
    )

    # Then it serves the export's graph byte for byte
    (fp32,) = manifest.built
    assert fp32.sha256 == sha256_file(cnn) and "fused_operators" not in fp32.options


def _conv_net(path: Path) -> Path:
    """Conv, Relu, global pooling: a CNN in three operators, with a dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).standard_normal((4, 1, 3, 3)) / 3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["scores"], name="pool"),
        ],
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4, 1, 1])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9), str(path))
    return path
