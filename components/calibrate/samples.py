"""Calibration samples: checked against the model's signature and fed to a calibrator in batches.

:func:`check_calibration_samples` runs the shared array checks (names, shapes, dtypes, NaN/Inf)
because :func:`vxdeploy.components.calibrate.int8.calibrate_int8` can be called with arrays that never
went through a file, and adds the sample-count rules: too few is an error (never a silent
fall-back to random scales), few is a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import numpy as np

from vxdeploy.components.common import progress
from vxdeploy.components.common.data import Dataset, check_inputs
from vxdeploy.components.common.errors import DataError
from vxdeploy.components.common.signature import ModelSignature


class FewCalibrationSamplesWarning(UserWarning):
    """Fewer calibration samples than ``data.warn_calibration_samples``: ranges may be noisy."""


def check_calibration_samples(
    dataset: Dataset,
    signature: ModelSignature,
    *,
    min_samples: int,
    warn_samples: int,
    max_samples: int,
    what: str = "data.calibration_uri",
) -> tuple[Dataset, list[str]]:
    """Check calibration data and cap it at ``max_samples``.

    Returns:
        The (capped) samples and the warnings raised, for the stage report.

    Raises:
        DataError: on a mismatch with the signature, NaN/Inf, or fewer than ``min_samples``.
    """
    inputs = check_inputs(dataset.inputs, signature, what=what)
    n = len(next(iter(inputs.values()))) if inputs else 0
    if n < min_samples:
        raise DataError(
            f"{what}: {n} calibration samples, at least data.min_calibration_samples={min_samples} are "
            "needed for INT8 ranges that mean anything; add representative samples "
            f"(aim for {warn_samples} or more)"
        )
    notes = []
    if n < warn_samples:
        msg = (
            f"{what}: only {n} calibration samples (fewer than data.warn_calibration_samples="
            f"{warn_samples}); INT8 ranges may not cover real traffic"
        )
        warnings.warn(msg, FewCalibrationSamplesWarning, stacklevel=2)
        notes.append(msg)
    capped = Dataset({k: v[:max_samples] for k, v in inputs.items()}, dataset.labels)
    return capped, notes


class BatchReader:
    """An ONNX Runtime calibration data reader over in-memory samples, ``batch_size`` at a time.

    ONNX Runtime's ``CalibrationDataReader`` accepts any object with ``get_next`` (its
    ``__subclasshook__``), so this needs no import of onnxruntime.
    """

    def __init__(self, inputs: Mapping[str, np.ndarray], batch_size: int) -> None:
        n = len(next(iter(inputs.values())))
        self._batches = [
            {k: v[i : i + batch_size] for k, v in inputs.items()} for i in range(0, n, batch_size)
        ]
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._batches)
        self._served = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        if batch is not None:
            self._served += 1
            progress.step("calibration batches", self._served, len(self._batches))
        return batch

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._batches[start_index:end_index])
