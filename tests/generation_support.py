"""Artifacts of ``builtin://digits-vlm`` laid out as the issue 17 contract says, for serving tests.

Until the export/select stages exist upstream, the ``selected_model`` and ``source_model`` folders are
built straight from :func:`~vxdeploy.components.common.builtin_vlm.write_digits_vlm` (the ONNX files
beside the ``.pt2`` parts): ``<path>/<part>/model.onnx`` (or ``model.pt2``) and per-part metadata.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.common import builtin_vlm as vlm
from vxdeploy.components.common.signature import signature_from_onnx


def digits_vlm_files(dest: Path) -> dict[str, Path]:
    """Part -> its ``.pt2`` in ``dest`` (the ``.onnx`` beside it)."""
    return vlm.write_digits_vlm(dest)


def selected_model_dir(files: dict[str, Path], dest: Path) -> tuple[Path, dict[str, Any]]:
    """``<dest>/<part>/model.onnx`` and the ``selected_model`` metadata (onnxruntime_fp32 per part)."""
    parts: dict[str, Any] = {}
    for part, pt2 in files.items():
        onnx = pt2.with_suffix(".onnx")
        (dest / part).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx, dest / part / "model.onnx")
        parts[part] = {
            "role": part,
            "candidate": "onnxruntime_fp32",
            "kind": "onnxruntime_fp32",
            "runtime": "onnxruntime",
            "precision": "fp32",
            "device": "cpu",
            "file": f"{part}/model.onnx",
            "signature": signature_from_onnx(onnx).to_dict(),
        }
    spec = vlm_spec_dict()
    whole = signature_from_onnx(files["vision_encoder"].with_suffix(".onnx"))
    metadata = {
        "kind": "onnxruntime_fp32",
        "file": "",
        "signature": {
            "inputs": whole.to_dict()["inputs"],
            "outputs": [{"name": "output_ids", "dtype": "int64", "shape": ["batch", vlm.MAX_NEW_TOKENS]}],
        },
        "precision": "fp32",
        "parts": parts,
        "generation": spec,
    }
    return dest, metadata


def source_model_dir(files: dict[str, Path], dest: Path) -> tuple[Path, dict[str, Any]]:
    """``<dest>/<part>/model.pt2`` and the ``source_model`` metadata."""
    parts: dict[str, Any] = {}
    for part, pt2 in files.items():
        (dest / part).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pt2, dest / part / "model.pt2")
        parts[part] = {
            "role": part,
            "format": "torch_export",
            "file": f"{part}/model.pt2",
            "signature": signature_from_onnx(pt2.with_suffix(".onnx")).to_dict(),
        }
    whole = signature_from_onnx(files["vision_encoder"].with_suffix(".onnx"))
    metadata = {
        "format": "torch_export",
        "file": "",
        "signature": {
            "inputs": whole.to_dict()["inputs"],
            "outputs": [{"name": "output_ids", "dtype": "int64", "shape": ["batch", vlm.MAX_NEW_TOKENS]}],
        },
        "parts": parts,
        "generation": vlm_spec_dict(),
        "name": vlm.MODEL,
    }
    return dest, metadata


def vlm_spec_dict() -> dict[str, Any]:
    return vlm.generation_spec().to_dict()


def eval_npz(dest: Path, n: int = 48) -> Path:
    """The first ``n`` held-out digits as ``images`` + ``labels``."""
    from vxdeploy.components.common.builtin import digits_split

    _, _, x_eval, y_eval = digits_split()
    path = dest / "eval.npz"
    np.savez(path, images=np.ascontiguousarray(x_eval[:n], np.float32), labels=y_eval[:n].astype(np.int64))
    return path
