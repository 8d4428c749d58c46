import numpy as np
import pytest

from vxdeploy.components.common.errors import ParityError
from vxdeploy.components.verify.compare import ParityTolerance, check_parity, compare_outputs, summarize


def _logits(n: int = 64, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, classes)).astype(np.float32)


def test_identical_outputs_have_zero_diff_full_cosine_and_full_top1() -> None:
    ref = {"logits": _logits()}

    (cmp,) = compare_outputs(ref, {"logits": ref["logits"].copy()})

    assert (cmp.max_abs_diff, cmp.max_rel_diff, cmp.top1_agreement) == (0.0, 0.0, 1.0)
    assert cmp.cosine_mean == pytest.approx(1.0)


def test_figures_measure_the_real_difference() -> None:
    ref = _logits()
    cand = ref.copy()
    cand[3, 0] += 0.5
    cand[5] = -cand[5]  # flips the predicted class of sample 5

    (cmp,) = compare_outputs({"logits": ref}, {"logits": cand})

    assert cmp.max_abs_diff == pytest.approx(float(np.abs(ref[5]).max() * 2), rel=1e-5)
    assert cmp.top1_agreement == pytest.approx(63 / 64)
    assert cmp.cosine_min < 0.0 < cmp.cosine_mean < 1.0


def test_parity_error_names_every_failing_output_with_shape_and_figures() -> None:
    ref = {"logits": _logits(), "embedding": _logits(64, 16, seed=1), "fine": _logits(64, 3, seed=2)}
    cand = {k: v.copy() for k, v in ref.items()}
    cand["logits"] += 0.01
    cand["embedding"][0, 0] += 1.0

    with pytest.raises(ParityError) as err:
        check_parity(ref, cand, ParityTolerance(atol=1e-4, rtol=1e-3), what="ONNX export")

    message = str(err.value)
    assert "'logits' shape (64, 10)" in message and "'embedding' shape (64, 16)" in message
    assert "'fine'" not in message
    assert "max abs diff 1" in message and "2 of 3 output(s)" in message


def test_shape_mismatch_fails_and_says_both_shapes() -> None:
    ref = {"output": _logits(8, 10)}

    with pytest.raises(ParityError, match=r"shape \(8, 5\), reference shape \(8, 10\)"):
        check_parity(ref, {"output": _logits(8, 5)}, ParityTolerance())


def test_nan_in_candidate_only_is_an_infinite_difference() -> None:
    ref = _logits(4, 3)
    cand = ref.copy()
    cand[1, 1] = np.nan

    (cmp,) = compare_outputs({"o": ref}, {"o": cand})

    assert cmp.max_abs_diff == float("inf")


def test_missing_candidate_output_is_named() -> None:
    with pytest.raises(ParityError, match="no output"):
        compare_outputs({"a": _logits(), "b": _logits()}, {"a": _logits()})


def test_top1_floor_fails_a_close_but_reordered_candidate() -> None:
    ref = np.array([[1.0, 1.00001], [2.0, 0.0]], np.float32)
    cand = np.array([[1.00001, 1.0], [2.0, 0.0]], np.float32)
    tol = ParityTolerance(atol=1e-3, rtol=1e-3, min_cosine=0.99, min_top1_agreement=0.99)

    with pytest.raises(ParityError, match="top-1 agreement 0.5000"):
        check_parity({"scores": ref}, {"scores": cand}, tol)


def test_summary_reports_the_worst_output() -> None:
    ref = {"a": _logits(), "b": _logits(seed=3)}
    cand = {"a": ref["a"] + 0.001, "b": ref["b"] + 0.1}

    figures = summarize(compare_outputs(ref, cand))

    assert figures["max_abs_diff"] == pytest.approx(0.1, rel=1e-3)
    assert figures["min_top1_agreement"] <= 1.0


def test_cosine_is_per_row_and_one_wide_outputs_are_judged_element_wise() -> None:
    ref = np.array([[1e-6], [2.0]], np.float32)
    cand = np.array([[-1e-6], [2.0]], np.float32)  # a sign flip inside atol: the same number

    (cmp,) = check_parity({"score": ref}, {"score": cand}, ParityTolerance(atol=1e-4))

    assert cmp.cosine_min == -1.0 and cmp.mismatched == 0
