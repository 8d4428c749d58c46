"""Compile stage: artifacts in and out around :func:`vxdeploy.components.compile.build.build_candidates`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vxdeploy.components.common.artifacts import CalibratedModel, Candidates, OnnxModel, SourceModel
from vxdeploy.components.common.config import CompilationConfig, parse_section
from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.common.stage import StageReport, log_metrics, reports_failure, timed
from vxdeploy.components.compile.build import CompileSources, build_candidates
from vxdeploy.components.compile.gpus import check_build_hardware
from vxdeploy.components.generation.spec import is_generation


def artifact_file(artifact: Any, name: str) -> Path | None:
    """The model file ``name`` of a KFP artifact (inside its folder, or the artifact's path itself).

    None when there is no such file.
    """
    root = Path(artifact.path)
    if root.is_file():
        return root
    candidate = root / name
    return candidate if candidate.is_file() else None


def sources_from_artifacts(source_model: Any, onnx_model: Any, qdq_model: Any) -> CompileSources:
    """Read the export, calibration and intake artifacts into :class:`CompileSources`."""
    source = SourceModel.read(source_model)
    onnx = OnnxModel.read(onnx_model)
    qdq = CalibratedModel.read(qdq_model)
    qdq_path = artifact_file(qdq_model, qdq.file) if qdq.produced and qdq.file else None
    reason = ""
    if not qdq.accepted or qdq_path is None:
        reason = qdq.reason or "the INT8 model was rejected by its accuracy gate"
        qdq_path = None
    dynamic_path, dynamic_reason = None, "calibration wrote no dynamic INT8 model (quantization.dynamic)"
    if qdq.dynamic_file:
        dynamic_path = Path(qdq_model.path) / qdq.dynamic_file
        dynamic_reason = ""
        if not qdq.dynamic_accepted:
            dynamic_reason = qdq.dynamic_reason or "rejected by its accuracy gate"
            dynamic_path = None
    return CompileSources(
        signature=onnx.model_signature(),
        onnx_path=artifact_file(onnx_model, onnx.file),
        qdq_path=qdq_path,
        qdq_unavailable_reason=reason,
        dynamic_path=dynamic_path,
        dynamic_unavailable_reason=dynamic_reason,
        source_path=artifact_file(source_model, source.file),
        source_format=source.format,
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
    if is_generation(onnx_model):  # a multi-part generation model: candidates per part
        from vxdeploy.components.generation import compile as generation_compile

        return generation_compile.run(
            source_model,
            onnx_model,
            qdq_model,
            compilation,
            build_accelerator_type,
            build_accelerator_count,
            candidates,
            metrics,
            report,
        )
    cfg = parse_section(CompilationConfig, compilation, "compilation")
    rep = StageReport("compile")
    with timed(rep):
        device = check_build_hardware(build_accelerator_type, int(build_accelerator_count))
        sources = sources_from_artifacts(source_model, onnx_model, qdq_model)
        manifest = build_candidates(candidates.path, cfg, sources)
    by_status: dict[str, list[str]] = {"built": [], "skipped": [], "failed": []}
    for c in manifest.candidates:
        by_status[c.status].append(c.name)
    Candidates(
        built=by_status["built"],
        not_built={c.name: c.reason for c in manifest.candidates if not c.built},
        signature=manifest.signature,
    ).write(candidates)
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
