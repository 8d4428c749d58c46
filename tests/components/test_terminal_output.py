"""What ``vxdeploy run --local`` prints when a stage fails, read from a pipe as CI reads it.

Each test runs the real CLI on the digits model with an export tolerance no model meets (the run
fails in its third stage, a few seconds in). Quiet by default: a start and an end line per
stage, the failing stage's message, the last lines of its log and the log's path, in plain text;
``--verbose`` streams every task's output as kfp prints it. The successful run's terminal is
checked in ``test_local_pipeline.py`` on its shared run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMPOSSIBLE_EXPORT = [
    "--set",
    "export.atol=1e-12",
    "--set",
    "export.rtol=1e-12",
    "--set",
    "export.min_cosine=1.0",
]
KFP_LOCAL_WARNINGS = ("have no effect in the current local runner", "non-Python base image")


def _run_cli(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "vxdeploy.pipelines.cli",
        "run",
        "--local",
        "--workdir",
        str(workdir),
        *extra,
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    return done, workdir


def test_a_failing_run_shows_each_stage_the_failure_and_its_log_in_plain_lines(tmp_path: Path) -> None:
    done, workdir = _run_cli(tmp_path, *IMPOSSIBLE_EXPORT)

    terminal = done.stdout
    lines = terminal.splitlines()
    report = json.loads((workdir / "report.json").read_text())
    log = report["failed_log"]
    assert done.returncode == 2, terminal[-3000:]
    assert len(lines) < 60, terminal
    assert [line.split()[0] for line in lines if line.endswith(" started")][:3] == [
        "validate",
        "intake",
        "export",
    ]
    assert any(line.split()[:2] == ["export", "failed"] and "ParityError" in line for line in lines)
    assert "FAILED: stage export failed: ParityError" in terminal
    assert f"last lines of {log}:" in terminal and f"full output and traceback: {log}" in terminal
    assert "executor_input" not in terminal and "Traceback" not in terminal
    assert "\x1b" not in terminal
    assert not [w for w in KFP_LOCAL_WARNINGS if w in terminal]


def test_verbose_streams_every_task_output_but_keeps_the_traceback_in_the_log(tmp_path: Path) -> None:
    done, workdir = _run_cli(tmp_path, "--verbose", *IMPOSSIBLE_EXPORT)

    terminal = done.stdout
    log = Path(json.loads((workdir / "report.json").read_text())["failed_log"])
    assert done.returncode == 2, terminal[-3000:]
    assert "Got executor_input" in terminal and "Executing task" in terminal
    assert "Traceback" not in terminal and "Traceback" in log.read_text()
    assert f"full output and traceback: {log}" in terminal
