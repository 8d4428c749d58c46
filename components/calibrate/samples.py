"""Calibration samples: checked against the model's signature and fed to a calibrator in batches.

:func:`check_calibration_samples` repeats the checks of :func:`components.common.data.load_dataset`
(names, shapes, dtypes, NaN/Inf) because :func:`components.calibrate.int8.calibrate_int8`
can be called with arrays that never went through a file, and adds the sample-count rules:
too few is an error (never a silent fall-back to random scales), few is a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import numpy as np

from components.common.data import Dataset
from components.common.errors import DataError
from components.common.signature import ModelSignature


class FewCalibrationSamplesWarning(UserWarning):
    """Fewer calibration samples than ``data.warn_calibration_samples``: ranges may be noisy."""


def check_inputs(
    inputs: Mapping[str, np.ndarray], signature: ModelSignature, *, what: str
) -> dict[str, np.ndarray]:
    """Check arrays against the signature; return them cast to the model's dtypes.

    Raises:
        DataError: naming ``what``, the input, and the sample index of any NaN or Inf.
    """
    expected = signature.input_names
    missing = [n for n in expected if n not in inputs]
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        raise DataError(
            f"{what}: arrays {sorted(inputs)} do not match the model inputs {expected}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
            + "; save one array per model input name"
        )
    counts: set[int] = set()
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        arr = np.asarray(inputs[spec.name])
        shape_text = "(" + ", ".join(str(d) for d in spec.shape) + ")"
        if arr.ndim != len(spec.shape):
            raise DataError(
                f"{what}: input {spec.name!r} has shape {arr.shape}, the model expects {shape_text} "
                f"({len(spec.shape)} dims, first axis = samples)"
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if axis > 0 and isinstance(want, int) and got != want:
                raise DataError(
                    f"{what}: input {spec.name!r} has shape {arr.shape}, the model expects {shape_text}; "
                    f"axis {axis} must be {want}"
                )
        want_dt = np.dtype(spec.dtype)
        if arr.dtype != want_dt:
            if arr.dtype.kind != want_dt.kind and not (arr.dtype.kind in "iub" and want_dt.kind in "iub"):
                raise DataError(
                    f"{what}: input {spec.name!r} has dtype {arr.dtype}, the model expects {want_dt}; "
                    f"save it with .astype('{want_dt}')"
                )
            arr = arr.astype(want_dt)
        if arr.dtype.kind == "f" and len(arr):
            bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            if bad.any():
                idx = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{what}: input {spec.name!r} has NaN or Inf at sample {idx} "
                    f"({int(bad.sum())} bad samples); clean or drop them"
                )
        counts.add(len(arr))
        out[spec.name] = arr
    if len(counts) > 1:
        raise DataError(f"{what}: inputs disagree on the number of samples: {sorted(counts)}")
    return out


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

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._batches[start_index:end_index])
