"""Intake stage: artifacts in and out around :func:`vxdeploy.components.intake.intake.intake`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from vxdeploy.components.common import registry
from vxdeploy.components.common.artifacts import DatasetSamples, SourceModel
from vxdeploy.components.common.config import DataConfig, DeploymentConfig, ModelConfig, parse_section
from vxdeploy.components.common.stage import StageReport, reports_failure, timed
from vxdeploy.components.generation import intake as generation_intake
from vxdeploy.components.generation.spec import is_generation
from vxdeploy.components.intake.intake import intake, store_model


class IntakeOutputs(NamedTuple):
    proceed: bool
    deploy: bool


@reports_failure("intake")
def run(
    model: dict[str, Any],
    data: dict[str, Any],
    deployment: dict[str, Any],
    source_model: Any,
    calibration_data: Any,
    eval_data: Any,
    report: Any,
) -> IntakeOutputs:
    model_cfg = parse_section(ModelConfig, model, "model")
    data_cfg = parse_section(DataConfig, data, "data")
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    rep = StageReport("intake")
    api_endpoint = deploy_cfg.api_endpoint or None
    noop_reason = registry.already_deployed_reason(model_cfg, deploy_cfg)
    if noop_reason:
        # A scheduled run whose model version already serves: end early, say why.
        rep.status, rep.reason = "skipped", noop_reason
        rep.summary = {"model_uri": model_cfg.uri, "deploy": False, "proceed": False}
        rep.write(report.path)
        return IntakeOutputs(proceed=False, deploy=False)
    if is_generation(model_cfg):  # a multi-part generation model: components/generation/intake.py
        with tempfile.TemporaryDirectory() as tmp:
            proceed, deploy = generation_intake.run(
                model_cfg, data_cfg, deploy_cfg, source_model, calibration_data, eval_data, report, rep, tmp
            )
        return IntakeOutputs(proceed=proceed, deploy=deploy)
    with timed(rep), tempfile.TemporaryDirectory() as tmp:
        result = intake(model_cfg, data_cfg, tmp, api_endpoint=api_endpoint)
        Path(source_model.path).mkdir(parents=True, exist_ok=True)
        stored = store_model(result, source_model.path)
        result.calibration.save(calibration_data.path)
        result.evaluation.save(eval_data.path)
    source_labels: dict[str, str] = {}
    if registry.is_registry_uri(model_cfg.uri):
        version = registry.get_registry_model_version(model_cfg.uri, api_endpoint=api_endpoint)
        source_labels = registry.source_model_labels(version)
    SourceModel(
        format=result.model_format,  # type: ignore[arg-type]  # detect_format returns one of them
        file=stored.name,
        signature=result.signature.to_dict(),
        sha256=result.sha256,
        uri=model_cfg.uri,
        name=model_cfg.name,
        source_labels=source_labels,
    ).write(source_model)
    DatasetSamples(samples=len(result.calibration)).write(calibration_data)
    DatasetSamples(samples=len(result.evaluation), labelled=result.evaluation.labels is not None).write(
        eval_data
    )
    rep.summary = {
        "model_uri": model_cfg.uri,
        "format": result.model_format,
        "sha256": result.sha256,
        "calibration_samples": len(result.calibration),
        "eval_samples": len(result.evaluation),
        "deploy": deploy_cfg.enabled,
    }
    rep.details = {"signature": result.signature.to_dict()}
    if registry.is_registry_uri(model_cfg.uri):
        rep.summary["registry_version"] = version.versioned_name
    rep.write(report.path)
    return IntakeOutputs(proceed=True, deploy=deploy_cfg.enabled)
