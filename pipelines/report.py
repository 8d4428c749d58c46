"""A local run's reports: its stage reports gathered into ``report.json``, ``report.md`` and ``report.html``.

The report itself is built by :mod:`vxdeploy.components.report` (the pipeline's ``write-run-report`` task
uses the same builder); this module knows where kfp.local leaves a run's stage reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.common.stage import write_json, write_text_atomic
from vxdeploy.components.report import build
from vxdeploy.components.report.build import render_markdown
from vxdeploy.components.report.html import render_html

__all__ = [
    "STAGE_TASKS",
    "build_report",
    "find_run_root",
    "load_stage_reports",
    "rebuild_reports",
    "render_markdown",
    "write_reports",
]

# Pipeline order; the task names kfp gives the components.
STAGE_TASKS: tuple[tuple[str, str], ...] = (
    ("validate", "validate-run-inputs"),
    ("intake", "intake-model"),
    ("export", "export-onnx"),
    ("calibrate", "calibrate-int8"),
    ("compile", "compile-candidates"),
    ("select", "select-candidate"),
    ("package", "package-triton-repository"),
    ("serve_check", "serve-check"),
    ("deploy", "deploy-to-endpoint"),
    ("canary", "run-canary"),
    ("monitoring", "setup-monitoring"),
    ("rollback", "rollback-on-failure"),
)
# What a local run adds to the report beyond the stage reports; kept when the reports are rebuilt.
RUN_KEYS = (
    "status",
    "error",
    "wall_s",
    "config",
    "error_kind",
    "error_message",
    "failed_stage",
    "task_logs",
    "failed_log",
    "failed_log_tail",
)


def find_run_root(pipeline_root: Path) -> Path | None:
    """The newest run directory kfp.local made under ``pipeline_root``."""
    runs = [p for p in pipeline_root.iterdir() if p.is_dir()] if pipeline_root.is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def load_stage_reports(run_root: Path) -> dict[str, dict[str, Any]]:
    """Each stage's JSON report, by stage name, for the stages that wrote one."""
    reports: dict[str, dict[str, Any]] = {}
    for stage, task in STAGE_TASKS:
        path = run_root / task / "report"
        if path.is_file():
            reports[stage] = json.loads(path.read_text())
    return reports


def build_report(
    reports: dict[str, dict[str, Any]],
    *,
    run_id: str,
    config: dict[str, Any],
    run_root: Path | None,
    status: str,
    error: str = "",
    wall_s: float = 0.0,
) -> dict[str, Any]:
    """The machine-readable report of a local run (:func:`vxdeploy.components.report.build.build_report`)."""
    artifacts = {stage: str(run_root / task) for stage, task in STAGE_TASKS} if run_root else {}
    return build.build_report(
        reports,
        run_id=run_id,
        config=config,
        status=status,
        error=error,
        wall_s=wall_s,
        stage_artifacts={stage: path for stage, path in artifacts.items() if stage in reports},
    )


def write_reports(report: dict[str, Any], workdir: Path) -> tuple[Path, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``workdir``; the first two's paths.

    The three paths are also in ``report["files"]``.
    """
    paths = {name: workdir / f"report.{name}" for name in ("json", "md", "html")}
    report["files"] = {name: str(path) for name, path in paths.items()}
    write_json(paths["json"], report)
    write_text_atomic(paths["md"], render_markdown(report))
    write_text_atomic(paths["html"], render_html(report))
    return paths["json"], paths["md"]


def _run_root_of(run_dir: Path) -> Path | None:
    """The kfp.local run folder of a workdir (``pipeline_root/<run>``), or ``run_dir`` itself if it is one."""
    if any((run_dir / task / "report").is_file() for _, task in STAGE_TASKS):
        return run_dir
    return find_run_root(run_dir / "pipeline_root")


def rebuild_reports(run_dir: str | Path) -> dict[str, Path]:
    """Rebuild a local run's three reports from its stage reports, keeping what the run itself recorded.

    Args:
        run_dir: The run's ``--workdir`` (or its ``pipeline_root/<run>`` folder).

    Returns:
        The paths written, by kind (``json``, ``md``, ``html``).

    Raises:
        ConfigError: ``run_dir`` holds no stage reports of a run.
    """
    folder = Path(run_dir).expanduser().absolute()
    run_root = _run_root_of(folder) if folder.is_dir() else None
    reports = load_stage_reports(run_root) if run_root is not None else {}
    if run_root is None or not reports:
        raise ConfigError(
            "RUN_DIR",
            str(run_dir),
            "holds no stage reports; give the --workdir of a `vxdeploy run --local` (it has pipeline_root/)",
        )
    # Given the run folder itself, the reports go to its workdir (two up from pipeline_root/<run>).
    in_workdir = run_root == folder and folder.parent.name == "pipeline_root"
    workdir = folder.parent.parent if in_workdir else folder
    previous: dict[str, Any] = {}
    if (workdir / "report.json").is_file():
        previous = json.loads((workdir / "report.json").read_text())
    report = build_report(
        reports,
        run_id=str(previous.get("run_id") or run_root.name),
        config=dict(previous.get("config") or {}),
        run_root=run_root,
        status=str(previous.get("status") or build.run_status(reports)),
        error=str(previous.get("error") or ""),
        wall_s=float(previous.get("wall_s") or 0.0),
    )
    report.update({key: previous[key] for key in RUN_KEYS if key in previous and key not in report})
    write_reports(report, workdir)
    return {name: Path(path) for name, path in report["files"].items()}
