"""The one output comparison: a candidate's outputs against a reference's, output by output.

Every stage that checks numbers (export parity, the INT8 gate, selection, the serve check) measures
with :func:`compare_outputs`, so a cosine or a difference means the same thing in every report.
:func:`check_parity` raises one :class:`~vxdeploy.components.common.errors.ParityError` that names each
failing output with its shape and figures, the way Hugging Face's exporters report ``AtolError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from vxdeploy.components.common.errors import ParityError

_REL_FLOOR = 1e-6
"""Smallest |reference| used as the denominator of relative differences, so zeros do not divide."""


@dataclass(frozen=True)
class ParityTolerance:
    """What counts as agreement for a conversion (export, compilation) that should not change numbers.

    An output agrees when every element satisfies ``|c - r| <= atol + rtol * |r|`` (numpy's
    ``allclose`` rule), its per-row cosine is at least ``min_cosine`` on every row (rows more than
    one value wide) and, when
    ``min_top1_agreement`` is set, its top-1 agreement (class-score outputs) is at least that.
    """

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999
    min_top1_agreement: float | None = None


@dataclass(frozen=True)
class OutputComparison:
    """The figures of one output, reference against candidate (first axis = samples)."""

    name: str
    shape: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    cosine_mean: float
    """Mean over samples of the cosine between each sample's reference and candidate values."""
    cosine_min: float
    """The worst sample's cosine."""
    top1_agreement: float | None
    """Fraction of samples whose argmax agrees, for ``(samples, classes)`` float outputs; else None."""
    mismatched: int
    """Elements outside ``atol + rtol * |reference|`` (set by :func:`check_parity`; -1 before)."""
    elements: int

    @property
    def shapes_match(self) -> bool:
        return self.shape == self.candidate_shape

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["candidate_shape"] = list(self.candidate_shape)
        return d

    def describe(self) -> str:
        """One line with every figure, as the error message and the logs show it."""
        if not self.shapes_match:
            return f"{self.name!r}: shape {self.candidate_shape}, reference shape {self.shape}"
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.4f}"
        mism = "" if self.mismatched < 0 else f", {self.mismatched}/{self.elements} elements out of tolerance"
        return (
            f"{self.name!r} shape {self.shape}: max abs diff {self.max_abs_diff:.3g}, "
            f"max rel diff {self.max_rel_diff:.3g}, per-row cosine mean {self.cosine_mean:.6f} "
            f"(min {self.cosine_min:.6f}){top1}{mism}"
        )


def is_class_score(array: np.ndarray) -> bool:
    """True for (samples, classes) float outputs with two or more classes: logits or probabilities."""
    return array.ndim == 2 and array.shape[1] >= 2 and array.dtype.kind == "f"


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per sample, the cosine between its reference and candidate values (each sample flattened).

    Two all-zero samples agree (1.0); a zero sample against a non-zero one does not (0.0).
    """
    r = np.nan_to_num(np.asarray(reference, dtype=np.float64).reshape(len(reference), -1))
    c = np.nan_to_num(np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1))
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (r * c).sum(axis=1) / (nr * nc)
    cos = np.where((nr == 0) & (nc == 0), 1.0, cos)
    return np.asarray(np.nan_to_num(np.clip(cos, -1.0, 1.0), nan=0.0))


def compare_outputs(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> list[OutputComparison]:
    """Measure every reference output against the candidate's output of the same name.

    Args:
        reference: Output name to array from the reference model (e.g. PyTorch, FP32 ONNX).
        candidate: Output name to array from the model under test, same names.

    Returns:
        One :class:`OutputComparison` per reference output, in the reference's order.

    Raises:
        ParityError: when the candidate lacks one of the reference's outputs.
    """
    missing = [n for n in reference if n not in candidate]
    if missing:
        raise ParityError(
            f"candidate has no output(s) {missing}; it returns {sorted(candidate)}. "
            "Output names must match the reference model's signature."
        )
    results = []
    for name, ref in reference.items():
        cand = np.asarray(candidate[name])
        ref = np.asarray(ref)
        if ref.shape != cand.shape:
            results.append(
                OutputComparison(
                    name=name,
                    shape=tuple(ref.shape),
                    candidate_shape=tuple(cand.shape),
                    max_abs_diff=float("inf"),
                    max_rel_diff=float("inf"),
                    cosine_mean=0.0,
                    cosine_min=0.0,
                    top1_agreement=None,
                    mismatched=int(ref.size),
                    elements=int(ref.size),
                )
            )
            continue
        results.append(_compare_one(name, ref, cand))
    return results


def _compare_one(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputComparison:
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    diff = np.abs(c - r)
    # A NaN or Inf on one side only is an infinite disagreement, not a value to average away.
    finite_mismatch = np.isfinite(r) != np.isfinite(c)
    diff = np.where(finite_mismatch, np.inf, np.nan_to_num(diff, nan=0.0, posinf=0.0))
    rel = diff / np.maximum(np.abs(np.nan_to_num(r)), _REL_FLOOR)
    if ref.ndim == 0:
        r, c, finite_mismatch = r.reshape(1, 1), c.reshape(1, 1), finite_mismatch.reshape(1, 1)
    cos = row_cosines(r, c) if len(r) else np.ones(1)
    if len(r):
        # A sample with a NaN or Inf on one side only does not agree, whatever its other values.
        cos = np.where(finite_mismatch.reshape(len(r), -1).any(axis=1), 0.0, cos)
    agreement = None
    if is_class_score(ref) and len(ref):
        agreement = float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean())
    return OutputComparison(
        name=name,
        shape=tuple(ref.shape),
        candidate_shape=tuple(cand.shape),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        max_rel_diff=float(rel.max()) if rel.size else 0.0,
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        top1_agreement=agreement,
        mismatched=-1,
        elements=int(ref.size),
    )


def count_mismatched(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> int:
    """Elements where ``|c - r| > atol + rtol * |r|`` (NaN on either side counts)."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    if r.shape != c.shape:
        return int(r.size)
    ok = np.isclose(c, r, atol=atol, rtol=rtol, equal_nan=True)
    return int((~ok).sum())


def check_parity(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tolerance: ParityTolerance,
    *,
    what: str = "candidate",
    fix: str = "Check the exporter's warnings for unsupported ops, or loosen export.atol / export.rtol "
    "if these differences are acceptable for the task.",
) -> list[OutputComparison]:
    """Compare outputs and raise if any is out of tolerance.

    Args:
        reference: Reference outputs by name.
        candidate: Candidate outputs by name.
        tolerance: The limits every output must meet.
        what: What the candidate is, for the error message (e.g. ``"ONNX export"``).
        fix: What the user can do, appended to the error.

    Returns:
        The comparisons (with ``mismatched`` counted) when every output agrees.

    Raises:
        ParityError: naming every failing output, its shape and its figures.
    """
    comparisons = [
        replace(
            cmp,
            mismatched=count_mismatched(
                reference[cmp.name], candidate[cmp.name], tolerance.atol, tolerance.rtol
            ),
        )
        for cmp in compare_outputs(reference, candidate)
    ]
    failing = failing_outputs(comparisons, tolerance)
    if failing:
        lines = "\n".join(f"  - {c.describe()}" for c in failing)
        top1 = (
            ""
            if tolerance.min_top1_agreement is None
            else f", min top-1 agreement={tolerance.min_top1_agreement:g}"
        )
        raise ParityError(
            f"{what} disagrees with the reference beyond tolerance (atol={tolerance.atol:g}, "
            f"rtol={tolerance.rtol:g}, min per-row cosine={tolerance.min_cosine:g}{top1}) on "
            f"{len(failing)} of {len(comparisons)} output(s):\n{lines}\n{fix}"
        )
    return comparisons


def failing_outputs(
    comparisons: Sequence[OutputComparison], tolerance: ParityTolerance
) -> list[OutputComparison]:
    """The comparisons that break ``tolerance`` (shape, element-wise closeness, cosine or top-1)."""
    failing = []
    for c in comparisons:
        # A row one value wide has a cosine of +-1 (its sign): the element-wise tolerance judges it.
        wide = int(np.prod(c.shape[1:])) > 1 if len(c.shape) > 1 else False
        bad = not c.shapes_match or c.mismatched > 0 or (wide and c.cosine_min < tolerance.min_cosine)
        if c.mismatched < 0:  # not counted: fall back to the absolute difference alone
            bad = bad or c.max_abs_diff > tolerance.atol
        if tolerance.min_top1_agreement is not None and c.top1_agreement is not None:
            bad = bad or c.top1_agreement < tolerance.min_top1_agreement
        if bad:
            failing.append(c)
    return failing


def summarize(comparisons: Sequence[OutputComparison]) -> dict[str, float]:
    """Worst-case headline figures over all outputs (for Metrics and metadata)."""
    if not comparisons:
        return {}
    top1 = [c.top1_agreement for c in comparisons if c.top1_agreement is not None]
    out = {
        "max_abs_diff": max(c.max_abs_diff for c in comparisons),
        "max_rel_diff": max(c.max_rel_diff for c in comparisons),
        "min_cosine": min(c.cosine_min for c in comparisons),
    }
    if top1:
        out["min_top1_agreement"] = min(top1)
    return out
