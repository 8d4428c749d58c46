"""Progress from inside a task reaches the terminal of ``vxdeploy run --local``, and only there.

:mod:`vxdeploy.components.common.progress` writes steps to the side channel the local runner names (from
another process, as kfp.local's task subprocesses do) and logs each quarter everywhere;
:mod:`vxdeploy.pipelines.terminal` draws stages and progress as plain lines off a terminal and as a
redrawn line on one; :class:`vxdeploy.pipelines.local_run.TaskLogs` keeps kfp's output in the task logs.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vxdeploy.components.common import progress
from vxdeploy.components.common.progress import PROGRESS_FILE_ENV, ProgressEvent, read_events
from vxdeploy.pipelines.local_run import TaskLogs
from vxdeploy.pipelines.terminal import HEARTBEAT_S, RunView, kfp_local_warnings_filtered

REPO = Path(__file__).resolve().parents[2]
CONTROL = "\x1b"


@pytest.fixture(autouse=True)
def _fresh_progress_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROGRESS_FILE_ENV, raising=False)
    monkeypatch.setattr(progress, "_last_sent", {})
    monkeypatch.setattr(progress, "_last_logged", {})


def test_steps_from_a_task_subprocess_reach_the_side_channel(tmp_path: Path) -> None:
    channel = tmp_path / "progress.jsonl"
    code = (
        "from vxdeploy.components.common import progress\n"
        "for i in range(1, 41):\n"
        "    progress.step('calibration batches', i, 40)\n"
    )

    subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, **{PROGRESS_FILE_ENV: str(channel)}),
        check=True,
        timeout=120,
    )

    events, offset = read_events(channel)
    assert events[0].describe() == "calibration batches 1/40"
    assert events[-1].describe() == "calibration batches 40/40"  # the last step always gets through
    assert len(events) < 40  # steps closer than MIN_INTERVAL_S apart are thinned
    assert offset == channel.stat().st_size


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    channel = tmp_path / "progress.jsonl"
    channel.write_text(
        '{"label":"a","done":1,"total":2,"unit":"","time":1.0,"pid":1}\nnot json\n{"label":"a","do'
    )

    events, offset = read_events(channel)

    assert [e.describe() for e in events] == ["a 1/2"]
    assert offset == len(channel.read_text()) - len('{"label":"a","do')


def test_outside_the_local_runner_a_step_is_logged_at_each_quarter(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=progress.__name__)

    for i in range(1, 9):
        progress.step("benchmark batch 8", i, 8, unit="rounds")

    assert [r.getMessage() for r in caplog.records] == [
        "progress: benchmark batch 8 1/8 rounds",
        "progress: benchmark batch 8 2/8 rounds",
        "progress: benchmark batch 8 4/8 rounds",
        "progress: benchmark batch 8 6/8 rounds",
        "progress: benchmark batch 8 8/8 rounds",
    ]


def test_a_side_channel_that_cannot_be_written_does_not_fail_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(tmp_path / "missing" / "folder" / "progress.jsonl"))

    progress.step("serve sweep", 1, 4)  # raises nothing

    assert not (tmp_path / "missing").exists()


def _event(label: str, done: float, total: float | None, at: float = 1e12) -> ProgressEvent:
    return ProgressEvent(label, done, total, "", at, 1)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_each_stage_is_a_start_and_an_end_line_in_plain_text() -> None:
    out, clock = io.StringIO(), _Clock()
    view = RunView(out, clock=clock)

    view.stage_started("calibrate")
    view.progress(_event("calibration batches", 3, 16))
    for second in range(1, 200):  # repeated at 30 s, 60 s, 120 s: a slow machine adds few lines
        clock.now = second
        view.tick()
        if second == 100:
            view.progress(_event("calibration batches", 18, 16))
    view.stage_ended("calibrate", "succeeded", 12.5, "entropy: accuracy 98.2 -> 98")
    view.close()

    assert out.getvalue().splitlines() == [
        "  calibrate    started",
        "  calibrate    running 30 s: calibration batches 3/16",
        "  calibrate    running 60 s: calibration batches 3/16",
        "  calibrate    running 120 s: calibration batches 18",
        "  calibrate    succeeded    12.5 s  entropy: accuracy 98.2 -> 98",
    ]
    assert CONTROL not in out.getvalue()


def test_progress_of_the_stage_before_is_not_shown_for_the_next() -> None:
    out, clock = io.StringIO(), _Clock()
    view = RunView(out, clock=clock)
    view.stage_started("select")

    view.progress(_event("calibration batches", 16, 16, at=0.0))  # written before select started
    clock.now = HEARTBEAT_S + 1
    view.tick()

    assert out.getvalue().splitlines()[-1] == "  select       running 31 s"  # and nothing of calibration


def test_on_a_terminal_the_progress_is_drawn_and_the_stage_lines_stay() -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, highlight=False)
    view = RunView(out, live=True, console=console)

    view.stage_started("select")
    view.progress(_event("benchmark batch 8", 2, 5))
    view._progress.refresh()
    view.stage_ended("select", "succeeded", 40.0, "selected onnxruntime_int8 (max_throughput)")
    view.close()

    text = out.getvalue()
    assert "benchmark batch 8" in text and "2/5" in text
    assert "select       started" in text
    assert "select       succeeded    40.0 s  selected onnxruntime_int8" in text


def test_quiet_task_logs_keep_kfp_output_off_the_terminal(tmp_path: Path) -> None:
    terminal = io.StringIO()
    seen: list[tuple[str, ...]] = []
    logs = TaskLogs(
        terminal,
        tmp_path,
        echo=False,
        on_start=lambda task: seen.append(("start", task)),
        on_end=lambda task, status: seen.append(("end", task, status)),
    )

    logs.write("12:00:00.000 - INFO - Running pipeline: 'p'\n")
    logs.write("12:00:00.001 - INFO - Executing task \x1b[96m'export-onnx'\x1b[0m\n")
    logs.write('    [KFP Executor]: Got executor_input:\n    {\n        "inputs": {}\n    }\n')
    logs.write("12:00:01.000 - INFO - Task \x1b[96m'export-onnx'\x1b[0m finished with status SUCCESS\n")
    logs.write(
        "12:00:01.000 - INFO - Task 'export-onnx' outputs:\n    onnx_model: Model( name='onnx_model',\n"
    )
    logs.write("-" * 80 + "\n12:00:01.000 - INFO - Pipeline 'p' finished with status SUCCESS\n")
    logs.close_all()

    task_log = (tmp_path / "export-onnx.log").read_text()
    assert terminal.getvalue() == ""
    assert seen == [("start", "export-onnx"), ("end", "export-onnx", "SUCCESS")]
    assert '"inputs": {}' in task_log and "onnx_model: Model(" in task_log
    assert "Pipeline 'p' finished" in (tmp_path / "pipeline.log").read_text()
    assert logs.unfinished == ""


def test_a_task_that_fails_stays_unfinished_for_the_runner_to_close(tmp_path: Path) -> None:
    logs = TaskLogs(io.StringIO(), tmp_path, echo=False)

    logs.write("12:00:00.001 - INFO - Executing task 'export-onnx'\n    Traceback (most recent call last):\n")
    logs.close_all()

    assert logs.unfinished == "export-onnx"


def test_the_two_kfp_local_warnings_that_do_not_apply_are_left_out() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with kfp_local_warnings_filtered():
            warnings.warn(
                "Task 'export-onnx': settings ['display_name'] have no effect in the current local "
                "runner and will be ignored.",
                UserWarning,
                stacklevel=1,
            )
            warnings.warn(
                'You may be attemping to run a task that uses custom or non-Python base image "x" '
                "in a Python environment.",
                RuntimeWarning,
                stacklevel=1,
            )
            warnings.warn("a warning that does apply", UserWarning, stacklevel=1)

    assert [str(w.message) for w in caught] == ["a warning that does apply"]
