"""Run the pipeline on this machine with ``kfp.local`` and write the run's report.

Each task's output (kfp's executor input and logs, the stage's own lines) goes to
``<workdir>/logs/<task>.log``; the terminal gets a line as each stage starts and ends, with the
progress of long work in between (:mod:`vxdeploy.pipelines.terminal`), or, with ``verbose``, every task's
output as it comes (a failing task's traceback still goes to its log only). Ctrl-C or SIGTERM ends
every task and server the run started, writes the report with status ``interrupted`` and leaves no
temp folders. The workdir is made only once the preflight checks passed, and a failed or
interrupted task's partial outputs are removed.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vxdeploy.components.common.config import RunConfig
from vxdeploy.components.common.errors import ConfigError, VxdeployError
from vxdeploy.components.common.interrupts import (
    Interrupted,
    child_processes,
    end_processes,
    session_of,
    signals_raise,
)
from vxdeploy.components.common.progress import PROGRESS_FILE_ENV, progress_file
from vxdeploy.components.common.stage import error_record, write_failure_report
from vxdeploy.components.report.build import stage_headline
from vxdeploy.pipelines.report import (
    STAGE_TASKS,
    build_report,
    find_run_root,
    load_stage_reports,
    write_reports,
)
from vxdeploy.pipelines.terminal import ProgressTail, RunView, kfp_local_warnings_filtered

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130
REPORT_TASK = "write-run-report"  # kfp names the task after vxdeploy.components.report's component
LOG_TAIL_LINES = 12
MESSAGE_LINES = 8  # lines of a failing stage's message shown under its first
# How long tasks get to stop (and stop their servers) after Ctrl-C/SIGTERM before they are killed.
STOP_GRACE_S = 3.5
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_RULE = re.compile(r"^-{20,}\s*$")  # kfp's line after a task's outputs
# The executor's input, which kfp prints as indented JSON first: no help in a failure's tail.
_JSON_LINE = re.compile(r'^\s*("[^"]*"\s*:.*|[\[\]{}(),]+|"[^"]*",?)\s*$')


@dataclass(frozen=True)
class LocalRunResult:
    workdir: Path
    report: dict[str, Any]
    report_json: Path
    report_md: Path

    @property
    def succeeded(self) -> bool:
        return bool(self.report["status"] == "succeeded")

    @property
    def exit_code(self) -> int:
        """0 succeeded, 2 a user error (config, data, model), 130 interrupted, 1 anything else.

        Anything else: a bug or environment failure, or a run its own rules ended (a canary rolled back).
        """
        status = self.report["status"]
        if status == "succeeded":
            return EXIT_OK
        if status == "interrupted":
            return EXIT_INTERRUPTED
        return EXIT_USER if self.report.get("error_kind") == "user" else EXIT_INTERNAL


def default_workdir(base: str | Path = "vxdeploy-runs") -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path(base) / stamp


def check_workdir(workdir: str | Path, flag: str = "--workdir") -> Path:
    """Check that ``workdir`` can be made (or is a folder) without making it.

    Raises:
        ConfigError: it is a file, it lies under a file, or its parent cannot be written.
    """
    path = Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(flag, str(workdir), "is a file, not a folder; give a folder for the run's outputs")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            flag,
            str(workdir),
            f"{str(parent)!r} is a file, so no folder can be made under it; give another path",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            flag, str(workdir), f"{str(parent)!r} is not writable; give a folder you can write to"
        )
    return path


def make_workdir(workdir: str | Path, flag: str = "--workdir") -> Path:
    """Create the workdir (after preflight), turning the OS's refusal into a message."""
    path = check_workdir(workdir, flag).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".vxdeploy-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            flag, str(workdir), f"cannot be written ({exc.strerror or exc}); give a folder you can write to"
        ) from None
    return path


def preflight(config: RunConfig) -> None:
    """Run the validate-first checks in-process before starting any task (fast, clear errors)."""
    from vxdeploy.components.validate.checks import validate_run

    validate_run(config, subject="run config").raise_if_failed()


def _enable_task_output_conditions() -> None:
    """Let kfp.local evaluate ``dsl.If`` conditions on task outputs.

    kfp.local 2.17 resolves a condition's operands only among the enclosing DAG's inputs, so a
    condition on a task output (``intake.outputs["proceed"] == True``) is always false locally,
    while Vertex AI evaluates it correctly. This wraps its resolver to fall back to the task
    outputs it already holds (channel ``pipelinechannel--<task>-<output>``). Local runs only.
    """
    from kfp.local.orchestrator import enhanced_dag_orchestrator as dag

    evaluator = dag.ConditionEvaluator
    if getattr(evaluator, "_vxdeploy_task_outputs", False):
        return
    original = evaluator._resolve_pipeline_channel

    def resolve(channel_ref: str, io_store: Any) -> Any:
        task, _, output = channel_ref.removeprefix("pipelinechannel--").rpartition("-")
        if task:
            try:
                return io_store.get_task_output(task, output)
            except Exception:  # not a task output: let kfp resolve it as an input
                pass
        return original(channel_ref, io_store)

    evaluator._resolve_pipeline_channel = staticmethod(resolve)  # type: ignore[method-assign]
    evaluator._vxdeploy_task_outputs = True  # type: ignore[attr-defined]


class TaskLogs(io.TextIOBase):
    """Stands in for ``sys.stdout`` while kfp.local runs: each task's lines go to its log file.

    kfp prints a task's streamed output and its own ``Executing task 'NAME'`` / ``Task 'NAME'
    finished`` lines to ``sys.stdout``; those lines tell which task the output belongs to (the
    task's outputs, printed after it finished, go to its log too; kfp's lines outside any task go to
    ``pipeline.log``). With ``echo`` every line also goes to ``terminal``, except from a
    ``Traceback`` line to the end of the task: the run ends with the error's message and the log's
    path instead. ``on_start(task)`` and ``on_end(task, kfp_status)`` are called as tasks start and
    finish; a task that fails raises in kfp before any ``finished`` line, so it stays
    :attr:`unfinished`.
    """

    def __init__(
        self,
        terminal: TextIO,
        folder: Path,
        *,
        echo: bool = True,
        on_start: Callable[[str], None] | None = None,
        on_end: Callable[[str, str], None] | None = None,
    ) -> None:
        self.terminal = terminal
        self.folder = folder
        self.echo = echo
        self.on_start = on_start
        self.on_end = on_end
        self.current = ""
        self.unfinished = ""
        self.logs: dict[str, Path] = {}
        self._file: TextIO | None = None
        self._outside: TextIO | None = None
        self._buffer = ""
        self._hiding = False
        self._ended = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._line(line + "\n")
        return len(text)

    def flush(self) -> None:
        for f in (self._file, self._outside):
            if f is not None:
                f.flush()
        self.terminal.flush()

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        start = _TASK_START.search(plain)
        if start:
            self._open(start.group(1))
        self._sink().write(plain)
        if plain.lstrip().startswith("Traceback (most recent call last)"):
            self._hiding = True
        if self.echo and not self._hiding:
            self.terminal.write(line)
        end = _TASK_END.search(plain)
        if end and self._file is not None:
            self._ended, self._hiding, self.unfinished = True, False, ""
            if self.on_end is not None:
                self.on_end(end.group(1), end.group(2))
        elif self._ended and _RULE.match(plain):
            self._close()
        if start and self.on_start is not None:
            self.on_start(start.group(1))

    def _sink(self) -> TextIO:
        if self._file is not None:
            return self._file
        if self._outside is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._outside = open(self.folder / "pipeline.log", "a")  # noqa: SIM115 - closed by close_all
        return self._outside

    def _open(self, task: str) -> None:
        self._close()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{task}.log"
        self.logs[task] = path
        self.current = self.unfinished = task
        self._file = open(path, "a")  # noqa: SIM115 - closed by _close
        self._hiding = self._ended = False

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._hiding = self._ended = False

    def close_all(self) -> None:
        if self._buffer:
            self._line(self._buffer + "\n")
            self._buffer = ""
        self._close()
        if self._outside is not None:
            self._outside.close()
            self._outside = None


@contextmanager
def _capture_task_logs(folder: Path, logs: TaskLogs | None = None) -> Iterator[TaskLogs]:
    logs = logs or TaskLogs(sys.stdout, folder)
    previous = sys.stdout
    sys.stdout = logs
    try:
        yield logs
    finally:
        sys.stdout = previous
        logs.close_all()


@contextmanager
def _progress_channel(path: Path, view: RunView | None) -> Iterator[None]:
    """Tasks report progress to ``path`` (:mod:`vxdeploy.components.common.progress`); ``view`` draws it."""
    if view is None:
        yield
        return
    previous = os.environ.get(PROGRESS_FILE_ENV)
    os.environ[PROGRESS_FILE_ENV] = str(path)
    try:
        with ProgressTail(path, view):
            yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_FILE_ENV, None)
        else:
            os.environ[PROGRESS_FILE_ENV] = previous
        path.unlink(missing_ok=True)


class _StageLines:
    """Turns tasks starting and finishing into the view's start and end lines, from each stage's report."""

    def __init__(self, view: RunView, pipeline_root: Path) -> None:
        self.view = view
        self.pipeline_root = pipeline_root
        self._stages = dict((task, stage) for stage, task in STAGE_TASKS)
        # The pipeline's report task(s): "Run report", and "Run report with rollout" when deploying.
        self._stages.update({REPORT_TASK: "report", f"{REPORT_TASK}-2": "report"})
        self._started: dict[str, float] = {}

    def started(self, task: str) -> None:
        self._started[task] = time.monotonic()
        self.view.stage_started(self._stages.get(task, task))

    def ended(self, task: str, kfp_status: str = "") -> None:
        stage = self._stages.get(task, task)
        run_root = find_run_root(self.pipeline_root)
        report: dict[str, Any] = {}
        path = run_root / task / "report" if run_root else None
        if path is not None and path.is_file():
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                report = {}
        status = str(report.get("status") or ("succeeded" if kfp_status == "SUCCESS" else "failed"))
        seconds = report.get("duration_s")
        if not isinstance(seconds, (int, float)) and task in self._started:
            seconds = time.monotonic() - self._started[task]
        headline = stage_headline({**report, "stage": stage})
        if stage == "report" and not headline:
            headline = (
                "report.json, report.md and report.html rewritten with the rollout"
                if task == f"{REPORT_TASK}-2"
                else "report.json, report.md and report.html written (the console's HTML artifact)"
            )
        self.view.stage_ended(
            stage,
            status,
            float(seconds) if isinstance(seconds, (int, float)) else None,
            headline,
        )


@contextmanager
def _task_temp_folder(folder: Path) -> Iterator[None]:
    """Tasks make their temp folders under ``folder``, removed at the end even if a task was killed."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def stop_started_processes(grace_s: float = STOP_GRACE_S) -> list[int]:
    """End every process this one started (tasks, their servers): SIGTERM, then SIGKILL after ``grace_s``.

    SIGTERM goes to the processes in this session (the task processes kfp started); a server a
    task started in its own session (tritonserver and its stubs) is the task's to stop, after its
    in-flight requests: signalled first, the server would leave those requests hanging. Every
    descendant is listed before signalling (a server stops being one once its task exits), and
    whatever is still running after ``grace_s`` is killed. Returns the processes that were.
    """
    started = child_processes()
    session = os.getsid(0)
    tasks = [pid for pid in started if session_of(pid) == session]
    return end_processes(started, grace_s=grace_s, terminate=tasks)


def run_local(
    config: RunConfig,
    workdir: str | Path,
    *,
    log: Callable[[str], None] = print,
    skip_preflight: bool = False,
    verbose: bool = False,
    terminal: TextIO | None = None,
) -> LocalRunResult:
    """Run the whole pipeline under ``kfp.local`` (SubprocessRunner) with outputs under ``workdir``.

    The returned report carries every stage's status and figures; a failed stage makes the
    status ``failed`` with the error, Ctrl-C or SIGTERM makes it ``interrupted``; either way the
    report is written. ``terminal`` (default ``sys.stdout``) gets a start and an end line per
    stage and the progress of long work; with ``verbose``, every task's output as kfp streams it.

    Raises:
        UserError: the preflight checks failed, or the workdir cannot be made; nothing was written.
    """
    from kfp import local

    from vxdeploy.pipelines.optimize_and_deploy import optimize_and_deploy

    check_workdir(workdir)
    if not skip_preflight:
        preflight(config)
    work = make_workdir(workdir)
    pipeline_root = work / "pipeline_root"
    _enable_task_output_conditions()
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True
    )
    # Components import this package in a subprocess: make sure it resolves to this interpreter.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    start = time.perf_counter()
    status, error, error_kind, error_message = "succeeded", "", "", ""
    running = ""
    out = terminal or sys.stdout
    view = None if verbose else RunView(out)
    lines = _StageLines(view, pipeline_root) if view is not None else None
    logs = TaskLogs(
        out,
        work / "logs",
        echo=verbose,
        on_start=lines.started if lines else None,
        on_end=lines.ended if lines else None,
    )
    try:
        with (
            _task_temp_folder(work / ".tmp"),
            _capture_task_logs(work / "logs", logs),
            _progress_channel(progress_file(work / "logs"), view),
            kfp_local_warnings_filtered(),
        ):
            try:
                # kfp.local waits for its task threads before an exception gets out: end the tasks first.
                with signals_raise(on_signal=lambda signum: stop_started_processes()):
                    optimize_and_deploy(**config.to_pipeline_parameters(build_on_accelerator=False))
            except KeyboardInterrupt as exc:
                running = logs.current
                stop_started_processes()
                signal_name = "SIGINT" if not isinstance(exc, Interrupted) else str(exc).rsplit(" ", 1)[-1]
                status, error, error_kind = "interrupted", f"interrupted by {signal_name}", "interrupted"
            except (RuntimeError, VxdeployError) as exc:
                record = error_record(exc)
                status, error, error_kind = "failed", _first_line(str(exc)), record["kind"]
    except BaseException:
        if view is not None:  # a terminal's progress line must not be left hiding the cursor
            view.close()
        raise
    wall = time.perf_counter() - start
    task_logs = dict(logs.logs)
    run_root = find_run_root(pipeline_root)
    if run_root is not None and status == "interrupted" and running:
        _mark_interrupted(run_root, running)
    if lines is not None and logs.unfinished:  # a task that failed or was interrupted: kfp said nothing
        lines.ended(logs.unfinished)
    if view is not None:
        view.close()
    reports = load_stage_reports(run_root) if run_root else {}
    run_id = run_root.name if run_root else work.name
    failed_stage, failed_log = "", None
    for name, task in STAGE_TASKS:
        rep = reports.get(name, {})
        if rep.get("status") in ("failed", "interrupted") and run_root is not None:
            _discard_partial_outputs(run_root / task)
        if status == "failed" and not failed_stage and rep.get("status") == "failed" and rep.get("reason"):
            failed_stage, failed_log = name, task_logs.get(task)
            record = rep.get("error") or {}
            error = f"stage {name} failed: {rep['reason']}"
            error_kind = str(record.get("kind") or error_kind or "internal")
            error_message = str(record.get("message") or "")
    report = build_report(
        reports,
        run_id=run_id,
        config=config.model_dump(mode="json"),
        run_root=run_root,
        status=status,
        error=error,
        wall_s=wall,
    )
    report["error_kind"] = error_kind
    report["error_message"] = error_message
    report["failed_stage"] = failed_stage
    report["task_logs"] = {task: str(path) for task, path in task_logs.items()}
    if failed_log is not None:
        report["failed_log"] = str(failed_log)
        report["failed_log_tail"] = log_tail(failed_log)
    json_path, md_path = write_reports(report, work)
    return LocalRunResult(work, report, json_path, md_path)


def _mark_interrupted(run_root: Path, task: str) -> None:
    """The task that was running when the run was interrupted: its report says so (if it could not)."""
    path = run_root / task / "report"
    if not path.is_file():
        stage = next((name for name, t in STAGE_TASKS if t == task), task)
        write_failure_report(path, stage, Interrupted(), 0.0)


def _discard_partial_outputs(task_dir: Path) -> None:
    """Remove what a failed or interrupted task left half-made: artifact folders and temp files.

    Its report and the small files written whole (tables, metrics) stay: a failure is an output.
    """
    if not task_dir.is_dir():
        return
    for item in task_dir.iterdir():
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        elif item.name.endswith((".part", ".tmp")) or ".tmp." in item.name:
            item.unlink(missing_ok=True)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The task's last output lines before its traceback (the traceback stays in the log)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    cut = next((i for i, line in enumerate(text) if line.lstrip().startswith("Traceback (most recent")), None)
    kept = [
        line
        for line in text[:cut]
        if line.strip() and not _TASK_START.search(line) and not _JSON_LINE.match(line)
    ]
    return kept[-lines:]


def _first_line(text: str) -> str:
    text = _ANSI.sub("", text)
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def summary_table(report: dict[str, Any]) -> str:
    """The end-of-run table printed to the terminal."""
    rows = [("stage", "status", "seconds", "headline")]
    for s in report["stages"]:
        if s["status"] == "not run" and s["stage"] in ("rollback",):
            continue
        rows.append(
            (
                s["stage"],
                s["status"],
                "" if s["duration_s"] is None else f"{s['duration_s']:.1f}",
                stage_headline(s),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(r[j].ljust(widths[j]) for j in range(3)) + "  " + r[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 8)
    return "\n".join(lines)


def print_result(result: LocalRunResult, out: Any = sys.stdout) -> None:
    print("", file=out)
    print(summary_table(result.report), file=out)
    print("", file=out)
    if result.report.get("selected"):
        print(
            f"selected: {result.report['selected']} ({result.report.get('selection_reason', '')})", file=out
        )
    if result.report["status"] == "interrupted":
        print(
            f"INTERRUPTED: {result.report['error']}; every task and server it started was stopped", file=out
        )
    elif not result.succeeded:
        detail = (result.report.get("error_message") or "").strip().splitlines()[1:MESSAGE_LINES]
        print(f"FAILED: {result.report['error']}", file=out)
        for line in detail:
            print(f"  {line}", file=out)
        if result.report.get("failed_log"):
            tail = result.report.get("failed_log_tail") or []
            if tail:
                print(f"last lines of {result.report['failed_log']}:", file=out)
                for line in tail:
                    print(f"  | {line.strip()}", file=out)
            print(f"full output and traceback: {result.report['failed_log']}", file=out)
    html = (result.report.get("files") or {}).get("html")
    print(f"report: {result.report_json}  {result.report_md}" + (f"  {html}" if html else ""), file=out)
    print(f"wall time: {result.report['wall_s']:.1f} s", file=out)
