"""Compile stage: artifacts in and out around :func:`components.compile.build.build_candidates`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.common.config import CompilationConfig, parse_section
from components.common.errors import ConfigError
from components.common.signature import ModelSignature, signature_from_onnx
from components.common.stage import StageReport, log_metrics, reports_failure, timed
from components.compile.build import CompileSources, build_candidates
from components.compile.gpus import check_build_hardware


def artifact_file(artifact: Any, default_name: str) -> Path | None:
    """The model file of a KFP artifact, or None if absent.

    That is the artifact's ``.path`` when it is a file, else the file its metadata ``file`` names
    (default ``default_name``) inside the ``.path`` directory.
    """
    root = Path(artifact.path)
    if root.is_file():
        return root
    candidate = root / str((artifact.metadata or {}).get("file") or default_name)
    return candidate if candidate.is_file() else None


def sources_from_artifacts(source_model: Any, onnx_model: Any, qdq_model: Any) -> CompileSources:
    """Read the export, calibration and intake artifacts into :class:`CompileSources`."""
    onnx_path = artifact_file(onnx_model, "model.onnx")
    onnx_meta = dict(onnx_model.metadata or {})
    source_meta = dict(source_model.metadata or {})
    if onnx_meta.get("signature"):
        signature = ModelSignature.from_dict(onnx_meta["signature"])
    elif onnx_path is not None:
        signature = signature_from_onnx(onnx_path)
    else:
        signature = ModelSignature.from_dict(source_meta["signature"])

    qdq_meta = dict(qdq_model.metadata or {}) if qdq_model is not None else {}
    qdq_path = artifact_file(qdq_model, "model.onnx") if qdq_model is not None else None
    reason = ""
    if not qdq_meta.get("accepted", qdq_path is not None):
        reason = str(qdq_meta.get("reason") or "the INT8 model was rejected by its accuracy gate")
        qdq_path = None
    dynamic_path, dynamic_reason = None, "calibration wrote no dynamic INT8 model (quantization.dynamic)"
    if qdq_model is not None and qdq_meta.get("dynamic_file"):
        dynamic_path = Path(qdq_model.path) / str(qdq_meta["dynamic_file"])
        dynamic_reason = ""
        if not qdq_meta.get("dynamic_accepted", False):
            dynamic_reason = str(qdq_meta.get("dynamic_reason") or "rejected by its accuracy gate")
            dynamic_path = None
    return CompileSources(
        signature=signature,
        onnx_path=onnx_path,
        qdq_path=qdq_path,
        qdq_unavailable_reason=reason,
        dynamic_path=dynamic_path,
        dynamic_unavailable_reason=dynamic_reason,
        source_path=artifact_file(source_model, "model.pt2"),
        source_format=str(source_meta.get("format", "")),
    )


@reports_failure("compile")
def run(
    source_model: Any,
    onnx_model: Any,
    qdq_model: Any,
    compilation: dict[str, Any],
    build_accelerator_type: str,
    build_accelerator_count: int,
    candidates: Any,
    metrics: Any,
    report: Any,
) -> None:
    cfg = parse_section(CompilationConfig, compilation, "compilation")
    rep = StageReport("compile")
    with timed(rep):
        device = check_build_hardware(build_accelerator_type, int(build_accelerator_count))
        sources = sources_from_artifacts(source_model, onnx_model, qdq_model)
        manifest = build_candidates(candidates.path, cfg, sources)
    by_status: dict[str, list[str]] = {"built": [], "skipped": [], "failed": []}
    for c in manifest.candidates:
        by_status[c.status].append(c.name)
    candidates.metadata.update(
        {
            "built": by_status["built"],
            "not_built": {c.name: c.reason for c in manifest.candidates if not c.built},
            "signature": manifest.signature,
        }
    )
    rep.summary = {
        "device": device,
        "built": by_status["built"],
        "skipped": by_status["skipped"],
        "failed": by_status["failed"],
        "build_time_s": {c.name: c.build_time_s for c in manifest.built},
    }
    rep.details = {
        "candidates": [c.to_dict() for c in manifest.candidates],
        "skipped": [
            {"name": c.name, "kind": c.kind, "status": c.status, "reason": c.reason}
            for c in manifest.candidates
            if not c.built
        ],
        "host": manifest.host,
    }
    figures: dict[str, Any] = {
        "candidates_built": len(by_status["built"]),
        "candidates_skipped": len(by_status["skipped"]),
        "candidates_failed": len(by_status["failed"]),
    }
    figures.update({f"build_time_s_{c.name}": c.build_time_s for c in manifest.built})
    log_metrics(metrics, figures)
    if not manifest.built:
        rep.status, rep.reason = "failed", "no candidate could be built"
        rep.write(report.path)
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in manifest.candidates)
        raise ConfigError(
            "compilation.candidates",
            list(cfg.candidates),
            f"none of them could be built here ({reasons}); include onnxruntime_fp32, or run on a GPU",
        )
    rep.write(report.path)
