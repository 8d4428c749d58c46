"""Calibration and evaluation data intake: ``.npz`` files with one array per model input.

Data is checked against the model's signature before any heavy work: every input present,
no stray arrays, dtypes that match, static dims that match, one sample count, no NaN/Inf.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.common.errors import DataError
from components.common.signature import ModelSignature


@dataclass(frozen=True)
class Dataset:
    """Model inputs (first axis = samples) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int, start: int = 0) -> Dataset:
        sl = slice(start, start + n)
        labels = None if self.labels is None else self.labels[sl]
        return Dataset({k: v[sl] for k, v in self.inputs.items()}, labels)

    def batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        """Consecutive input batches covering every sample (the last one may be short)."""
        return [
            {k: v[i : i + batch_size] for k, v in self.inputs.items()}
            for i in range(0, len(self), batch_size)
        ]

    def save(self, path: str | Path) -> None:
        arrays = dict(self.inputs)
        if self.labels is not None:
            arrays["labels"] = self.labels
        tmp = Path(f"{path}.tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)


def load_dataset(
    path: str | Path,
    signature: ModelSignature,
    *,
    what: str,
    labels_key: str = "labels",
    min_samples: int = 1,
) -> Dataset:
    """Load and check a ``.npz`` against ``signature``.

    Args:
        path: The ``.npz`` file.
        signature: The model's signature the arrays must fit.
        what: The config field the file came from, named in errors (e.g. ``data.eval_uri``).
        labels_key: Name of the optional labels array.
        min_samples: Fewer samples than this is an error.

    Raises:
        DataError: naming the field, the array and what to change.
    """
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{what}: {str(path)!r} is not a readable .npz file ({exc})") from exc
    labels = arrays.pop(labels_key, None)
    checked = check_inputs(arrays, signature, what=what, hint=f" and optional '{labels_key}'")
    n = len(next(iter(checked.values()))) if checked else 0
    if labels is not None and len(labels) != n:
        raise DataError(f"{what}: {labels_key!r} has {len(labels)} entries for {n} samples")
    if n < min_samples:
        raise DataError(f"{what}: {n} samples, at least {min_samples} are needed")
    return Dataset(checked, labels)


def check_inputs(
    inputs: Mapping[str, np.ndarray], signature: ModelSignature, *, what: str, hint: str = ""
) -> dict[str, np.ndarray]:
    """Check model-input arrays against the signature; return them cast to the model's dtypes.

    Names must match, dims after the first (the sample axis) must match static dims, dtypes
    must be of the same kind (ints of any width are cast), floats must be finite, and every
    input must have the same number of samples.

    Raises:
        DataError: naming ``what``, the input, and the sample index of any NaN or Inf.
    """
    expected = set(signature.input_names)
    missing = sorted(expected - inputs.keys())
    extra = sorted(inputs.keys() - expected)
    if missing or extra:
        raise DataError(
            f"{what}: arrays {sorted(inputs)} do not match the model inputs {signature.input_names}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
            + f". Save one array per input name (np.savez(path, {_kwargs_hint(signature)})){hint}."
        )
    counts = set()
    checked: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        arr = np.asarray(inputs[spec.name])
        if arr.ndim != len(spec.shape):
            raise DataError(
                f"{what}: input {spec.name!r} has shape {arr.shape}, the model expects "
                f"{_fmt_shape(spec.shape)} ({len(spec.shape)} dims, first axis = samples)"
            )
        # Axis 0 holds the samples: a fixed-batch model still takes any number of them.
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if axis > 0 and isinstance(want, int) and got != want:
                raise DataError(
                    f"{what}: input {spec.name!r} has shape {arr.shape}, the model expects "
                    f"{_fmt_shape(spec.shape)}; axis {axis} must be {want}"
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
        checked[spec.name] = arr
    if len(counts) > 1:
        raise DataError(f"{what}: inputs disagree on the number of samples: {sorted(counts)}")
    return checked


def _kwargs_hint(signature: ModelSignature) -> str:
    return ", ".join(f"{n}=..." for n in signature.input_names)


def _fmt_shape(shape: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
