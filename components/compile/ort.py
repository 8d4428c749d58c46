"""ONNX Runtime candidates: the ONNX file plus the session options it is served and measured with.

The session options are data (``session_options.json``), so the benchmark and the Triton
configuration use the same ones the candidate was checked with.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vxdeploy.components.common.errors import CandidateUnavailable
from vxdeploy.components.common.stage import write_json

SESSION_OPTIONS_FILE = "session_options.json"
MODEL_FILE = "model.onnx"
OPTIMIZED_MODEL_FILE = "model.optimized.onnx"

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options_dict(
    optimization_level: str = "all", providers: list[str] | None = None
) -> dict[str, Any]:
    """The session options an ONNX Runtime candidate records, as JSON-ready data.

    Args:
        optimization_level: ``disable``, ``basic``, ``extended`` or ``all``.
        providers: Execution providers in order of preference; default: CUDA first where this
            ONNX Runtime build has it, then CPU.
    """
    if optimization_level not in _LEVELS:
        raise ValueError(f"optimization_level {optimization_level!r} is not one of {', '.join(_LEVELS)}")
    if providers is None:
        providers = available_providers()
    return {
        "graph_optimization_level": _LEVELS[optimization_level],
        "execution_mode": "ORT_SEQUENTIAL",
        # 0 lets ONNX Runtime use one thread per physical core, which is what a serving replica has.
        "intra_op_num_threads": 0,
        "inter_op_num_threads": 0,
        "providers": providers,
    }


def available_providers() -> list[str]:
    """CUDA then CPU where this ONNX Runtime build has CUDA, else CPU only."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


ALLOW_SPINNING_ENV = "VXDEPLOY_ORT_ALLOW_SPINNING"
"""``0``/``1``: whether :func:`make_session`'s sessions spin-wait between operators (unset: ORT's default)."""


def make_session(
    model_path: str | Path, options: Mapping[str, Any], optimized_path: str | Path | None = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` built from recorded session options.

    Args:
        model_path: The ONNX file.
        options: A dict from :func:`session_options_dict`.
        optimized_path: Where ONNX Runtime should also write its optimized graph, if anywhere.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, str(options["graph_optimization_level"])
    )
    so.execution_mode = getattr(ort.ExecutionMode, str(options.get("execution_mode", "ORT_SEQUENTIAL")))
    so.intra_op_num_threads = int(options.get("intra_op_num_threads", 0))
    so.inter_op_num_threads = int(options.get("inter_op_num_threads", 0))
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    spinning = os.environ.get(ALLOW_SPINNING_ENV)
    if spinning in ("0", "1"):
        # Set by processes that time runners (components/select/isolated.py): spinning pools
        # slow every runtime on a machine whose load exceeds its cores.
        so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        so.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    providers = [
        p for p in options.get("providers", ["CPUExecutionProvider"]) if p in ort.get_available_providers()
    ]
    return ort.InferenceSession(
        str(model_path), sess_options=so, providers=providers or ["CPUExecutionProvider"]
    )


def count_qdq_nodes(model_path: str | Path) -> int:
    """Number of QuantizeLinear/DequantizeLinear nodes in an ONNX graph (0 means not quantized)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


DYNAMIC_INT8_OPS = frozenset(
    {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger"}
)
"""Operators only a dynamically quantized graph has."""


def count_dynamic_int8_nodes(model_path: str | Path) -> int:
    """Number of dynamic-quantization nodes (0 means not dynamically quantized)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type in DYNAMIC_INT8_OPS)


def build_onnxruntime_candidate(
    onnx_path: str | Path,
    folder: str | Path,
    *,
    optimization_level: str = "all",
    save_optimized_model: bool = False,
    require_qdq: bool = False,
    require_int8: bool = False,
) -> dict[str, Any]:
    """Copy an ONNX model into ``folder`` with its session options, checked by opening a session.

    Args:
        onnx_path: The FP32 or Q/DQ ONNX file.
        folder: The candidate's folder.
        optimization_level: ONNX Runtime graph optimization level to record.
        save_optimized_model: Also store ONNX Runtime's optimized graph (valid for this ONNX
            Runtime version and CPU features only, so it is an extra file, not the served one).
        require_qdq: Refuse a model without Q/DQ nodes (an INT8 candidate that is not INT8).
        require_int8: Refuse a model without dynamic-quantization nodes (``DynamicQuantizeLinear``...).

    Returns:
        ``{"file": ..., "options": ...}`` with ``file`` relative to ``folder``.

    Raises:
        CandidateUnavailable: when the file is missing or, with ``require_qdq``, not quantized.
    """
    src = Path(onnx_path)
    if not src.is_file():
        raise CandidateUnavailable(f"no ONNX model at {str(src)!r}")
    if require_qdq and count_qdq_nodes(src) == 0:
        raise CandidateUnavailable(
            f"{str(src)!r} has no QuantizeLinear/DequantizeLinear nodes: it is not a Q/DQ INT8 model"
        )
    if require_int8 and count_dynamic_int8_nodes(src) == 0:
        raise CandidateUnavailable(f"{str(src)!r} has no dynamic-quantization nodes: it is not dynamic INT8")
    out = Path(folder)
    shutil.copyfile(src, out / MODEL_FILE)
    # External weights (models over 2 GB) travel with the graph.
    for extra in src.parent.iterdir():
        if extra.is_file() and extra.suffix in (".data", ".bin", ".weights"):
            shutil.copyfile(extra, out / extra.name)
    options = session_options_dict(optimization_level)
    optimized = out / OPTIMIZED_MODEL_FILE if save_optimized_model else None
    make_session(out / MODEL_FILE, options, optimized_path=optimized)
    if optimized is not None:
        options["optimized_model_file"] = OPTIMIZED_MODEL_FILE
    write_json(out / SESSION_OPTIONS_FILE, options)
    return {"file": MODEL_FILE, "options": options}
