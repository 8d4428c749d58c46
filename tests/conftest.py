"""Shared fixtures: the embedded digits model and data, and the ``gpu`` marker's skip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Before anything loads torch (libgomp reads it once): OpenMP threads wait passively. With the
# default active wait, PyTorch on this shared 2-core machine ran 10-100x slower whenever the load
# exceeded the cores (components/select/isolated.py has the figures), which made the zoo's
# select and serve-check stages take minutes; ONNX Runtime's spinning pools likewise. The
# kfp.local tasks and Triton inherit these.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VXDEPLOY_ORT_ALLOW_SPINNING", "0")

import pytest  # noqa: E402

from vxdeploy.components.common import builtin  # noqa: E402


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default model (.pt2) and its calibration and evaluation .npz, built once."""
    d = tmp_path_factory.mktemp("digits")
    builtin.write_builtin("builtin://digits-cnn", d)
    builtin.write_builtin("builtin://digits-calibration", d)
    builtin.write_builtin("builtin://digits-eval", d)
    return d


@pytest.fixture()
def digits_copy(digits_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the digits files a test may change."""
    dst = tmp_path / "digits"
    shutil.copytree(digits_dir, dst)
    return dst
