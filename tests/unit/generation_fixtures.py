"""The artifacts a generation model's compile and select stages read, built from ``builtin://digits-vlm``.

Written the way the intake, export and calibration stages write them for a generation model
(``/work/coord/api-17.md``): one folder per part, ``parts`` and ``generation`` on the metadata. The
parts come from the built-in cache (trained once per machine); the vision encoder's INT8 model is a
real ONNX Runtime Q/DQ quantization calibrated on the digits calibration split.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from vxdeploy.components.common import builtin_vlm as vlm
from vxdeploy.components.common.builtin import digits_split
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.signature import signature_from_onnx
from vxdeploy.components.generation.spec import OUTPUT_IDS


class Metrics:
    """A KFP Metrics stand-in that keeps what was logged."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


def artifact(path: Path, **metadata: Any) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), metadata=dict(metadata), uri="")


def quantize_encoder(fp32: Path, out: Path, images: np.ndarray, *, symmetric: bool = False) -> None:
    """ONNX Runtime static Q/DQ INT8 calibrated on ``images``, per channel.

    U8S8 with ``reduce_range`` (what serves well on CPU), or with ``symmetric`` int8 activations and
    weights with zero point 0 (the Q/DQ form TensorRT builds).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"images": images[i : i + 32]} for i in range(0, len(images), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=not symmetric,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {},
    )


def write_vlm_artifacts(
    root: Path,
    *,
    int8_encoder: bool = True,
    eval_samples: int = 200,
    calibration_scale: float = 1.0,
    labelled: bool = True,
    symmetric: bool = False,
) -> dict[str, Any]:
    """Source, export, calibration and eval artifacts of digits-vlm under ``root``.

    Args:
        root: Folder to write into.
        int8_encoder: Quantize the vision encoder (accepted, as calibration would).
        eval_samples: Held-out digits in the eval data.
        calibration_scale: Scales the calibration images: far below 1, the INT8 ranges are too narrow
            for real images (a badly calibrated encoder, as a user's wrong calibration set gives).
        labelled: Write the digit labels (the reference captions) into the eval data.
        symmetric: Quantize the encoder to symmetric int8 Q/DQ (TensorRT's INT8 form).
    """
    spec = vlm.generation_spec()
    files = vlm.write_digits_vlm(root / "files")
    x_train, _, x_eval, y_eval = digits_split()
    signatures = {p: signature_from_onnx(files[p].with_suffix(".onnx")) for p in vlm.PARTS}
    whole = {
        "inputs": signatures["vision_encoder"].to_dict()["inputs"],
        "outputs": [{"name": OUTPUT_IDS, "dtype": "int64", "shape": ["batch", spec.max_new_tokens]}],
    }
    gen = spec.to_dict()
    src_parts, onnx_parts, qdq_parts = {}, {}, {}
    for p in vlm.PARTS:
        (root / "source" / p).mkdir(parents=True, exist_ok=True)
        (root / "onnx" / p).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[p], root / "source" / p / "model.pt2")
        shutil.copyfile(files[p].with_suffix(".onnx"), root / "onnx" / p / "model.onnx")
        sig = signatures[p].to_dict()
        src_parts[p] = {"role": p, "format": "torch_export", "file": f"{p}/model.pt2", "signature": sig}
        onnx_parts[p] = {"role": p, "file": f"{p}/model.onnx", "signature": sig}
        qdq_parts[p] = {
            "role": p,
            "produced": False,
            "accepted": False,
            "reason": "decoder parts stay FP32 (not calibrated)",
            "file": None,
        }
    if int8_encoder:
        quantize_encoder(
            root / "onnx" / "vision_encoder" / "model.onnx",
            root / "qdq" / "vision_encoder" / "model.onnx",
            np.ascontiguousarray(x_train[:256] * np.float32(calibration_scale)),
            symmetric=symmetric,
        )
        qdq_parts["vision_encoder"] = {
            "role": "vision_encoder",
            "produced": True,
            "accepted": True,
            "reason": "",
            "file": "vision_encoder/model.onnx",
            "method": "minmax",
        }
    (root / "qdq").mkdir(exist_ok=True)
    labels = y_eval[:eval_samples] if labelled else None
    Dataset({"images": np.ascontiguousarray(x_eval[:eval_samples])}, labels).save(root / "eval.npz")
    return {
        "spec": spec,
        "source": artifact(
            root / "source", format="torch_export", file="", signature=whole, parts=src_parts, generation=gen
        ),
        "onnx": artifact(root / "onnx", signature=whole, parts=onnx_parts, generation=gen, task="generation"),
        "qdq": artifact(
            root / "qdq",
            produced=int8_encoder,
            accepted=int8_encoder,
            file="vision_encoder/model.onnx" if int8_encoder else None,
            reason="" if int8_encoder else "quantization off",
            parts=qdq_parts,
            generation=gen,
        ),
        "eval": artifact(root / "eval.npz"),
    }
