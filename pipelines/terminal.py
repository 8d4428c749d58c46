"""What a person running ``vxdeploy run --local`` reads while it runs.

A line as each stage starts and one as it ends (status, seconds, headline), and the progress of
long work in between. On a terminal the progress is one line redrawn in place (``rich``);
anywhere else (CI, a pipe, a file) every line is plain text and the running stage is repeated
after :data:`HEARTBEAT_S`, then each time its running time doubles (30 s, 60 s, 120 s, ...), so
the whole run stays a few dozen lines however slow the machine. The progress comes from
the tasks through :mod:`vxdeploy.components.common.progress`'s side channel, tailed by :class:`ProgressTail`.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from vxdeploy.components.common.progress import ProgressEvent, read_events

# Plain output repeats the running stage (with its progress) after it ran this long, then at twice that, ...
HEARTBEAT_S = 30.0
POLL_S = 0.1
STAGE_WIDTH = 12
_STATUS_STYLES = {"succeeded": "green", "failed": "bold red", "interrupted": "bold red"}

# kfp.local warnings that do not apply to a vxdeploy local run, filtered from the terminal:
# the display names and the accelerator are for Vertex AI (a local run builds on this machine's
# CPU on purpose), and the task images are the ones that hold this very package, which the
# local run uses from its own environment instead.
KFP_LOCAL_WARNINGS = (
    (UserWarning, r"Task '.*': settings \[.*\] have no effect in the current local runner"),
    (RuntimeWarning, r"You may be attemping to run a task that uses custom or non-Python base image"),
)


@contextmanager
def kfp_local_warnings_filtered() -> Iterator[None]:
    """Leave out :data:`KFP_LOCAL_WARNINGS` while the block runs (other warnings still show)."""
    with warnings.catch_warnings():
        for category, message in KFP_LOCAL_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


class RunView:
    """Draws the run: a start line and an end line per stage, and the running stage's progress.

    ``live`` (a terminal): the progress is one transient line redrawn by ``rich``; otherwise every
    line is plain text, and the running stage is repeated after :data:`HEARTBEAT_S`, then each
    time its running time doubles.
    Called from the thread that runs the pipeline and from :class:`ProgressTail`'s thread.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        console: Any = None,
    ) -> None:
        self.out = out
        self.live = _is_terminal(out) if live is None else live
        self.clock = clock
        self._lock = threading.RLock()
        self.running = ""
        self._started_at = 0.0
        self._started_wall = 0.0
        self._next_beat_s = HEARTBEAT_S
        self._last_event: ProgressEvent | None = None
        self._progress: Any = None
        self._bar: Any = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._console = console or Console(file=out, highlight=False, soft_wrap=True)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.fields[stage]}"),
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()

    def _line(self, text: str, style: str = "") -> None:
        if self.live:
            self._console.print(text, style=style or None, markup=False, highlight=False)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def stage_started(self, stage: str) -> None:
        with self._lock:
            self.running = stage
            self._started_at = self.clock()
            self._started_wall = time.time()
            self._next_beat_s = HEARTBEAT_S
            self._last_event = None
            self._line(f"  {stage:<{STAGE_WIDTH}} started")
            if self._progress is not None:
                self._bar = self._progress.add_task("", total=None, stage=f"{stage:<{STAGE_WIDTH}}", count="")

    def stage_ended(self, stage: str, status: str, seconds: float | None, headline: str) -> None:
        with self._lock:
            if self._progress is not None and self._bar is not None:
                self._progress.remove_task(self._bar)
                self._bar = None
            took = "" if seconds is None else f"{seconds:6.1f} s"
            style = _STATUS_STYLES.get(status, "yellow")
            self._line(f"  {stage:<{STAGE_WIDTH}} {status:<10} {took:>8}  {headline}".rstrip(), style)
            self.running = ""

    def progress(self, event: ProgressEvent) -> None:
        with self._lock:
            if not self.running or event.time < self._started_wall:  # none, or the last stage's
                return
            self._last_event = event
            if self._progress is not None and self._bar is not None:
                count = f"{event.describe().removeprefix(event.label).strip()}"
                self._progress.update(
                    self._bar,
                    description=event.label,
                    total=event.total,
                    completed=min(event.done, event.total) if event.total else 0,
                    count=count,
                )

    def tick(self) -> None:
        """Plain output: repeat the running stage and its progress at 30 s, 60 s, 120 s, ... of its run."""
        with self._lock:
            if self.live or not self.running:
                return
            ran = self.clock() - self._started_at
            if ran < self._next_beat_s:
                return
            self._next_beat_s *= 2
            doing = f": {self._last_event.describe()}" if self._last_event else ""
            self._line(f"  {self.running:<{STAGE_WIDTH}} running {ran:.0f} s{doing}")

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


def _is_terminal(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressTail:
    """Reads the tasks' progress side channel at ``path`` on a thread of its own and draws it on ``view``."""

    def __init__(self, path: Path, view: RunView, poll_s: float = POLL_S) -> None:
        self.path = path
        self.view = view
        self.poll_s = poll_s
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vxdeploy-progress", daemon=True)

    def __enter__(self) -> ProgressTail:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._offset = self.path.stat().st_size
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.read()

    def read(self) -> None:
        events, self._offset = read_events(self.path, self._offset)
        for event in events:
            self.view.progress(event)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.read()
            self.view.tick()
