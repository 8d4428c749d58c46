"""Validate-first stage: the whole run config in, one report out; fails the run before any heavy work."""

from __future__ import annotations

from typing import Any

from components.common.config import SECTIONS, parse_config
from components.common.stage import StageReport, reports_failure, timed
from components.validate.checks import validate_run


@reports_failure("validate")
def run(sections: dict[str, dict[str, Any]], run_id: str, report: Any) -> None:
    """Validate the merged config and the inputs; write the report; raise the problems found.

    The pipeline's tasks on Vertex AI run in the project's images, so those are checked when the
    run's artifacts live in Cloud Storage (a Vertex AI run); a local run pulls no image.
    """
    config = parse_config({name: sections.get(name) or {} for name in SECTIONS})
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
    rep.details = result.to_dict()
    if result.problems:
        rep.status = "failed"
        rep.reason = (
            str(result.problems[0]) if len(result.problems) == 1 else f"{len(result.problems)} problems"
        )
    rep.write(report.path)
    result.raise_if_failed()
