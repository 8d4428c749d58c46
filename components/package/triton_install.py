"""Which Triton the serve check runs: the serving image's own server, else nvidia-pytriton's bundled one.

On Vertex AI the serve-check task runs in the serving image (NGC Triton), whose
``/opt/tritonserver/bin/tritonserver`` and backends are the ones the endpoint serves with: the
check serves the packaged repository there unchanged. Anywhere else (a laptop, CI) the server
bundled in ``nvidia-pytriton`` stands in; it has the Python backend only, so models it cannot
load natively are swapped for Python-backend stand-ins (see
:func:`vxdeploy.components.package.serve_check.serve_copy`), and every swap is reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from vxdeploy.components.common.images import PYTRITON_VERSION
from vxdeploy.components.package.tritonserver import (
    PYTRITON_HOME_ENV,
    TritonInstall,
    find_bundled_triton,
    pytriton_home,
)

SERVING_IMAGE_TRITON = Path("/opt/tritonserver")
TRITON_ROOT_ENV = "VXDEPLOY_TRITON_ROOT"
"""Overrides where the serving image's Triton is (default ``/opt/tritonserver``)."""


@dataclass(frozen=True)
class ServeCheckServer:
    """The Triton the check runs, what it is, and the backends it has."""

    install: TritonInstall
    origin: str
    """``serving-image`` (the production server) or ``bundled`` (nvidia-pytriton's stand-in)."""
    backends: frozenset[str]

    @property
    def production(self) -> bool:
        return self.origin == "serving-image"


def find_image_triton(root: Path | None = None) -> tuple[TritonInstall | None, str]:
    """The serving image's Triton under ``root`` (``$VXDEPLOY_TRITON_ROOT`` or /opt/tritonserver)."""
    root = root or Path(os.environ.get(TRITON_ROOT_ENV) or SERVING_IMAGE_TRITON)
    binary = root / "bin" / "tritonserver"
    backends = root / "backends"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return None, f"no serving-image Triton: {binary} is not an executable file"
    if not backends.is_dir():
        return None, f"no serving-image Triton: {backends} is not a folder"
    python = backends / "python"
    return (
        TritonInstall(
            binary=binary,
            python_backend=python,
            stub=python / "triton_python_backend_stub",
            libraries=root / "lib",
            caches=root / "caches",
            libpython_dir=Path(str(sysconfig.get_config_var("LIBDIR") or "")),
            backends=backends,
        ),
        "",
    )


def find_serve_check_server() -> tuple[ServeCheckServer | None, str]:
    """The serving image's Triton when there is one, else the bundled one, else None and why.

    The compiled pipeline sets ``$VXDEPLOY_TRITON_ROOT`` on the serve-check task (kfp.local
    sets it too, where no such folder exists). The serving image has that Triton (its build
    checks it) and no stand-in, so on Vertex AI the check runs the production server or not at
    all; the result's ``server`` says which one ran.
    """
    image, image_reason = find_image_triton()
    if image is not None:
        assert image.backends is not None
        names = frozenset(p.name for p in image.backends.iterdir() if p.is_dir())
        return ServeCheckServer(image, "serving-image", names), ""
    bundled, _ = find_bundled_triton()
    if bundled is not None:
        return ServeCheckServer(bundled, "bundled", frozenset({"python"})), ""
    return None, (
        f"the serve check cannot run here: {image_reason}, and nvidia-pytriton's bundled tritonserver "
        f"is neither installed nor in {pytriton_home()}. Install that local stand-in with "
        f"`{sys.executable} -m vxdeploy.components.package.triton_install` "
        "(it goes outside this environment: "
        f"nvidia-pytriton pins numpy<2, which does not apply to the server binary), run the check in the "
        "serving image, or set triton.serve_check: best_effort / off"
    )


def install_bundled_triton(home: Path | None = None) -> Path:
    """``pip install --no-deps --target HOME nvidia-pytriton==PYTRITON_VERSION``: the server, not its pins.

    The environment stays consistent (``pip check`` clean): nvidia-pytriton's Python
    requirements (numpy<2 among them) are for its own Python API, which the serve check never
    imports; it only runs the bundled ``tritonserver`` binary and its Python backend.
    """
    home = home or pytriton_home()
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--upgrade",
        "--target",
        str(home),
        f"nvidia-pytriton=={PYTRITON_VERSION}",
    ]
    subprocess.run(command, check=True)
    install, reason = find_bundled_triton(search_path=[str(home)])
    if install is None:
        raise RuntimeError(f"installed nvidia-pytriton into {home}, but: {reason}")
    return home


def main() -> None:
    """Install the local serve-check server and say where it is."""
    home = install_bundled_triton()
    print(f"the serve check's local tritonserver is in {home} (set {PYTRITON_HOME_ENV} to move it)")


if __name__ == "__main__":
    main()
