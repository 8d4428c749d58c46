"""Progress of long work inside a stage: calibration batches, benchmark rounds, canary steps.

Stage code calls :func:`step` as the work advances. Under ``vxdeploy run --local`` each task runs
in a subprocess whose output goes to its log file, so the runner names a side channel in
``VXDEPLOY_PROGRESS_FILE``: each step is appended there as one JSON line, which the runner tails
(:func:`read_events`) to draw the progress in the terminal. Everywhere (Vertex AI, a test, the
local run's task log) the step is also logged each time the work passes another quarter, so a
task's log shows how far it got. Reporting progress never fails the work it reports on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROGRESS_FILE_ENV = "VXDEPLOY_PROGRESS_FILE"
# At most this many events a second per label reach the side channel (the last one always does).
MIN_INTERVAL_S = 0.2
# Open-ended work (no total) is logged again after this long.
LOG_EVERY_S = 60.0

log = logging.getLogger(__name__)
_lock = threading.Lock()
_last_sent: dict[str, float] = {}
_last_logged: dict[str, tuple[int, float]] = {}


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one piece of work: ``done`` of ``total`` (None: open-ended) ``unit`` of ``label``."""

    label: str
    done: float
    total: float | None
    unit: str
    time: float
    pid: int

    def describe(self) -> str:
        """The step in words, e.g. ``calibration batches 8/16`` (past its total: ``... 18``)."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total and self.done <= self.total:
            return f"{self.label} {_number(self.done)}/{_number(self.total)}{unit}"
        return f"{self.label} {_number(self.done)}{unit}" if self.done else self.label

    @property
    def fraction(self) -> float | None:
        return min(1.0, max(0.0, self.done / self.total)) if self.total else None


def step(label: str, done: float, total: float | None = None, *, unit: str = "") -> None:
    """Report that ``done`` of ``total`` units of ``label`` are done (``total`` None: not known).

    Args:
        label: What the work is, the same string for each step of it ("calibration batches").
        done: How much is done so far.
        total: How much there is in all; None when that is not known.
        unit: What ``done`` counts, shown after the figures ("rounds", "s"); empty for plain items.
    """
    try:
        now = time.time()
        finished = total is not None and done >= total
        event = ProgressEvent(
            label, float(done), None if total is None else float(total), unit, now, os.getpid()
        )
        with _lock:
            send = finished or now - _last_sent.get(label, 0.0) >= MIN_INTERVAL_S
            if send:
                _last_sent[label] = now
            say = _passed_a_mark(label, event)
        if send:
            _send(event)
        if say:
            log.info("progress: %s", event.describe())
    except Exception:  # noqa: BLE001 - progress is a courtesy: never the reason work fails
        log.debug("progress step not reported", exc_info=True)


def _passed_a_mark(label: str, event: ProgressEvent) -> bool:
    """True on the first step of ``label``, on passing each quarter, and (open-ended) each minute."""
    quarter = int(4 * event.fraction) if event.fraction is not None else -1
    previous = _last_logged.get(label)
    if previous is None or quarter > previous[0] or (quarter < 0 and event.time - previous[1] >= LOG_EVERY_S):
        _last_logged[label] = (quarter, event.time)
        return True
    if event.fraction is not None and quarter < previous[0]:  # the same label started over
        _last_logged[label] = (quarter, event.time)
    return False


def _send(event: ProgressEvent) -> None:
    path = os.environ.get(PROGRESS_FILE_ENV)
    if not path:
        return
    line = json.dumps(asdict(event), separators=(",", ":")) + "\n"
    # One write of one short line in append mode: lines from several processes do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[ProgressEvent], int]:
    """The whole lines appended to the side channel at ``path`` since ``offset``, and the new offset.

    A line still being written (no newline yet) is left for the next read; a line that is not an
    event is skipped.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for raw in data[:end].splitlines():
        try:
            fields = json.loads(raw)
            events.append(
                ProgressEvent(
                    label=str(fields["label"]),
                    done=float(fields["done"]),
                    total=None if fields.get("total") is None else float(fields["total"]),
                    unit=str(fields.get("unit") or ""),
                    time=float(fields["time"]),
                    pid=int(fields.get("pid") or 0),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return events, offset + end


def progress_file(folder: str | os.PathLike[str]) -> Path:
    """Where the local runner's side channel lives under a run's ``folder``."""
    return Path(folder) / "progress.jsonl"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
