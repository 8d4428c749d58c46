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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.calibrate.samples import BatchReader
from components.common.config import QuantizationConfig
from components.common.errors import ConfigError, InternalError

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "modelopt")
_MODELOPT_METHODS = {"entropy": "entropy", "max": "max"}
NUM_QUANTIZED_BINS = 128
"""Bins of the 8-bit target distribution in the entropy (KL) search, as TensorRT's calibrator uses."""


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


@dataclass(frozen=True)
class CalibrationRanges:
    """Activation ranges per tensor, as computed by ONNX Runtime's calibrator, and their cache file."""

    method: str
    cache_path: Path
    ranges: dict[str, tuple[list[float], list[float]]]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tensors": {k: {"min": lo, "max": hi} for k, (lo, hi) in sorted(self.ranges.items())},
        }


def compute_ranges(
    fp32_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    cfg: QuantizationConfig,
    cache_path: str | Path,
) -> CalibrationRanges:
    """Run ONNX Runtime's calibrator on real samples with the configured method and bins.

    Args:
        fp32_path: The FP32 ONNX model.
        inputs: Calibration samples by input name (already checked).
        cfg: Method (entropy, max, percentile), ``num_bins`` and ``percentile``.
        cache_path: Where the ranges are saved in ONNX Runtime's calibration-cache format.
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    method, options = _ort_calibration(cfg)
    with tempfile.TemporaryDirectory(prefix="vx-calib-") as tmp, _quiet():
        calibrator = create_calibrator(
            Path(fp32_path),
            None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method,
            providers=["CPUExecutionProvider"],
            extra_options=options,
        )
        calibrator.collect_data(BatchReader(inputs, cfg.calibration_batch_size))
        tensors = calibrator.compute_data()
        del calibrator
    save_tensors_data(tensors, Path(cache_path))
    ranges = {
        name: (
            np.ravel(td.range_value[0]).astype(float).tolist(),
            np.ravel(td.range_value[1]).astype(float).tolist(),
        )
        for name, td in tensors.data.items()
    }
    if method not in (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile):
        raise InternalError(f"unexpected calibration method {method}")
    return CalibrationRanges(method=cfg.method, cache_path=Path(cache_path), ranges=ranges)


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
) -> Path:
    """Write an explicit Q/DQ model with ONNX Runtime's ``quantize_static`` from cached ranges.

    QDQ format, per-channel weights (``cfg.per_channel``), signed 8-bit weights and
    ``cfg.activation_type`` activations (U8S8 by default) with ``cfg.reduce_range`` 7-bit
    weights, which keep integer kernels from saturating on CPUs without VNNI.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    method, _ = _ort_calibration(cfg)
    out = Path(out_path)
    tmp = out.with_name(out.name + ".part")
    with _quiet():
        quantize_static(
            str(fp32_path),
            str(tmp),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=method,
            calibration_cache_path=str(ranges.cache_path),
        )
    tmp.replace(out)
    return out


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
