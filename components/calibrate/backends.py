"""INT8 Q/DQ quantizers: ONNX Runtime's ``quantize_static`` and NVIDIA ModelOpt's ONNX PTQ.

ONNX Runtime's ranges are computed here with ``create_calibrator`` and handed to
``quantize_static`` as a calibration cache: ``quantize_static`` does not forward ``num_bins``,
so building the calibrator ourselves is what makes the Entropy and Percentile histograms use
the bins asked for. The cache also lets every step of the accuracy gate re-quantize with other
layers excluded without calibrating again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.calibrate.samples import BatchReader
from vxdeploy.components.common.config import QuantizationConfig
from vxdeploy.components.common.errors import ConfigError, InternalError

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "modelopt")
_MODELOPT_METHODS = {"entropy": "entropy", "max": "max"}
NUM_QUANTIZED_BINS = 128
"""Bins of the 8-bit target distribution in the entropy (KL) search, as TensorRT's calibrator uses."""


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-VNNI or AVX512-VNNI (integer dot products without int16 saturation)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: do not warn
    return "avx512_vnni" in flags or "avx_vnni" in flags


def effective_reduce_range(cfg: QuantizationConfig) -> bool:
    """``quantization.reduce_range`` resolved: 'auto' is 7-bit weights only on CPUs without VNNI."""
    if isinstance(cfg.reduce_range, bool):
        return cfg.reduce_range
    return not cpu_has_vnni()


def modelopt_available() -> bool:
    """True when ``modelopt.onnx.quantization`` can be imported (the GPU image installs it)."""
    try:
        return importlib.util.find_spec("modelopt.onnx.quantization") is not None
    except ModuleNotFoundError:
        return False


def resolve_backend(cfg: QuantizationConfig) -> str:
    """The backend that runs: ``auto`` is ModelOpt where installed (and the method fits), else ONNX Runtime.

    Raises:
        ConfigError: when ModelOpt is asked for but missing, or cannot run the method.
    """
    if cfg.backend == "onnxruntime":
        return "onnxruntime"
    if cfg.backend == "modelopt":
        if not modelopt_available():
            raise ConfigError(
                "quantization.backend",
                "modelopt",
                "nvidia-modelopt[onnx] is not installed here; use 'onnxruntime' or 'auto', "
                "or run on the GPU image",
            )
        if cfg.method not in _MODELOPT_METHODS:
            raise ConfigError(
                "quantization.method",
                cfg.method,
                f"ModelOpt INT8 calibrates with {sorted(_MODELOPT_METHODS)}; "
                "use one of them or backend 'onnxruntime'",
            )
        return "modelopt"
    if modelopt_available() and cfg.method in _MODELOPT_METHODS:
        return "modelopt"
    return "onnxruntime"


HISTOGRAM_SAFE_LIMIT = 1e30
"""Largest magnitude an activation may hold and still be calibrated and quantized.

Attention masks turned into additive biases hold ``finfo(float32).min`` (about -3.4e38): no
histogram of finite-sized bins spans that, and an 8-bit scale over it rounds every real value to
zero. Tensors beyond this limit are sentinels, not activations: they are left out of calibration
and the nodes that read or write them stay in float.
"""


@dataclass(frozen=True)
class CalibrationRanges:
    """Activation ranges per tensor, as computed by ONNX Runtime's calibrator, and their cache file.

    Attributes:
        method: The calibration method.
        cache_path: The ranges in ONNX Runtime's calibration-cache format.
        ranges: ``(min, max)`` per calibrated tensor.
        unquantizable: Tensors left out because they hold values beyond
            :data:`HISTOGRAM_SAFE_LIMIT` (or non-finite ones), with the largest magnitude seen.
    """

    method: str
    cache_path: Path
    ranges: dict[str, tuple[list[float], list[float]]]
    unquantizable: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tensors": {k: {"min": lo, "max": hi} for k, (lo, hi) in sorted(self.ranges.items())},
            "unquantizable": dict(sorted(self.unquantizable.items())),
        }


def compute_ranges(
    fp32_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    cfg: QuantizationConfig,
    cache_path: str | Path,
    op_types: Sequence[str] | None = None,
) -> CalibrationRanges:
    """Run ONNX Runtime's calibrator on real samples with the configured method and bins.

    Batches go through the calibration graph one at a time and are folded into the histograms
    (or min/max) as they come: ONNX Runtime's own ``collect_data`` stacks every batch's
    activations into one array, which fails when the last batch is shorter (any sample count
    not a multiple of ``calibration_batch_size``) or sequence lengths differ between batches,
    and holds every activation of every sample in memory at once.

    Args:
        fp32_path: The FP32 ONNX model.
        inputs: Calibration samples by input name (already checked).
        cfg: Method (entropy, max, percentile), ``num_bins`` and ``percentile``.
        cache_path: Where the ranges are saved in ONNX Runtime's calibration-cache format.
        op_types: Calibrate only the tensors of these operator types (None: every operator).
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.calibrate import TensorsData

    method, options = _ort_calibration(cfg)
    if method not in (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile):
        raise InternalError(f"unexpected calibration method {method}")
    reader = BatchReader(inputs, cfg.calibration_batch_size)
    with tempfile.TemporaryDirectory(prefix="vx-calib-") as tmp, _quiet():
        calibrator = create_calibrator(
            Path(fp32_path),
            list(op_types) if op_types else None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method,
            providers=["CPUExecutionProvider"],
            extra_options=options,
        )
        if method == CalibrationMethod.MinMax:
            calibrator.collect_data(reader)
            tensors = calibrator.compute_data()
            unquantizable = _drop_unbounded(tensors)
        else:
            collected, unquantizable = _collect_histograms(calibrator, reader)
            tensors = TensorsData(method, collected)
        del calibrator
    if unquantizable:
        log.info("not calibrated (values beyond %.0e): %s", HISTOGRAM_SAFE_LIMIT, sorted(unquantizable))
    save_tensors_data(tensors, Path(cache_path))
    ranges = {
        name: (
            np.ravel(td.range_value[0]).astype(float).tolist(),
            np.ravel(td.range_value[1]).astype(float).tolist(),
        )
        for name, td in tensors.data.items()
    }
    return CalibrationRanges(
        method=cfg.method, cache_path=Path(cache_path), ranges=ranges, unquantizable=unquantizable
    )


def _bounded(arr: np.ndarray) -> float | None:
    """None when every value is finite and within :data:`HISTOGRAM_SAFE_LIMIT`, else the largest magnitude."""
    if arr.size == 0:
        return None
    peak = float(np.max(np.abs(arr)))
    return None if np.isfinite(peak) and peak <= HISTOGRAM_SAFE_LIMIT else peak


def _collect_histograms(calibrator: Any, reader: BatchReader) -> tuple[dict[str, Any], dict[str, float]]:
    """Fold batch after batch into ONNX Runtime's histogram collector, leaving unbounded tensors out."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    session = calibrator.infer_session
    names = [o.name for o in session.get_outputs()]
    wanted = set(calibrator.tensors_to_calibrate)
    collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    unbounded: dict[str, float] = {}
    for batch in iter(reader.get_next, None):
        arrays = {}
        for name, arr in zip(names, session.run(None, batch), strict=True):
            if name not in wanted or name in unbounded:
                continue
            peak = _bounded(arr)
            if peak is None:
                arrays[name] = [arr]
            else:
                unbounded[name] = peak
                collector.histogram_dict.pop(name, None)
        collector.collect(arrays)
    if not collector.histogram_dict:
        raise InternalError("calibration collected no activation histogram (no calibratable tensor)")
    return collector.compute_collection_result(), unbounded


def _drop_unbounded(tensors: Any) -> dict[str, float]:
    """Remove min/max ranges beyond :data:`HISTOGRAM_SAFE_LIMIT` from ``tensors``; return them."""
    dropped = {}
    for name, td in list(tensors.data.items()):
        lo, hi = (np.asarray(v, dtype=np.float64) for v in td.range_value)
        peak = _bounded(np.concatenate([np.ravel(lo), np.ravel(hi)]))
        if peak is not None:
            dropped[name] = peak
            del tensors.data[name]
    return dropped


def _ort_calibration(cfg: QuantizationConfig) -> tuple[Any, dict[str, Any]]:
    from onnxruntime.quantization import CalibrationMethod

    if cfg.method == "max":
        return CalibrationMethod.MinMax, {}
    if cfg.method == "entropy":
        return CalibrationMethod.Entropy, {"num_bins": cfg.num_bins, "num_quantized_bins": NUM_QUANTIZED_BINS}
    return CalibrationMethod.Percentile, {"num_bins": cfg.num_bins, "percentile": cfg.percentile}


def quantize_onnxruntime(
    fp32_path: str | Path,
    out_path: str | Path,
    ranges: CalibrationRanges,
    cfg: QuantizationConfig,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] | None = None,
) -> Path:
    """Write an explicit Q/DQ model with ONNX Runtime's ``quantize_static`` from cached ranges.

    QDQ format, per-channel weights (``cfg.per_channel``), signed 8-bit weights and
    ``cfg.activation_type`` activations (U8S8 by default) with ``cfg.reduce_range`` 7-bit
    weights, which keep integer kernels from saturating on CPUs without VNNI. Nodes that read or
    write a tensor calibration left out (``ranges.unquantizable``) stay in float, as do operators
    not in ``op_types`` (None: every operator ONNX Runtime can quantize).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    method, _ = _ort_calibration(cfg)
    out = Path(out_path)
    tmp = out.with_name(out.name + ".part")
    excluded = [*nodes_to_exclude, *nodes_touching(fp32_path, ranges.unquantizable)]
    with _quiet():
        quantize_static(
            str(fp32_path),
            str(tmp),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=cfg.per_channel,
            reduce_range=effective_reduce_range(cfg),
            activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(dict.fromkeys(excluded)),
            calibrate_method=method,
            calibration_cache_path=str(ranges.cache_path),
        )
    tmp.replace(out)
    return out


def nodes_touching(model_path: str | Path, tensors: Collection[str]) -> list[str]:
    """Names of the nodes of ``model_path`` that read or write any of ``tensors``, in graph order."""
    if not tensors:
        return []
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    wanted = set(tensors)
    return [n.name for n in model.graph.node if n.name and wanted.intersection([*n.input, *n.output])]


def quantize_modelopt(
    fp32_path: str | Path,
    out_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    cfg: QuantizationConfig,
    nodes_to_exclude: Sequence[str] = (),
) -> Path:
    """Write an explicit Q/DQ model with ModelOpt's ONNX PTQ (``modelopt.onnx.quantization.quantize``).

    ModelOpt's INT8 graph is TensorRT-style (symmetric INT8 activations whatever
    ``cfg.activation_type`` says, Q/DQ placed where TensorRT fuses them). Calibration runs on
    CUDA when available, else on CPU. Non-quantized parts stay FP32 (``high_precision_dtype``)
    so the accuracy gate compares like with like.
    """
    from modelopt.onnx.quantization import quantize

    out = Path(out_path)
    n = len(next(iter(inputs.values())))
    batch = max(1, min(cfg.calibration_batch_size, n))
    usable = n - n % batch  # ModelOpt splits the samples into n / batch steps of calibration_shapes
    data = {k: np.ascontiguousarray(v[:usable]) for k, v in inputs.items()}
    shapes = ",".join(f"{k}:{'x'.join(str(d) for d in (batch, *v.shape[1:]))}" for k, v in data.items())
    eps = ["cuda:0", "cpu"] if _cuda_available() else ["cpu"]
    with tempfile.TemporaryDirectory(prefix="vx-modelopt-") as tmp:
        # ModelOpt writes intermediate files beside its input: give it a private copy.
        src = Path(tmp) / "model.onnx"
        src.write_bytes(Path(fp32_path).read_bytes())
        quantize(
            onnx_path=str(src),
            quantize_mode="int8",
            calibration_data=data,
            calibration_method=_MODELOPT_METHODS[cfg.method],
            calibration_shapes=shapes,
            calibration_eps=eps,
            nodes_to_exclude=[_exact(n) for n in nodes_to_exclude] or None,
            output_path=str(Path(tmp) / "model.quant.onnx"),
            high_precision_dtype="fp32",
            log_level="WARNING",
        )
        (Path(tmp) / "model.quant.onnx").replace(out)
    return out


def _exact(node_name: str) -> str:
    """ModelOpt reads ``nodes_to_exclude`` as regular expressions: match this one name only."""
    import re

    return f"^{re.escape(node_name)}$"


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


@contextlib.contextmanager
def _quiet() -> Any:
    """ONNX Runtime's calibrators print progress to stdout; keep it in the debug log instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        log.debug("%s", buf.getvalue().strip())


def qdq_activation_ranges(qdq_path: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Activation ranges implied by a Q/DQ model's QuantizeLinear scales and zero points.

    Works for any backend's output (ModelOpt gives no ranges file of its own).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    out: dict[str, tuple[list[float], list[float]]] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
            continue
        scale = consts.get(node.input[1])
        if scale is None:
            continue
        zp = (
            consts.get(node.input[2])
            if len(node.input) > 2 and node.input[2]
            else np.zeros_like(scale, np.uint8)
        )
        if zp is None:
            continue
        info = np.iinfo(zp.dtype)
        lo = (info.min - zp.astype(np.float64)) * scale
        hi = (info.max - zp.astype(np.float64)) * scale
        out[node.input[0]] = (np.ravel(lo).tolist(), np.ravel(hi).tolist())
    return out


DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Attention")
"""Operators dynamic quantization covers: those with constant weights (``MatMulConstBOnly``).

``Attention`` is ONNX Runtime's fused attention with packed Q/K/V weights (see
:func:`fuse_transformer`), which becomes ``QAttention``: one INT8 GEMM for the three projections."""


def quantize_dynamic_onnxruntime(
    fp32_path: str | Path,
    out_path: str | Path,
    cfg: QuantizationConfig,
    nodes_to_exclude: Sequence[str] = (),
) -> Path:
    """Write a dynamically quantized model with ONNX Runtime's ``quantize_dynamic``.

    INT8 weights (per channel with ``cfg.per_channel``) for MatMul and Gemm with constant weights;
    their activations are quantized per call from their own range, so no calibration data is
    needed and the ranges fit each batch. Attention's activation-by-activation MatMuls, softmax,
    layer norm and mask arithmetic stay float.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out_path)
    tmp = out.with_name(out.name + ".part")
    with _quiet():
        quantize_dynamic(
            str(fp32_path),
            str(tmp),
            op_types_to_quantize=list(DYNAMIC_OP_TYPES),
            per_channel=cfg.per_channel,
            reduce_range=effective_reduce_range(cfg),
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            # Fused contrib operators (SkipLayerNormalization, BiasGelu) carry no type ONNX can
            # infer; their outputs are float.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    tmp.replace(out)
    return out


FUSED_ATTENTION_OPS = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention"})
"""ONNX Runtime's fused attention operators (``com.microsoft`` domain)."""


def fuse_transformer(
    fp32_path: str | Path, out_path: str | Path, *, packed_qkv: bool = True
) -> dict[str, int]:
    """Fuse attention, LayerNorm and GELU subgraphs into ONNX Runtime's contrib operators.

    Two fusers, because each recognizes one exporter's graphs: onnxscript's ``optimize_for_ort``
    matches what ``torch.export`` and the dynamo exporter write (scaled dot-product attention
    decomposed into MatMul / Softmax / IsNaN / Where), ``onnxruntime.transformers.optimizer``
    (``model_type="bert"``, head count and hidden size read from the graph) matches the
    TorchScript exporter's. The first runs first; the second runs only when the first fused no
    attention, and its graph is kept when it fused some. Without fused attention ONNX Runtime runs
    attention as separate MatMul and Softmax kernels, and the fused graph is little faster.

    Args:
        fp32_path: The FP32 ONNX model.
        out_path: Where the fused model is written (atomically).
        packed_qkv: Fuse the query/key/value projections into ORT's ``Attention`` (one packed
            float GEMM). ``False`` stops at ``MultiHeadAttention`` with the three projections left
            as MatMuls, which dynamic quantization then turns into INT8 (a quarter of an encoder
            layer's weights); the TorchScript-graph fuser always packs.

    Returns:
        The ``com.microsoft`` operators in the written graph and their counts (empty: nothing fused).
    """
    import onnx

    out = Path(out_path)
    tmp = out.with_name(out.name + ".part")
    fused = _fuse_onnxscript(fp32_path, packed_qkv)
    _attention_for_cpu(fused)
    if not FUSED_ATTENTION_OPS & set(contrib_operators(fused)):
        try:
            other = _fuse_onnxruntime(fp32_path)
        except Exception as exc:  # its passes cannot read every graph; the first fuser's result stands
            log.debug("onnxruntime.transformers.optimizer failed: %s", exc)
        else:
            if FUSED_ATTENTION_OPS & set(contrib_operators(other)):
                fused = other
    # Both fusers keep value_info that no longer fits the fused nodes (a ViT's classifier shape
    # lands on a hidden-size tensor), which quantize_dynamic's shape inference refuses: drop it.
    del fused.graph.value_info[:]
    onnx.save_model(fused, str(tmp))
    tmp.replace(out)
    return contrib_operators(fused)


def _attention_for_cpu(model: Any) -> int:
    """Rewrite onnxscript's fused attention into the form ONNX Runtime's CPU kernels run fast.

    onnxscript's fusion leaves (1) the attention mask as a 4-D additive bias computed from the
    model's 2-D key padding mask (``Where`` over a broadcast), which sends ONNX Runtime's CPU
    attention down its general path, and (2) the packed Q/K/V weight as a ``Concat`` of three
    initializers with a ``qkv_hidden_sizes`` attribute, which ``quantize_dynamic`` will not turn
    into ``QAttention`` (MiniLM, batch 32, dynamic INT8, one run: 1.11x eager as fused, 1.45x
    with both rewritten). Here a bias whose values come from one 2-D integer or boolean graph
    input only (``attention_mask``; other inputs' shapes may enter) is replaced by that input as
    the key padding mask (``mask_index`` of ``Attention``, ``key_padding_mask`` of
    ``MultiHeadAttention``, int32: 1 attends, 0 is masked), the packed weight becomes one
    initializer and the redundant attribute goes. A bias that also depends on
    another input's values stays as it is. A bias built from the mask and shapes alone can still
    be more than key padding (a causal mask): the callers' :func:`fusion_mismatch` check on random
    0/1 masks or the user's padded data then refuses the fused graph.

    Returns:
        How many attention nodes now take the key padding mask.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    graph_inputs = {i.name: i for i in graph.input}
    mask_types = (TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL)

    def inputs_behind(tensor: str) -> set[str]:
        seen: set[str] = set()
        found: set[str] = set()
        stack = [tensor]
        while stack:
            name = stack.pop()
            if not name or name in seen:
                continue
            seen.add(name)
            if name in graph_inputs:
                found.add(name)
            elif name in producers and producers[name].op_type not in ("Shape", "Size"):
                stack.extend(producers[name].input)  # a shape carries no input's values
        return found

    casts: dict[str, str] = {}
    converted = 0
    for node in graph.node:
        if node.domain != "com.microsoft" or node.op_type not in ("Attention", "MultiHeadAttention"):
            continue
        if node.op_type == "Attention":
            weight = node.input[1]
            concat = producers.get(weight)
            if (
                weight not in initializers
                and concat is not None
                and concat.op_type == "Concat"
                and all(i in initializers for i in concat.input)
            ):
                axis = next(a.i for a in concat.attribute if a.name == "axis")
                packed = numpy_helper.from_array(
                    np.concatenate([numpy_helper.to_array(initializers[i]) for i in concat.input], axis=axis),
                    f"{weight}_packed",
                )
                graph.initializer.append(packed)
                initializers[packed.name] = packed
                node.input[1] = packed.name
            for attr in list(node.attribute):
                if attr.name == "qkv_hidden_sizes" and len(set(attr.ints)) == 1:
                    node.attribute.remove(attr)
        mask_slot = 3 if node.op_type == "Attention" else 4
        if len(node.input) <= 5 or not node.input[5] or any(node.input[mask_slot : mask_slot + 1]):
            continue
        sources = inputs_behind(node.input[5])
        if len(sources) != 1:
            continue
        (source,) = sources
        tensor_type = graph_inputs[source].type.tensor_type
        if tensor_type.elem_type not in mask_types or len(tensor_type.shape.dim) != 2:
            continue
        if source not in casts:
            casts[source] = f"{source}_key_padding_mask"
            graph.node.insert(
                0,
                helper.make_node(
                    "Cast",
                    [source],
                    [casts[source]],
                    to=TensorProto.INT32,
                    name=f"{source}_to_key_padding_mask",
                ),
            )
        while len(node.input) <= mask_slot:
            node.input.append("")
        node.input[mask_slot] = casts[source]
        del node.input[5:]
        while node.input and not node.input[-1]:
            del node.input[-1]
        converted += 1
    _drop_dead_nodes(model)
    return converted


def _drop_dead_nodes(model: Any) -> None:
    """Remove nodes and initializers no graph output depends on (a topologically sorted graph)."""
    graph = model.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        return  # subgraphs read outer tensors by name: leave such graphs whole
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def contrib_operators(model: Any) -> dict[str, int]:
    """Counts of a graph's ONNX Runtime contrib operators (``com.microsoft``), by operator type."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _fuse_onnxscript(fp32_path: str | Path, packed_qkv: bool) -> Any:
    from onnxscript import ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(fp32_path))
    with _quiet():
        if packed_qkv:
            model, _counts = optimize_for_ort(model)
        else:
            _fuse_to_multihead_attention(model)
    return ir.to_proto(model)


def _fuse_to_multihead_attention(model: Any) -> None:
    """``optimize_for_ort``'s passes (onnxscript 0.7) in its order, without the one that packs Q/K/V."""
    import onnx_ir.passes.common as common_passes
    from onnxscript import ir
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES, shape_optimization
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_layer_normalization
    from onnxscript.rewriter.rules.common import _gemm_to_matmul_add

    rewrite(model, [_gemm_to_matmul_add.gemm_to_matmul_add_rule])
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    fuse_erfgelu(model)
    fuse_skip_layer_normalization(model)
    common_passes.CommonSubexpressionEliminationPass()(model)
    fuse_sdpa(model, apply_shape_inference=True)
    for fuse in (fuse_mha1, fuse_mha2, fuse_mha_scale, fuse_mha_bias, fuse_gelu, fuse_bias_gelu):
        fuse(model)
    replace_sdpa_by_mha(model)
    optimize(model)
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    ir.passes.Sequential(
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
        common_passes.RemoveInitializersFromInputsPass(),
        common_passes.ShapeInferencePass(),
    )(model)


def _fuse_onnxruntime(fp32_path: str | Path) -> Any:
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet():
        # opt_level=0: only the fusion passes; the session applies its own graph optimizations.
        optimized = optimize_model(
            str(fp32_path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0, use_gpu=False
        )
    return optimized.model


FUSION_MIN_COSINE = 0.9999
"""Per-sample cosine the fused FP32 graph must keep to the unfused one: fusion is exact up to rounding."""


def fusion_mismatch(
    fp32_path: str | Path,
    fused_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    batch_sizes: Sequence[int],
) -> str:
    """Why the fused graph does not answer like the unfused one on ``inputs`` ('' when it does)."""
    from vxdeploy.components.verify.compare import row_cosines
    from vxdeploy.components.verify.runners import run_onnxruntime

    reference = run_onnxruntime(fp32_path, inputs, batch_sizes)
    candidate = run_onnxruntime(fused_path, inputs, batch_sizes)
    for name, ref in reference.items():
        got = candidate.get(name)
        if got is None or got.shape != ref.shape:
            return f"fused output {name!r} is {None if got is None else got.shape}, expected {ref.shape}"
        if ref.dtype.kind == "f":
            worst = float(row_cosines(ref, got).min(initial=1.0))
            if worst < FUSION_MIN_COSINE:
                return f"fused output {name!r} has min cosine {worst:.6f} to the unfused graph"
        elif not np.array_equal(ref, got):
            return f"fused output {name!r} differs from the unfused graph"
    return ""
