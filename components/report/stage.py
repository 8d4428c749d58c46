"""The ``write_run_report`` component's body: stage report artifacts in, the run's report out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vxdeploy.components.common.stage import write_json, write_text_atomic
from vxdeploy.components.report.build import STAGES, build_report, render_markdown
from vxdeploy.components.report.html import render_html


def read_stage_reports(artifacts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stage's JSON report from its artifact (``path``), by stage name; absent ones left out."""
    reports: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        artifact = artifacts.get(stage)
        path = Path(artifact.path) if artifact is not None and getattr(artifact, "path", None) else None
        if path is not None and path.is_file():
            reports[stage] = json.loads(path.read_text())
    return reports


def write_run_report(
    artifacts: Mapping[str, Any],
    *,
    run_id: str,
    selection: Mapping[str, Any],
    html: Any,
    markdown: Any,
    run_report: Any,
) -> dict[str, Any]:
    """Build the run's report from the stage reports and write it as HTML, Markdown and JSON.

    Args:
        artifacts: Each stage's report artifact, by stage name (absent stages did not run).
        run_id: The pipeline run's name.
        selection: The selection section (its accuracy budget is drawn in a picture).
        html: The page with the pictures (KFP ``HTML``: the Vertex AI console renders it).
        markdown: The same report as Markdown.
        run_report: Every figure, as ``report.json``.

    Returns:
        The report.
    """
    reports = read_stage_reports(artifacts)
    built = build_report(reports, run_id=run_id, config={"selection": dict(selection)})
    write_json(run_report.path, built)
    write_text_atomic(markdown.path, render_markdown(built))
    write_text_atomic(html.path, render_html(built))
    return built
