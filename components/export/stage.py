"""Export stage: artifacts in and out around :func:`vxdeploy.components.export.onnx_export.export_onnx`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from vxdeploy.components.common.artifacts import OnnxModel, SourceModel
from vxdeploy.components.common.config import ExportConfig, ModelConfig, parse_section
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.stage import StageReport, log_metrics, reports_failure, timed
from vxdeploy.components.export.onnx_export import ONNX_FILE, ExportResult, export_onnx, export_parts
from vxdeploy.components.generation import export as generation_export
from vxdeploy.components.generation.spec import is_generation


@reports_failure("export")
def run(
    source_model: Any,
    eval_data: Any,
    model: dict[str, Any],
    export: dict[str, Any],
    onnx_model: Any,
    metrics: Any,
    report: Any,
) -> None:
    """Export the intake's model (and any parts) into the ``onnx_model`` directory, checked for parity."""
    model_cfg = parse_section(ModelConfig, model, "model")
    export_cfg = parse_section(ExportConfig, export, "export")
    meta = SourceModel.read(source_model)
    if is_generation(meta):  # a multi-part generation model: components/generation/export.py
        generation_export.run(
            source_model, eval_data, model_cfg, export_cfg, onnx_model, metrics, report, meta
        )
        return
    signature = meta.model_signature()
    source = Path(source_model.path) / meta.file
    out_dir = Path(onnx_model.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = StageReport("export")
    with timed(rep):
        evaluation = load_dataset(eval_data.path, signature, what="data.eval_uri", min_samples=1)
        result = export_onnx(
            source, meta.format, signature, out_dir / ONNX_FILE, export_cfg, evaluation.inputs
        )
        parts: dict[str, ExportResult] = {}
        if model_cfg.parts:
            with tempfile.TemporaryDirectory(prefix="vx-parts-") as tmp:
                parts = export_parts(model_cfg.parts, out_dir, export_cfg, tmp)
    OnnxModel(
        **result.to_metadata(),
        name=model_cfg.name,
        task=model_cfg.task,
        parts={name: {**r.to_metadata(), "file": f"{name}/{ONNX_FILE}"} for name, r in parts.items()},
    ).write(onnx_model)
    figures = {f"parity_{k}": v for k, v in result.parity_summary().items()}
    figures.update({"opset": result.opset, "export_seconds": round(rep.duration_s, 3), "parts": len(parts)})
    log_metrics(metrics, figures)
    rep.summary = {
        "file": ONNX_FILE,
        "opset": result.opset,
        "sha256": result.sha256,
        "exported": result.exported,
        "parity_reference": result.parity_reference,
        "parity_samples": result.parity_samples,
        **figures,
    }
    rep.details = {
        "signature": result.signature.to_dict(),
        "parity": [c.to_dict() for c in result.parity],
        "parts": {
            name: {**r.to_metadata(), "parity_outputs": [c.to_dict() for c in r.parity]}
            for name, r in parts.items()
        },
        "seconds": {
            "main": round(result.duration_s, 3),
            **{n: round(r.duration_s, 3) for n, r in parts.items()},
        },
    }
    rep.write(report.path)
