"""Build every configured serving candidate into a candidates directory.

Each candidate is built into its own folder (written aside and renamed, so a failed build leaves
nothing) and listed in ``manifest.json`` with its status: built, skipped with the reason (TensorRT
without a GPU, INT8 rejected by its gate) or failed with the error.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from vxdeploy.components.common.config import CompilationConfig
from vxdeploy.components.common.errors import CandidateUnavailable, ConfigError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.common.stage import write_json
from vxdeploy.components.compile import aoti, ort, tensorrt
from vxdeploy.components.compile.candidates import (
    Candidate,
    CandidateManifest,
    candidate_folder,
    host_info,
    sha256_file,
    write_manifest,
)
from vxdeploy.components.compile.fp16 import convert_onnx_to_fp16

log = logging.getLogger(__name__)

_PRECISION = {
    "onnxruntime_fp32": "fp32",
    "onnxruntime_int8": "int8",
    "onnxruntime_int8_dynamic": "int8",
    "tensorrt_fp32": "fp32",
    "tensorrt_fp16": "fp16",
    "tensorrt_int8": "int8",
    "aoti": "fp32",
}


@dataclass(frozen=True)
class CompileSources:
    """The models compilation starts from.

    Attributes:
        signature: The model's signature (from the ONNX model's metadata).
        onnx_path: The FP32 ONNX model, if there is one.
        qdq_path: The Q/DQ INT8 ONNX model, if calibration produced and accepted one.
        qdq_unavailable_reason: Why there is no Q/DQ model (the gate's reason), shown on INT8 candidates.
        dynamic_path: The dynamically quantized INT8 model, if calibration wrote and accepted one.
        dynamic_unavailable_reason: Why there is none, shown on the dynamic INT8 candidate.
        source_path: The source model (a torch.export ``.pt2`` for AOT Inductor).
        source_format: ``torch_export``, ``torchscript`` or ``onnx``.
    """

    signature: ModelSignature
    onnx_path: Path | None
    qdq_path: Path | None = None
    qdq_unavailable_reason: str = ""
    source_path: Path | None = None
    dynamic_path: Path | None = None
    dynamic_unavailable_reason: str = ""
    source_format: str = ""


def _versions(*modules: str) -> dict[str, str]:
    import importlib

    out = {}
    for name in modules:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            continue
    return out


def _require(path: Path | None, what: str) -> Path:
    if path is None or not path.is_file():
        raise CandidateUnavailable(what)
    return path


def _qdq(sources: CompileSources) -> Path:
    reason = sources.qdq_unavailable_reason or "calibration produced no Q/DQ model"
    return _require(sources.qdq_path, f"no INT8 Q/DQ model: {reason}")


def _fp32_onnx(sources: CompileSources) -> Path:
    return _require(sources.onnx_path, "no FP32 ONNX model from export")


def build_candidates(
    out_dir: str | Path, cfg: CompilationConfig, sources: CompileSources
) -> CandidateManifest:
    """Build the candidates ``cfg.candidates`` names into ``out_dir`` and write its manifest.

    Args:
        out_dir: The candidates directory (created if missing).
        cfg: The compilation section.
        sources: The FP32 ONNX, Q/DQ ONNX and source models.

    Returns:
        The manifest, also written to ``out_dir/manifest.json``.

    Raises:
        ConfigError: when the config does not fit the model (e.g. a dynamic dim without a
            TensorRT profile), whether or not TensorRT can run here.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trt_kinds = [k for k in cfg.candidates if k.startswith("tensorrt_")]
    # Decided before any build, so a bad profile fails on every machine, not only on GPU ones.
    trt_options = {k: tensorrt.build_options(cfg, sources.signature, _PRECISION[k]) for k in trt_kinds}
    cache_location = tensorrt.timing_cache_location(cfg, out)

    candidates: list[Candidate] = []
    for kind in dict.fromkeys(cfg.candidates):
        if kind in ("onnxruntime_fp32", "onnxruntime_int8", "onnxruntime_int8_dynamic"):
            candidates.append(
                _build_one(
                    out,
                    kind,
                    kind,
                    runtime="onnxruntime",
                    device="cpu",
                    build=partial(_onnxruntime, cfg=cfg, sources=sources, kind=kind),
                )
            )
        elif kind == "aoti":
            for device in dict.fromkeys(cfg.aoti_devices):
                candidates.append(
                    _build_one(
                        out,
                        f"aoti_{device}",
                        kind,
                        runtime="aoti",
                        device=device,
                        build=partial(_aoti, cfg=cfg, sources=sources, device=device),
                    )
                )
        else:
            options = trt_options[kind]
            candidates.append(
                _build_one(
                    out,
                    kind,
                    kind,
                    runtime="tensorrt",
                    device="cuda",
                    build=partial(
                        _tensorrt, cfg=cfg, sources=sources, options=options, cache_location=cache_location
                    ),
                )
            )
    manifest = CandidateManifest(
        candidates=candidates, signature=sources.signature.to_dict(), host=host_info()
    )
    write_manifest(out, manifest)
    return manifest


def _build_one(
    out: Path,
    name: str,
    kind: str,
    *,
    runtime: str,
    device: str,
    build: Callable[[Path], dict[str, Any]],
) -> Candidate:
    """Run one builder; turn its result or its reason for not building into a Candidate."""
    base: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "precision": _PRECISION[kind],
        "runtime": runtime,
        "device": device,
    }
    start = time.perf_counter()
    try:
        with candidate_folder(out, name) as folder:
            result = build(folder)
            file_sha = sha256_file(folder / result["file"])
    except CandidateUnavailable as exc:
        log.info("candidate %s skipped: %s", name, exc)
        return Candidate(status="skipped", reason=str(exc), **base)
    except ConfigError:
        raise
    except Exception as exc:  # one broken candidate must not take the others down
        log.exception("candidate %s failed", name)
        return Candidate(status="failed", reason=f"{type(exc).__name__}: {exc}", **base)
    base["device"] = result.get("device", device)
    return Candidate(
        status="built",
        file=f"{name}/{result['file']}",
        versions=result.get("versions", {}),
        gpu_name=result.get("gpu_name", ""),
        compute_capability=result.get("compute_capability", ""),
        build_time_s=round(time.perf_counter() - start, 3),
        sha256=file_sha,
        options=result.get("options", {}),
        engine=result.get("engine", {}),
        **base,
    )


def _dynamic(sources: CompileSources) -> Path:
    reason = sources.dynamic_unavailable_reason or "calibration wrote no dynamic INT8 model"
    return _require(sources.dynamic_path, f"no dynamic INT8 model: {reason}")


def _onnxruntime(
    folder: Path, *, cfg: CompilationConfig, sources: CompileSources, kind: str
) -> dict[str, Any]:
    sources_by_kind = {
        "onnxruntime_fp32": _fp32_onnx,
        "onnxruntime_int8": _qdq,
        "onnxruntime_int8_dynamic": _dynamic,
    }
    source = sources_by_kind[kind](sources)
    with tempfile.TemporaryDirectory(prefix="vx-fuse-") as tmp:
        fused: dict[str, int] = {}
        if kind == "onnxruntime_fp32":
            source, fused = _fused_transformer(source, sources.signature, Path(tmp))
        result = ort.build_onnxruntime_candidate(
            source,
            folder,
            optimization_level=cfg.ort_optimization_level,
            save_optimized_model=cfg.ort_save_optimized_model,
            require_qdq=kind == "onnxruntime_int8",
            require_int8=kind == "onnxruntime_int8_dynamic",
        )
    if fused:
        result["options"]["fused_operators"] = fused
    result["versions"] = _versions("onnxruntime", "onnx")
    # onnxruntime-gpu (the GPU image) records CUDA first: the candidate then serves on the GPU.
    result["device"] = "cuda" if result["options"]["providers"][0] == "CUDAExecutionProvider" else "cpu"
    return result


_FUSE_MAX_BYTES = 1_800_000_000
"""Fusion writes one protobuf: larger models (weights in a side file) are served unfused."""


def _fused_transformer(onnx_path: Path, signature: ModelSignature, work: Path) -> tuple[Path, dict[str, int]]:
    """A transformer's FP32 graph with attention, LayerNorm and GELU fused (ONNX Runtime's contrib ops).

    ONNX Runtime does not fuse the attention that ``torch.export`` writes by itself, and runs it
    as separate MatMul / Softmax kernels. The fused graph is used only when it fused attention
    and answers like the unfused one (per-sample cosine) on sample inputs; otherwise, and for
    graphs without attention (CNNs), the export's graph is served as it is.
    """
    from vxdeploy.components.calibrate.backends import FUSED_ATTENTION_OPS, fuse_transformer, fusion_mismatch
    from vxdeploy.components.calibrate.int8 import has_attention

    if onnx_path.stat().st_size > _FUSE_MAX_BYTES or not has_attention(onnx_path):
        return onnx_path, {}
    fused_path = work / ort.MODEL_FILE
    try:
        fused = fuse_transformer(onnx_path, fused_path)
        mismatch = fusion_mismatch(onnx_path, fused_path, signature.sample_inputs(batch=2), (2,))
    except Exception as exc:  # a graph the fusers cannot read is served unfused
        log.warning("onnxruntime_fp32: transformer fusion failed (%s); serving the unfused graph", exc)
        return onnx_path, {}
    if mismatch or not FUSED_ATTENTION_OPS & set(fused):
        if mismatch:
            log.warning("onnxruntime_fp32: %s; serving the unfused graph", mismatch)
        return onnx_path, {}
    return fused_path, fused


def _gpu_fields() -> dict[str, str]:
    name, (major, minor) = tensorrt.cuda_device()
    return {"gpu_name": name, "compute_capability": f"{major}.{minor}"}


def _aoti(folder: Path, *, cfg: CompilationConfig, sources: CompileSources, device: str) -> dict[str, Any]:
    if sources.source_path is None:
        if sources.source_format in ("onnx", "torchscript"):
            aoti.load_exported_program("", sources.source_format)  # raises, saying why
        raise CandidateUnavailable("no source model to compile with AOT Inductor")
    options = aoti.compile_aoti(
        sources.source_path,
        folder / aoti.PACKAGE_FILE,
        sources.signature,
        source_format=sources.source_format or "torch_export",
        device=device,
        max_autotune=cfg.aoti_max_autotune,
        freezing=cfg.aoti_freezing,
    )
    result: dict[str, Any] = {"file": aoti.PACKAGE_FILE, "options": options, "versions": _versions("torch")}
    if device == "cuda":
        result.update(_gpu_fields())
    return result


def _tensorrt(
    folder: Path,
    *,
    cfg: CompilationConfig,
    sources: CompileSources,
    options: tensorrt.TensorRTBuildOptions,
    cache_location: Path,
) -> dict[str, Any]:
    trt = tensorrt.import_tensorrt()
    gpu = _gpu_fields()
    recorded = options.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        if options.precision == "int8":
            src = _qdq(sources)
            tensorrt.check_qdq_for_tensorrt(src)
        elif options.precision == "fp16":
            src = Path(tmp) / "model.fp16.onnx"
            recorded["fp16_converter"] = convert_onnx_to_fp16(_fp32_onnx(sources), src, cfg.fp16_converter)
        else:
            src = _fp32_onnx(sources)
        cache_file = tensorrt.timing_cache_file(
            cache_location, str(trt.__version__), gpu["gpu_name"], gpu["compute_capability"]
        )
        meta = tensorrt.build_tensorrt_engine(src, folder / tensorrt.ENGINE_FILE, options, cache_file)
    write_json(folder / tensorrt.ENGINE_METADATA_FILE, meta.to_dict())
    return {
        "file": tensorrt.ENGINE_FILE,
        "options": recorded,
        "engine": meta.to_dict(),
        "versions": {"tensorrt": meta.tensorrt_version},
        **gpu,
    }
