"""Ctrl-C and SIGTERM as exceptions, so ``finally`` blocks run; and ending the processes a run started.

Python ends a process on SIGTERM without running ``finally`` blocks or context-manager exits, so a
task stopped that way would leave its Triton server, its temp folders and half-written outputs.
Turned into :class:`Interrupted` (a ``KeyboardInterrupt``), SIGTERM unwinds like Ctrl-C does.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGINT or SIGTERM); raised where it was running."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def signals_raise(
    signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
    *,
    only_default: bool = False,
    on_signal: Callable[[int], object] | None = None,
) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise :class:`Interrupted`; previous handlers come back after.

    Args:
        signums: The signals to turn into :class:`Interrupted`.
        only_default: Leave a signal alone when someone already set its handler.
        on_signal: Called with the signal number before raising, e.g. to stop worker processes
            that a thread the main thread waits for is running.

    Only the main thread can set handlers: elsewhere this does nothing.
    """

    def _raise(signum: int, frame: FrameType | None) -> None:
        if on_signal is not None:
            on_signal(signum)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    for signum in signums:
        if only_default and signal.getsignal(signum) not in (signal.SIG_DFL, signal.default_int_handler):
            continue
        previous[signum] = signal.signal(signum, _raise)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def child_processes(pid: int | None = None) -> list[int]:
    """Every live descendant of ``pid`` (default: this process), read from ``/proc``, parents first."""
    root = os.getpid() if pid is None else pid
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        ppid = _ppid(int(entry.name))
        if ppid is not None:
            parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    frontier = [root]
    while frontier:
        children = parents.get(frontier.pop(0), [])
        found += children
        frontier += children
    return found


def _ppid(pid: int) -> int | None:
    stat = _stat(pid)
    return int(stat[1]) if stat else None


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state, ppid, ...), or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (None when it is gone)."""
    stat = _stat(pid)
    return int(stat[3]) if stat else None


def end_processes(
    pids: Iterable[int], *, grace_s: float = 3.0, terminate: Iterable[int] | None = None
) -> list[int]:
    """SIGTERM the processes, wait up to ``grace_s`` for them all to exit, SIGKILL what is left.

    With ``terminate``, only those get the SIGTERM (they stop the rest themselves). Returns the
    processes that had to be killed.
    """
    targets = [p for p in pids if p != os.getpid()]
    for pid in targets if terminate is None else terminate:
        _send(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_running(p) for p in targets):
        time.sleep(0.05)
    killed = [p for p in targets if is_running(p)]
    for pid in killed:
        _send(pid, signal.SIGKILL)
    return killed


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
