"""FP32 ONNX to FP16 ONNX, the input of a strongly typed FP16 TensorRT engine.

TensorRT 11 has no FP16 builder flag: the precision comes from the graph's own types. ModelOpt
AutoCast (where installed: the GPU image) keeps numerically sensitive nodes in FP32; otherwise
onnxconverter-common converts every float tensor, keeping the model's inputs and outputs FP32 so
callers and the Triton config do not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from vxdeploy.components.common.errors import CandidateUnavailable

Fp16Converter = Literal["auto", "modelopt", "onnxconverter"]

_EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf refuses single messages over 2 GB


def modelopt_available() -> bool:
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except Exception:  # ModelOpt raises more than ImportError when CUDA libraries are absent
        return False
    return True


def convert_onnx_to_fp16(src: str | Path, dst: str | Path, converter: Fp16Converter = "auto") -> str:
    """Write an FP16 copy of ``src`` to ``dst`` with FP32 inputs and outputs.

    Args:
        src: The FP32 ONNX model.
        dst: Where the FP16 model goes.
        converter: ``modelopt`` (AutoCast), ``onnxconverter`` (onnxconverter-common) or ``auto``
            (ModelOpt where importable).

    Returns:
        The converter used (``modelopt`` or ``onnxconverter``), recorded on the candidate.

    Raises:
        CandidateUnavailable: when the requested converter is not installed.
    """
    import onnx

    use = converter
    if converter == "auto":
        use = "modelopt" if modelopt_available() else "onnxconverter"
    model: Any
    if use == "modelopt":
        if not modelopt_available():
            raise CandidateUnavailable(
                "compilation.fp16_converter='modelopt' but modelopt.onnx.autocast is not importable here; "
                "install nvidia-modelopt[onnx] (GPU image) or use 'onnxconverter'"
            )
        from modelopt.onnx import autocast

        model = autocast.convert_to_mixed_precision(
            onnx_path=str(src), low_precision_type="fp16", keep_io_types=True
        )
    else:
        try:
            from onnxconverter_common import float16
        except ImportError as exc:
            raise CandidateUnavailable(
                "FP16 conversion needs onnxconverter-common (pip install onnxconverter-common) or ModelOpt"
            ) from exc
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    out = Path(dst)
    tmp = out.with_name(out.name + ".part")
    large = model.ByteSize() > _EXTERNAL_DATA_THRESHOLD
    onnx.save(model, str(tmp), save_as_external_data=large, location=out.name + ".data" if large else None)
    tmp.replace(out)
    return use
