"""Validate-first stage: the run's parameters in, one merged config and one report out; fails early."""

from __future__ import annotations

from typing import Any, NamedTuple

from vxdeploy.components.common.config import SECTIONS
from vxdeploy.components.common.run_parameters import (
    BUILD_ON_ACCELERATOR,
    build_accelerator,
    config_from_parameters,
)
from vxdeploy.components.common.stage import StageReport, reports_failure, timed
from vxdeploy.components.validate.checks import validate_run


class ValidatedSections(NamedTuple):
    """What later tasks receive: each merged section as a JSON object, and the build accelerator."""

    model: dict[str, Any]
    data: dict[str, Any]
    export: dict[str, Any]
    quantization: dict[str, Any]
    compilation: dict[str, Any]
    selection: dict[str, Any]
    triton: dict[str, Any]
    deployment: dict[str, Any]
    canary: dict[str, Any]
    monitoring: dict[str, Any]
    service_levels: dict[str, Any]
    build_accelerator_type: str
    build_accelerator_count: int


@reports_failure("validate")
def run(parameters: dict[str, Any], run_id: str, report: Any) -> ValidatedSections:
    """Merge the root parameters into the run config, validate it and the inputs, write the report.

    The pipeline's tasks on Vertex AI run in the project's images, so those are checked when the
    run's artifacts live in Cloud Storage (a Vertex AI run); a local run pulls no image.

    Raises:
        ConfigError: a parameter or an override field is invalid (named with its fix).
        UserError: the model, the data, the lease or an image is not fit for the run.
    """
    config = config_from_parameters(parameters)
    on_vertex = str(getattr(report, "uri", "")).startswith("gs://")
    rep = StageReport("validate")
    with timed(rep):
        result = validate_run(
            config, subject="pipeline parameters", run_id=run_id, check_task_images=on_vertex
        )
    rep.summary = {
        "checks": len(result.checks),
        "passed": sum(c.status == "passed" for c in result.checks),
        "problems": len(result.problems),
    }
    rep.details = {**result.to_dict(), "config": config.model_dump(mode="json")}
    if result.problems:
        rep.status = "failed"
        rep.reason = (
            str(result.problems[0]) if len(result.problems) == 1 else f"{len(result.problems)} problems"
        )
    rep.write(report.path)
    result.raise_if_failed()
    gpu, count = build_accelerator(config, bool(parameters.get(BUILD_ON_ACCELERATOR, True)))
    # The fields the run chose (its overrides and flat parameters); each task fills in the defaults
    # when it re-validates its section, exactly as the merge did.
    chosen = config.model_dump(mode="json", exclude_unset=True)
    sections = {name: chosen.get(name, {}) for name in SECTIONS}
    return ValidatedSections(**sections, build_accelerator_type=gpu, build_accelerator_count=count)
