"""`vxdeploy report RUN_DIR` rebuilds a run's reports; the pipeline's report task writes the same page."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.rollout import StandInArtifact
from tests.unit.report_support import stage_reports
from vxdeploy.components.common.stage import write_json
from vxdeploy.components.report import stage
from vxdeploy.components.report.build import report_sections
from vxdeploy.pipelines.cli import main
from vxdeploy.pipelines.report import STAGE_TASKS, build_report, write_reports

RUN = "vxdeploy-optimize-and-deploy-2026-12-01-12-00-00"


def _local_run(workdir: Path, reports: dict[str, dict[str, Any]]) -> Path:
    """A workdir as `vxdeploy run --local` leaves it: the stage reports under pipeline_root/<run>/<task>/."""
    run_root = workdir / "pipeline_root" / RUN
    for name, task in STAGE_TASKS:
        if name in reports:
            write_json(run_root / task / "report", reports[name])
    return run_root


@pytest.fixture()
def no_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A BROWSER that leaves a mark if anything tries to open a page."""
    mark = tmp_path / "opened"
    opener = tmp_path / "open-browser"
    opener.write_text(f'#!/bin/sh\necho "$@" >> {mark}\n')
    opener.chmod(opener.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("BROWSER", str(opener))
    return mark


def test_report_command_rebuilds_the_three_reports_and_keeps_the_run_facts(
    tmp_path: Path, no_browser: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a finished run whose report.json recorded its status and wall time, and whose pages are gone
    workdir = tmp_path / "run"
    _local_run(workdir, stage_reports())
    write_json(
        workdir / "report.json",
        {"run_id": RUN, "status": "succeeded", "wall_s": 351.9, "task_logs": {"a": "b"}},
    )

    # When the reports are rebuilt
    code = main(["report", str(workdir)])

    # Then all three are written from the stage reports, the run's own facts kept, and nothing opened
    report = json.loads((workdir / "report.json").read_text())
    assert code == 0
    assert (report["status"], report["wall_s"], report["task_logs"]) == ("succeeded", 351.9, {"a": "b"})
    assert len(report["candidates"]) == 4
    assert "## Candidates" in (workdir / "report.md").read_text()
    assert (workdir / "report.html").read_text().count("data:image/png;base64,") == 4
    assert f"wrote html: {workdir / 'report.html'}" in capsys.readouterr().out
    assert not no_browser.exists()


def test_report_command_on_a_folder_without_a_run_names_the_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", str(tmp_path)])

    assert code == 2
    assert "RUN_DIR=" in capsys.readouterr().err


def test_the_pipeline_report_task_writes_the_same_page_as_the_local_run(tmp_path: Path) -> None:
    # Given one run's stage reports, as the local runner reads them and as the task receives them
    reports = stage_reports()
    run_root = _local_run(tmp_path / "local", reports)
    artifacts = {}
    for name in reports:
        path = tmp_path / "artifacts" / name
        write_json(path, reports[name])
        artifacts[name] = StandInArtifact(str(path))
    html, markdown, report = (StandInArtifact(str(tmp_path / "out" / n)) for n in ("html", "md", "json"))

    # When both write their report
    local = build_report(
        reports,
        run_id=RUN,
        config={"selection": {"accuracy_budget": 0.5}},
        run_root=run_root,
        status="succeeded",
    )
    write_reports(local, tmp_path / "local")
    task = stage.write_run_report(
        artifacts,
        run_id=RUN,
        selection={"accuracy_budget": 0.5},
        html=html,
        markdown=markdown,
        run_report=report,
    )

    # Then the pages are the same page, and the task's JSON keeps the same figures
    assert Path(html.path).read_text() == (tmp_path / "local" / "report.html").read_text()
    assert Path(markdown.path).read_text() == (tmp_path / "local" / "report.md").read_text()
    assert task["candidates"] == local["candidates"]
    assert [s.title for s in report_sections(task)][-1] == "Caveats"
