"""A failing stage reports its failure like a success: status, error class, message, field.

The unit tests drive :func:`reports_failure` and the task-log capture directly; the slow test runs
``vxdeploy run --local`` with an export tolerance no model meets, as a user would, and reads what
the terminal, the report and the task's log say.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vxdeploy.components.common.errors import (
    CanaryRolledBackError,
    CloudOperationError,
    ConfigError,
    ParityError,
)
from vxdeploy.components.common.interrupts import Interrupted
from vxdeploy.components.common.stage import StageReport, error_record, reports_failure
from vxdeploy.pipelines.local_run import LocalRunResult, TaskLogs, log_tail

REPO = Path(__file__).resolve().parents[2]


def _artifact(path: Path) -> Any:
    return SimpleNamespace(path=str(path), metadata={})


def _read(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def test_a_config_error_is_written_as_a_failed_report_naming_the_field(tmp_path: Path) -> None:
    @reports_failure("export")
    def run(model: dict[str, Any], report: Any) -> None:
        raise ConfigError("export.opset", 12, "use 17 to 23")

    with pytest.raises(ConfigError):
        run({}, report=_artifact(tmp_path / "report"))

    written = _read(tmp_path / "report")
    assert written["status"] == "failed"
    assert written["error"] == {
        "class": "ConfigError",
        "kind": "user",
        "message": "export.opset=12: use 17 to 23",
        "field": "export.opset",
    }
    assert written["reason"] == "ConfigError: export.opset=12: use 17 to 23"


def test_a_stage_that_wrote_its_own_failed_report_keeps_its_figures(tmp_path: Path) -> None:
    @reports_failure("select")
    def run(report: Any) -> None:
        rep = StageReport("select", status="failed", reason="no candidate within the budget")
        rep.summary = {"candidates_measured": 3}
        rep.write(report.path)
        raise ParityError("no candidate within the budget")

    with pytest.raises(ParityError):
        run(_artifact(tmp_path / "report"))

    written = _read(tmp_path / "report")
    assert written["reason"] == "no candidate within the budget"
    assert written["summary"] == {"candidates_measured": 3}
    assert written["error"]["class"] == "ParityError"


def test_an_unexpected_exception_is_an_internal_error(tmp_path: Path) -> None:
    @reports_failure("compile")
    def run(report: Any) -> None:
        raise KeyError("candidates")

    with pytest.raises(KeyError):
        run(report=_artifact(tmp_path / "report"))

    assert _read(tmp_path / "report")["error"]["kind"] == "internal"


def test_sigterm_unwinds_the_stage_and_reports_it_interrupted(tmp_path: Path) -> None:
    cleaned: list[bool] = []

    @reports_failure("serve_check")
    def run(report: Any) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        finally:
            cleaned.append(True)

    with pytest.raises(Interrupted):
        run(_artifact(tmp_path / "report"))

    assert cleaned == [True]
    assert _read(tmp_path / "report")["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ParityError("off"), "user"),
        (CanaryRolledBackError("rolled back"), "outcome"),
        (CloudOperationError("503"), "internal"),
        (ValueError("bug"), "internal"),
        (Interrupted(), "interrupted"),
    ],
)
def test_the_error_kind_says_who_can_act_on_it(error: BaseException, kind: str) -> None:
    assert error_record(error)["kind"] == kind


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        ("succeeded", "", 0),
        ("failed", "user", 2),
        ("failed", "internal", 1),
        ("interrupted", "interrupted", 130),
    ],
)
def test_exit_status_follows_the_kind_of_error(tmp_path: Path, status: str, kind: str, code: int) -> None:
    result = LocalRunResult(tmp_path, {"status": status, "error_kind": kind}, tmp_path, tmp_path)

    assert result.exit_code == code


def test_task_output_goes_to_its_log_and_its_traceback_only_there(tmp_path: Path) -> None:
    terminal = io.StringIO()
    logs = TaskLogs(terminal, tmp_path)

    logs.write("12:00:00.000 - INFO - Executing task \x1b[96m'export-onnx'\x1b[0m\n")
    logs.write("    exporting\n    Traceback (most recent call last):\n      File x\n")
    logs.write(
        "    ParityError: off\n12:00:01.000 - ERROR - Task 'export-onnx' finished with status FAILURE\n"
    )
    logs.close_all()

    log = (tmp_path / "export-onnx.log").read_text()
    assert "Traceback" in log and "ParityError: off" in log
    assert "exporting" in terminal.getvalue() and "Traceback" not in terminal.getvalue()
    assert log_tail(tmp_path / "export-onnx.log") == ["    exporting"]


@pytest.mark.slow
def test_a_stage_failing_under_kfp_local_exits_2_with_its_message_and_log(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    command = [
        sys.executable,
        "-m",
        "vxdeploy.pipelines.cli",
        "run",
        "--local",
        "--workdir",
        str(workdir),
        "--set",
        "export.atol=1e-12",
        "--set",
        "export.rtol=1e-12",
        "--set",
        "export.min_cosine=1.0",
    ]

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    terminal = done.stdout + done.stderr
    report = _read(workdir / "report.json")
    export = next(s for s in report["stages"] if s["stage"] == "export")
    log = Path(report["failed_log"])
    assert done.returncode == 2, terminal[-3000:]
    assert "Traceback" not in terminal
    assert "FAILED: stage export failed: ParityError" in terminal
    assert f"full output and traceback: {log}" in terminal
    assert export["status"] == "failed" and export["reason"].startswith("ParityError: ")
    assert "Traceback" in log.read_text()
    assert "ParityError" in (workdir / "report.md").read_text()
    export_dir = Path(export["artifacts"])
    assert [p.name for p in export_dir.iterdir() if p.is_dir()] == []  # no half-made ONNX model
    assert not (workdir / ".tmp").exists()
