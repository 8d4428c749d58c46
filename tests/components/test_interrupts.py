"""Ctrl-C and SIGTERM stop ``vxdeploy run --local`` cleanly: within 5 s, nothing left running, no temp
folders, the report written with status ``interrupted``, exit status 130.

Each test starts the real CLI in its own session on the digits model, waits until a stage is under
way (calibration; the serve check with its tritonserver and Python stub), sends the signal, and then
looks at every process the run had started, the temp folder and the report.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vxdeploy.components.common.interrupts import child_processes, is_running

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "--set",
    "selection.batch_sizes=[1, 8]",
    "--set",
    "selection.min_iterations=5",
    "--set",
    "selection.min_seconds=0.05",
]


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    workdir: Path
    tmp: Path
    output: Path

    def terminal(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture()
def start_run(tmp_path: Path) -> Iterator[Callable[[list[str]], Run]]:
    started: list[Run] = []

    def start(extra: list[str]) -> Run:
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        output = tmp_path / "terminal.txt"
        workdir = tmp_path / "run"
        command = [
            sys.executable,
            "-m",
            "vxdeploy.pipelines.cli",
            "run",
            "--local",
            "--workdir",
            str(workdir),
            *FAST,
        ]
        with open(output, "wb") as out:
            process = subprocess.Popen(
                [*command, *extra],
                cwd=REPO,
                env=dict(os.environ, TMPDIR=str(tmp)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a shell gives a foreground job
            )
        run = Run(process, workdir, tmp, output)
        started.append(run)
        return run

    yield start
    for run in started:  # a failed test must not leave its run behind
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()


def _wait_for(condition: Callable[[], bool], run: Run, timeout_s: float = 420) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert run.process.poll() is None, f"the run ended early:\n{run.terminal()[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"the run did not get there in {timeout_s} s:\n{run.terminal()[-3000:]}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _interrupt(run: Run, send: Callable[[int], None]) -> tuple[list[int], float, int]:
    """Send the signal; return the processes the run had started, its seconds to exit, its status."""
    started = child_processes(run.process.pid)
    t0 = time.monotonic()
    send(run.process.pid)
    try:
        code = run.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = -1
    return started, time.monotonic() - t0, code


def _assert_clean_interrupt(run: Run, started: list[int], seconds: float, code: int, stage: str) -> None:
    time.sleep(0.5)  # processes killed at the end of the grace period may take a moment to go
    still = {pid: _cmdline(pid) for pid in started if is_running(pid)}
    report = json.loads((run.workdir / "report.json").read_text())
    stages = {s["stage"]: s["status"] for s in report["stages"]}
    left = sorted(p.name for p in run.tmp.iterdir() if not p.name.startswith("torchinductor_"))
    terminal = run.terminal()
    assert code == 130, terminal[-3000:]
    assert seconds < 5.0
    assert still == {}
    assert left == []
    assert not (run.workdir / ".tmp").exists()
    assert report["status"] == "interrupted"
    assert stages[stage] == "interrupted"
    assert "Traceback" not in terminal
    assert "INTERRUPTED" in terminal


def test_ctrl_c_during_calibration_stops_the_run_cleanly(start_run: Callable[[list[str]], Run]) -> None:
    run = start_run([])
    log = run.workdir / "logs" / "calibrate-int8.log"
    _wait_for(lambda: log.is_file() and "calibrat" in log.read_text(errors="replace").lower(), run)

    # Ctrl-C in a terminal signals the whole foreground process group
    started, seconds, code = _interrupt(run, lambda pid: os.killpg(pid, signal.SIGINT))

    _assert_clean_interrupt(run, started, seconds, code, "calibrate")


_SHM_REGION = re.compile(r"vxdeploy_\d+_[0-9a-f]{8}_")
"""A stub's shared-memory region: under its server's own prefix (tritonserver.shared_memory_prefix)."""


def test_sigterm_during_the_serve_check_ends_tritonserver_and_its_stub(
    start_run: Callable[[list[str]], Run],
) -> None:
    run = start_run(
        [
            "--set",
            "quantization.enabled=false",
            "--set",
            "compilation.candidates=[onnxruntime_fp32]",
            "--set",
            "selection.measure_reference=false",
            "--set",
            "triton.serve_check_requests=500",  # every eval sample: a serve check long enough to catch
        ]
    )

    def serving() -> bool:  # the server and a stub that already holds its shared-memory region
        names = [_cmdline(pid) for pid in child_processes(run.process.pid)]
        return any("tritonserver" in n for n in names) and any(
            "triton_python_backend_stub" in n and any(_SHM_REGION.match(a) for a in n.split()) for n in names
        )

    _wait_for(serving, run)
    regions = [
        arg
        for pid in child_processes(run.process.pid)
        for arg in _cmdline(pid).split()
        if _SHM_REGION.match(arg)
    ]

    # a service manager's stop: SIGTERM to the CLI only, not to its group
    started, seconds, code = _interrupt(run, lambda pid: os.kill(pid, signal.SIGTERM))

    _assert_clean_interrupt(run, started, seconds, code, "serve_check")
    assert regions and not [r for r in regions if (Path("/dev/shm") / r).exists()]
