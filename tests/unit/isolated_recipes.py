"""Runner recipes for tests/unit/test_isolated_timing.py, in a module light enough to import in a worker."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from vxdeploy.components.select.isolated import MEASUREMENT_ENV


class EnvCheckingRunner:
    """Fails its calls unless its process has :data:`MEASUREMENT_ENV`; returns its process id."""

    name, device, max_batch = "env", "cpu", None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = {k: v for k, v in MEASUREMENT_ENV.items() if os.environ.get(k) != v}
        if missing:
            raise RuntimeError(f"not in the measurement environment: {missing}")
        return {"pid": np.asarray([os.getpid()])}

    def close(self) -> None:
        pass


class FailingRunner(EnvCheckingRunner):
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ValueError("this runner always fails")


def open_env_checking_runner() -> EnvCheckingRunner:
    return EnvCheckingRunner()


def open_failing_runner() -> FailingRunner:
    return FailingRunner()


def open_nothing() -> EnvCheckingRunner:
    raise FileNotFoundError("no such model: /nowhere/model.onnx")
