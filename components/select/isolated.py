"""Runners timed each in a worker process of its own, so that runtimes never share a process.

Timed in one process, runtimes disturb each other: ONNX Runtime's intra-op pool (one per
session) and PyTorch's OpenMP pool both spin-wait before they park, allocator and thread-pool
state carry over from one runner to the next, and on a loaded 2-core machine a pool that is
still spinning starves the next runner's synchronisation points. Measured here (2026-12-01,
``benchmarks/isolation.py``): PyTorch eager at batch 1 ran 3-10x slower interleaved in one
process with the ONNX Runtime sessions than alone, which inflated every b1 speed-up by as
much. A :class:`ProcessTimer` opens its runner in a fresh worker process and times calls
there; the measuring process only says which runner runs when, so interleaved rounds keep
sharing the machine's load while each runner runs as it would alone.

Workers run with :data:`MEASUREMENT_ENV`: OpenMP threads (PyTorch eager and AOT Inductor) wait
passively at barriers. With libgomp's default active wait, on this shared 2-core machine, eager
latency was bimodal by two orders of magnitude from one second to the next (digits CNN at batch
32: 2-22 ms or 136-208 ms; with ``OMP_WAIT_POLICY=PASSIVE`` 3.0-3.3 ms in every run): a thread
spinning at a barrier holds a core while its partner waits to be scheduled. Every "x eager"
figure then measured the neighbours' load, not the runtimes. ONNX Runtime's own pool spins
too (``session.intra_op.allow_spinning``): MiniLM FP32 at batch 1, load 9, 260-272 ms spinning,
116-155 ms not; sessions opened by :func:`vxdeploy.components.compile.ort.make_session` in a worker do
not spin (``VXDEPLOY_ORT_ALLOW_SPINNING=0``), so both runtimes wait the same way.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from vxdeploy.components.verify.runners import Runner

log = logging.getLogger(__name__)

RunnerOpener = Callable[[], "Runner"]
"""A picklable recipe that opens a runner (e.g. ``functools.partial(load_candidate_runner, ...)``)."""

MEASUREMENT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "VXDEPLOY_ORT_ALLOW_SPINNING": "0"}
"""Environment of every process that times a runner (the workers here, ``benchmarks/isolation.py``'s
children). It must be in place before libgomp loads, that is before ``import torch``."""

_START_TIMEOUT_S = 600.0
_WORKER_MODULE = __name__
"""This module's import name: a worker runs it with ``python -m`` (``__main__`` there, never here)."""


class CallTimer(Protocol):
    """Times calls of one runner on the feeds it was last given."""

    name: str
    where: str
    """``own process`` or ``shared process``."""

    def set_feeds(self, feeds: Mapping[str, np.ndarray]) -> None: ...

    def time_calls(self, n: int) -> list[float]: ...

    def close(self) -> None: ...


class InProcessTimer:
    """Times a runner in this process (fakes in tests; runners that have no recipe to reopen)."""

    where = "shared process"

    def __init__(self, runner: Runner, clock: Callable[[], float] = time.perf_counter):
        self.name = runner.name
        self._runner = runner
        self._clock = clock
        self._feeds: Mapping[str, np.ndarray] = {}

    def set_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._feeds = feeds

    def time_calls(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = self._clock()
            self._runner.run(self._feeds)
            times.append(self._clock() - start)
        return times

    def close(self) -> None:
        """The runner belongs to the caller, who closes it."""


class WorkerError(RuntimeError):
    """The worker process could not open or run its runner (the worker's traceback is the message)."""


class _Channel:
    """Both ends one process holds: it reads one pipe and writes the other."""

    def __init__(self, read_fd: int, write_fd: int):
        self.incoming = Connection(read_fd, writable=False)
        self.outgoing = Connection(write_fd, readable=False)

    def close(self) -> None:
        self.incoming.close()
        self.outgoing.close()


def _serve(channel: _Channel) -> None:
    """A worker's loop: open the runner from its recipe, then answer ``feeds`` / ``time`` / ``close``."""
    try:
        opener: RunnerOpener = pickle.loads(channel.incoming.recv_bytes())
        runner = opener()
    except BaseException:
        channel.outgoing.send(("error", traceback.format_exc()))
        return
    channel.outgoing.send(("ok", None))
    feeds: Mapping[str, np.ndarray] = {}
    clock = time.perf_counter
    try:
        while True:
            op, arg = channel.incoming.recv()
            if op == "close":
                channel.outgoing.send(("ok", None))
                return
            try:
                result: Any = None
                if op == "feeds":
                    feeds = arg
                else:  # "time"
                    result = []
                    for _ in range(int(arg)):
                        start = clock()
                        runner.run(feeds)
                        result.append(clock() - start)
            except Exception:
                channel.outgoing.send(("error", traceback.format_exc()))
                continue
            channel.outgoing.send(("ok", result))
    except EOFError:  # the measuring process went away
        return
    finally:
        runner.close()


class ProcessTimer:
    """A runner opened and timed in a worker process of its own.

    The worker is a fresh ``python -m vxdeploy.components.select.isolated`` with :data:`MEASUREMENT_ENV`
    and this process's import path. (Not a ``multiprocessing`` child: spawn and forkserver
    children re-import the parent's main module, and torch with it, before a worker could set
    its environment.) Start several with :func:`start_process_timers`: they open their runners
    concurrently. Call wall times are taken inside the worker around ``runner.run`` alone, so
    the pipes are not timed.
    """

    where = "own process"

    def __init__(self, name: str, opener: RunnerOpener):
        self.name = name
        recipe = pickle.dumps(opener)
        child_read, parent_write = os.pipe()
        parent_read, child_write = os.pipe()
        env = {**os.environ, **MEASUREMENT_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", _WORKER_MODULE, str(child_read), str(child_write)],
                pass_fds=(child_read, child_write),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            for fd in (parent_read, parent_write):
                os.close(fd)
            raise
        finally:
            os.close(child_read)
            os.close(child_write)
        self._channel = _Channel(parent_read, parent_write)
        self._channel.outgoing.send_bytes(recipe)
        self._ready = False

    def wait_ready(self) -> None:
        """Block until the worker has opened its runner (raises :class:`WorkerError` if it could not)."""
        if not self._ready:
            self._answer(_START_TIMEOUT_S)
            self._ready = True

    def _answer(self, timeout_s: float | None = None) -> Any:
        if timeout_s is not None and not self._channel.incoming.poll(timeout_s):
            raise WorkerError(f"the worker timing {self.name} did not answer within {timeout_s:.0f} s")
        try:
            status, value = self._channel.incoming.recv()
        except EOFError as exc:
            code = self._proc.poll()
            raise WorkerError(f"the worker timing {self.name} exited (exit code {code})") from exc
        if status == "error":
            raise WorkerError(f"the worker timing {self.name} failed:\n{value}")
        return value

    def _ask(self, op: str, arg: Any = None) -> Any:
        self.wait_ready()
        self._channel.outgoing.send((op, arg))
        return self._answer()

    def set_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._ask("feeds", {k: np.ascontiguousarray(v) for k, v in feeds.items()})

    def time_calls(self, n: int) -> list[float]:
        return [float(t) for t in self._ask("time", n)]

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                self._channel.outgoing.send(("close", None))
                self._channel.incoming.poll(30)
        except (OSError, EOFError):
            pass
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._channel.close()


def start_process_timers(
    entries: Sequence[tuple[str, RunnerOpener | None]],
) -> dict[str, ProcessTimer]:
    """Start one worker per named recipe (concurrently) and wait until each has opened its runner.

    Entries without a recipe are skipped. A worker that fails to start or to open its runner is
    logged and left out (the caller times that runner in its own process and says so).
    """
    started = {}
    for name, opener in entries:
        if opener is None:
            continue
        try:
            started[name] = ProcessTimer(name, opener)
        except (pickle.PicklingError, AttributeError, TypeError, OSError) as exc:
            log.warning("timing %s in the measuring process instead of its own: %s", name, exc)
    ready = {}
    for name, timer in started.items():
        try:
            timer.wait_ready()
        except WorkerError as exc:
            log.warning("timing %s in the measuring process instead of its own: %s", name, exc)
            timer.close()
            continue
        ready[name] = timer
    return ready


if __name__ == "__main__":
    _serve(_Channel(int(sys.argv[1]), int(sys.argv[2])))
