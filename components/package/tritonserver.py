"""Run a real Triton server on loopback: the ``tritonserver`` binary bundled in ``nvidia-pytriton``.

That build (Triton 2.51) carries the Python backend only. To serve a repository with it, the
Python backend stub for the running interpreter's version is copied next to the backend's
library in a private backend folder (the installed package is never changed), the stub finds
``libpython`` in the interpreter's ``LIBDIR`` and pytriton's bundled libraries through
``LD_LIBRARY_PATH``, and ``VXDEPLOY_PYTHON_PATHS`` tells vxdeploy's model.py where this
interpreter's site-packages are (the embedded interpreter ignores ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vxdeploy.components.common.errors import InternalError
from vxdeploy.components.common.interrupts import child_processes, signals_raise

PYTHON_PATHS_ENV = "VXDEPLOY_PYTHON_PATHS"


class TritonStartError(InternalError):
    """The Triton server exited or did not become ready; the message ends with its log."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the bundled server's pieces are."""

    binary: Path
    python_backend: Path
    stub: Path
    libraries: Path
    caches: Path
    libpython_dir: Path
    backends: Path | None = None
    """A complete backend folder used as is (the serving image's ``/opt/tritonserver/backends``);
    None: the bundled Python backend, prepared per server by :func:`prepare_backends`."""


PYTRITON_HOME_ENV = "VXDEPLOY_PYTRITON_HOME"
"""Where the local stand-in lives (default ``<sys.prefix>/share/vxdeploy/pytriton``: inside the virtual
environment's folder, but not on its ``sys.path``, so its pins never reach the environment)."""


def pytriton_home() -> Path:
    """The folder ``make setup`` installs nvidia-pytriton into (``$VXDEPLOY_PYTRITON_HOME``)."""
    home = os.environ.get(PYTRITON_HOME_ENV)
    return Path(home) if home else Path(sys.prefix) / "share" / "vxdeploy" / "pytriton"


def find_bundled_triton(
    package_name: str = "pytriton", search_path: Sequence[str] | None = None
) -> tuple[TritonInstall | None, str]:
    """The Triton bundled in ``package_name`` (nvidia-pytriton's), or None and why it cannot run here.

    ``search_path``: folders to find the package in; default: this interpreter's ``sys.path``,
    then :func:`pytriton_home` (the ``pip install --target`` folder outside the environment).
    """
    if search_path is None:
        spec = importlib.util.find_spec(package_name)
        if spec is None:
            spec = importlib.machinery.PathFinder.find_spec(package_name, [str(pytriton_home())])
    else:
        spec = importlib.machinery.PathFinder.find_spec(package_name, list(search_path))
    if spec is None or not spec.submodule_search_locations:
        return (
            None,
            f"{package_name} (nvidia-pytriton) is not installed; pip install --no-deps nvidia-pytriton",
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    server = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=server / "bin" / "tritonserver",
        python_backend=server / "backends" / "python",
        stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
        libraries=package.parent / "nvidia_pytriton.libs",
        caches=server / "caches",
        libpython_dir=Path(str(sysconfig.get_config_var("LIBDIR") or "")),
    )
    if not install.binary.is_file():
        return None, f"the bundled tritonserver is missing ({install.binary})"
    if not (install.python_backend / "libtriton_python.so").is_file():
        return None, f"the bundled Python backend is missing ({install.python_backend})"
    if not install.stub.is_file():
        return None, f"nvidia-pytriton has no Python backend stub for Python {version} ({install.stub})"
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return (
            None,
            f"{sys.executable} is built without a shared libpython, which the Python backend stub needs",
        )
    return install, ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_backends(install: TritonInstall, dest: Path) -> Path:
    """A backend folder with the Python backend and this interpreter's stub side by side."""
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in install.python_backend.iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    shutil.copy2(install.stub, python / install.stub.name)
    return dest


def server_environment(install: TritonInstall, python_paths: Sequence[str] | None = None) -> dict[str, str]:
    """The server's environment: where the stub finds libpython and model.py finds packages."""
    env = dict(os.environ)
    libs = [str(install.libpython_dir), str(install.libraries)]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    paths = list(python_paths) if python_paths is not None else site.getsitepackages()
    env[PYTHON_PATHS_ENV] = os.pathsep.join(paths)
    return env


@dataclass(frozen=True)
class RunningTriton:
    """A started server: its gRPC address and its log file."""

    grpc_url: str
    http_url: str
    log_path: Path
    pid: int

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_errors(self, limit: int = 10) -> list[str]:
        """The log's error lines (glog ``E<date>``), without the CUDA-driver one every CPU machine logs."""
        if not self.log_path.is_file():
            return []
        errors = [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if re.match(r"E\d{4} ", line) and "CudaDriverHelper has not been initialized" not in line
        ]
        return errors[:limit]

    def failure_text(self) -> str:
        """Why the server failed: its first error's message, then its error lines and the log's tail.

        The first line names the cause (``model output 'label' must specify 'dims'``), not the
        status tables the log ends with.
        """
        errors = self.log_errors()
        if not errors:
            return "\n" + self.log_tail()
        first = errors[0].split("] ", 1)[-1].strip().strip('"')
        return f"{first}\nerrors:\n" + "\n".join(errors) + "\nlog tail:\n" + self.log_tail()


@contextmanager
def running_triton(
    model_repository: str | Path,
    *,
    install: TritonInstall | None = None,
    startup_timeout_s: float = 120,
    cache_size_bytes: int = 0,
    extra_args: Sequence[str] = (),
    workdir: str | Path | None = None,
) -> Iterator[RunningTriton]:
    """Start Triton on 127.0.0.1 over ``model_repository``, wait until ready, always stop it.

    Args:
        model_repository: The folder of model folders.
        install: The server to run; default: the bundled one.
        startup_timeout_s: How long every model may take to load.
        cache_size_bytes: Size of the local response cache (0: none).
        extra_args: More ``tritonserver`` arguments.
        workdir: Where the backend folder and the log go (default: a temporary folder, removed after).

    Raises:
        TritonStartError: when the server exits or is not ready in time, with its log's tail.
    """
    if install is None:
        install, reason = find_bundled_triton()
        if install is None:
            raise TritonStartError(f"cannot start Triton: {reason}")
    owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="vxdeploy-triton-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    backends = install.backends or prepare_backends(install, work / "backends")
    log_path = work / "tritonserver.log"
    http_port, grpc_port = free_port(), free_port()
    shm_prefix = shared_memory_prefix()
    args = [
        str(install.binary),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--disable-auto-complete-config",
        "--exit-on-error=true",
        "--exit-timeout-secs=5",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]
    if cache_size_bytes > 0:
        args += [f"--cache-config=local,size={cache_size_bytes}", f"--cache-directory={install.caches}"]
    args += list(extra_args)
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally, after the process
    # Its own session, so stopping the server also stops the Python stubs it started.
    process = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=server_environment(install), start_new_session=True
    )
    server = RunningTriton(
        grpc_url=f"127.0.0.1:{grpc_port}",
        http_url=f"127.0.0.1:{http_port}",
        log_path=log_path,
        pid=process.pid,
    )
    regions: list[str] = []
    try:
        # SIGTERM unwinds to the finally below (server group ended, temp folder removed) instead of
        # ending this process with the server and its stubs still running.
        with signals_raise((signal.SIGTERM,), only_default=True):
            _wait_ready(process, server, startup_timeout_s)
            regions = _shared_memory_regions(process.pid, shm_prefix)
            yield server
    finally:
        # Stopped while starting (or killed) a server leaves its stubs' shared memory behind: note
        # the regions its stubs use before they go, and remove what is left after.
        regions += _shared_memory_regions(process.pid, shm_prefix)
        _stop(process)
        log.close()
        for region in set(regions):
            Path("/dev/shm", region).unlink(missing_ok=True)
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def shared_memory_prefix() -> str:
    """A prefix of one server's own for its Python-backend shared-memory regions.

    Under the backend's default prefix, servers started on one machine at once (two runs, parallel
    test workers) can map each other's regions: requests and statistics then cross between them.
    """
    return f"vxdeploy_{os.getpid()}_{secrets.token_hex(4)}_"


def _shared_memory_regions(server_pid: int, prefix: str) -> list[str]:
    """The ``/dev/shm`` regions the server's Python stubs use (named on each stub's command line)."""
    regions: list[str] = []
    for pid in child_processes(server_pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        regions += [a.decode() for a in args if a.startswith(prefix.encode()) and b"/" not in a]
    return regions


def _wait_ready(process: subprocess.Popen[bytes], server: RunningTriton, timeout_s: float) -> None:
    import tritonclient.grpc as grpcclient

    deadline = time.monotonic() + timeout_s
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with code {process.returncode} before it was ready: "
                    f"{server.failure_text()}"
                )
            try:
                if client.is_server_ready():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
    finally:
        client.close()
    raise TritonStartError(f"tritonserver was not ready after {timeout_s:.0f} s: {server.failure_text()}")


def _stop(process: subprocess.Popen[bytes], grace_s: float = 1.0) -> None:
    # Short: the check is over (or interrupted) and nothing depends on a graceful exit; a long
    # wait would outlast the grace the CLI gives an interrupted task before it kills it.
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
    # Stubs outliving their server would hold shared memory: end whatever is left of the group.
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
