"""Calibration and evaluation data intake: ``.npz`` files with one array per model input.

Data is checked against the model's signature before any heavy work: every input present,
dtypes that match, static dims that match, one sample count, no NaN/Inf. Arrays that are not
inputs are targets: ``labels`` (the classification labels), ``labels/<output name>`` or an
array named like an output; anything else is reported and set aside.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vxdeploy.components.common.errors import DataError
from vxdeploy.components.common.signature import ModelSignature

log = logging.getLogger(__name__)

TARGET_PREFIX = "labels/"
"""``labels/<output name>`` holds the targets of one output (``labels`` alone: the class labels)."""


@dataclass(frozen=True)
class Dataset:
    """Model inputs (first axis = samples), optional labels and per-output targets."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    """Targets by output name (``labels/<output>`` in the file)."""

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int, start: int = 0) -> Dataset:
        sl = slice(start, start + n)
        labels = None if self.labels is None else self.labels[sl]
        targets = {k: v[sl] for k, v in self.targets.items()}
        return Dataset({k: v[sl] for k, v in self.inputs.items()}, labels, targets)

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
        arrays.update({f"{TARGET_PREFIX}{k}": v for k, v in self.targets.items()})
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
    arrays = read_npz(path, what=what)
    labels = arrays.pop(labels_key, None)
    targets = split_targets(arrays, signature, what=what)
    checked = check_inputs(
        arrays,
        signature,
        what=what,
        hint=f" and optional '{labels_key}' or '{TARGET_PREFIX}<output name>' targets",
    )
    n = len(next(iter(checked.values()))) if checked else 0
    if labels is not None and len(labels) != n:
        raise DataError(f"{what}: {labels_key!r} has {len(labels)} entries for {n} samples")
    for name, target in targets.items():
        if len(target) != n:
            raise DataError(f"{what}: targets of output {name!r} have {len(target)} entries for {n} samples")
    if n < min_samples:
        raise DataError(f"{what}: {n} samples, at least {min_samples} are needed")
    return Dataset(checked, labels, targets)


def split_targets(
    arrays: dict[str, np.ndarray], signature: ModelSignature, *, what: str
) -> dict[str, np.ndarray]:
    """Take the targets out of ``arrays``: ``labels/<output>`` and arrays named like an output.

    Arrays that are neither inputs nor targets are set aside with a warning, unless an input is
    missing (then they are most likely a misspelt input, and :func:`check_inputs` names them).

    Raises:
        DataError: for ``labels/<name>`` where ``name`` is not an output of the model.
    """
    outputs = signature.output_names
    targets: dict[str, np.ndarray] = {}
    for key in list(arrays):
        name = key.removeprefix(TARGET_PREFIX) if key.startswith(TARGET_PREFIX) else key
        if key.startswith(TARGET_PREFIX) and name not in outputs:
            raise DataError(
                f"{what}: array {key!r} names output {name!r}, which the model does not have; "
                f"its outputs are {outputs}: save targets as '{TARGET_PREFIX}<output name>'"
            )
        if name in outputs and key not in signature.input_names:
            targets[name] = np.asarray(arrays.pop(key))
    extra = sorted(set(arrays) - set(signature.input_names))
    if extra and set(signature.input_names) <= set(arrays):
        log.warning("%s: arrays %s are neither model inputs nor targets; they are not used", what, extra)
        for key in extra:
            arrays.pop(key)
    return targets


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


_SAVE_HINT = "save one array per model input with np.savez(path, <input name>=array, labels=...)"


def read_npz(path: str | Path, *, what: str) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, or a :class:`DataError` saying what the file is instead.

    Raises:
        DataError: a folder, an empty, text, ``.npy`` or other non-zip file, a truncated archive,
            or object (pickled) arrays, which are never loaded.
    """
    import zipfile
    import zlib

    p = Path(path)
    where = f"{what}={str(path)!r}"
    if p.is_dir():
        raise DataError(f"{where} is a directory, not a .npz file; {_SAVE_HINT}")
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if not head:
        raise DataError(f"{where} is an empty file; {_SAVE_HINT}")
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{where} is a single .npy array (np.save), not a .npz archive; {_SAVE_HINT}")
    if not head.startswith(b"PK"):
        text = _looks_like_text(head)
        kind = "a text file, not a .npz archive" if text else "not a .npz archive (not a zip file)"
        raise DataError(f"{where} is {kind}; {_SAVE_HINT}")
    try:
        with np.load(str(p), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(
            f"{where} is a truncated or damaged .npz archive ({exc}); copy or write it again"
        ) from None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise DataError(
                f"{where} holds object arrays, which are never unpickled; convert each to a numeric array "
                f"(e.g. np.asarray(x, dtype='float32')) and {_SAVE_HINT}"
            ) from None
        raise DataError(f"{where} is not a readable .npz archive ({exc}); {_SAVE_HINT}") from None
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc.strerror or exc})") from None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)
