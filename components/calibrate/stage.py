"""Calibration stage: artifacts around :func:`vxdeploy.components.calibrate.int8.calibrate_int8`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vxdeploy.components.calibrate.backends import effective_reduce_range
from vxdeploy.components.calibrate.int8 import (
    QDQ_FILE,
    RANGES_FILE,
    TABLE_JSON,
    TABLE_MD,
    accuracy_markdown,
    calibrate_int8,
)
from vxdeploy.components.common.artifacts import CalibratedModel, OnnxModel
from vxdeploy.components.common.config import DataConfig, QuantizationConfig, SelectionConfig, parse_section
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.stage import (
    StageReport,
    log_metrics,
    reports_failure,
    timed,
    write_text_atomic,
)
from vxdeploy.components.export.onnx_export import sha256_file
from vxdeploy.components.generation import calibrate as generation_calibrate
from vxdeploy.components.generation.spec import is_generation


@reports_failure("calibrate")
def run(
    onnx_model: Any,
    calibration_data: Any,
    eval_data: Any,
    data: dict[str, Any],
    quantization: dict[str, Any],
    selection: dict[str, Any],
    qdq_model: Any,
    metrics: Any,
    table: Any,
    report: Any,
) -> None:
    """Calibrate and gate the FP32 ONNX model; write the Q/DQ model, ranges and accuracy table."""
    data_cfg = parse_section(DataConfig, data, "data")
    quant_cfg = parse_section(QuantizationConfig, quantization, "quantization")
    selection_cfg = parse_section(SelectionConfig, selection, "selection")
    meta = OnnxModel.read(onnx_model)
    if is_generation(meta):  # a multi-part generation model: components/generation/calibrate.py
        generation_calibrate.run(
            onnx_model,
            calibration_data,
            eval_data,
            data_cfg,
            quant_cfg,
            selection_cfg,
            qdq_model,
            metrics,
            table,
            report,
            meta,
        )
        return
    signature = meta.model_signature()
    fp32 = Path(onnx_model.path) / meta.file
    out_dir = Path(qdq_model.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = StageReport("calibrate")

    if not quant_cfg.enabled:
        reason = "quantization.enabled is false"
        CalibratedModel(accepted=False, reason=reason, produced=False).write(qdq_model)
        rep.status, rep.reason = "skipped", reason
        write_text_atomic(table.path, f"INT8 calibration skipped: {reason}.\n")
        rep.write(report.path)
        return

    with timed(rep):
        calibration = load_dataset(
            calibration_data.path, signature, what="data.calibration_uri", min_samples=1
        )
        evaluation = load_dataset(eval_data.path, signature, what="data.eval_uri", min_samples=1)
        result = calibrate_int8(
            fp32,
            signature,
            calibration,
            evaluation,
            out_dir,
            quant_cfg,
            data_cfg,
            accuracy_budget=selection_cfg.accuracy_budget,
            min_cosine=selection_cfg.min_cosine,
            task=meta.task,
        )
    summary = result.summary()
    dynamic = result.dynamic
    CalibratedModel(
        **{**summary, "excluded_layers": result.excluded_layers},
        produced=True,
        reason=result.reason,
        accuracy_budget=selection_cfg.accuracy_budget,
        file=QDQ_FILE,
        ranges_file=RANGES_FILE,
        table_file=TABLE_MD,
        signature=signature.to_dict(),
        sha256=sha256_file(out_dir / QDQ_FILE),
        source_sha256=meta.sha256,
        opset=meta.opset,
        activation_type=quant_cfg.activation_type,
        per_channel=quant_cfg.per_channel,
        reduce_range=effective_reduce_range(quant_cfg),
        dynamic_file=None if dynamic is None else dynamic.model_path.name,
        dynamic_reason=None if dynamic is None else dynamic.reason,
        dynamic_sha256=None if dynamic is None else sha256_file(dynamic.model_path),
    ).write(qdq_model)
    figures = {
        "accepted": result.accepted,
        "fp32_accuracy": summary["fp32_accuracy"],
        "int8_accuracy": summary["int8_accuracy"],
        "accuracy_drop_points": summary["accuracy_drop_points"],
        "top1_agreement": summary["top1_agreement"],
        "min_cosine": summary["min_cosine"],
        "excluded_layers": summary["excluded_layers"],
        "calibration_samples": result.calibration_samples,
        "calibration_seconds": round(rep.duration_s, 3),
    }
    log_metrics(metrics, figures)
    write_text_atomic(table.path, accuracy_markdown(result))
    rep.reason = result.reason
    rep.summary = {**summary, "reason": result.reason, "seconds": round(rep.duration_s, 3)}
    rep.details = {
        "steps": result.table_rows(),
        "excluded_layers": result.excluded_layers,
        "sensitivity": result.sensitivity,
        "notes": result.notes,
        "timings_s": result.timings_s,
        "files": [QDQ_FILE, RANGES_FILE, TABLE_JSON, TABLE_MD],
    }
    rep.write(report.path)
