"""The one accuracy gate: each output judged by its task's metric, against FP32 and its targets."""

from __future__ import annotations

import numpy as np
import pytest

from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.verify.accuracy import (
    OutputMetric,
    measure_accuracy,
    output_metrics,
    resolve_output_metrics,
    retrieval_agreement,
    targets_for,
)

RNG = np.random.default_rng(0)


def _signature(**outputs: tuple[int, ...]) -> ModelSignature:
    return ModelSignature(
        (TensorSpec("x", "float32", ("batch", 8)),),
        tuple(TensorSpec(n, "float32", ("batch", *shape)) for n, shape in outputs.items()),
    )


def test_embedding_is_judged_by_per_row_cosine_not_by_argmax() -> None:
    # The defect: argmax over 384 embedding dims compared with pair ids gave 0 % for every candidate.
    emb = RNG.standard_normal((64, 384)).astype(np.float32)
    noisy = emb + 0.01 * RNG.standard_normal(emb.shape).astype(np.float32)
    metrics = output_metrics(resolve_output_metrics(_signature(embedding=(384,)), "embedding", {}))

    result = measure_accuracy(
        {"embedding": emb}, {"embedding": noisy}, metrics=metrics, accuracy_budget=0.5, min_cosine=0.99
    )

    (out,) = result.outputs
    assert (out.task, out.metric) == ("embedding", "cosine") and out.drop_points is None
    assert result.within_budget and out.cosine_mean == pytest.approx(1.0, abs=1e-3)
    assert out.figures["retrieval_agreement_%"] == 100.0


def test_retrieval_agreement_falls_when_neighbours_change() -> None:
    emb = RNG.standard_normal((32, 16))

    shuffled = emb[RNG.permutation(32)]

    assert retrieval_agreement(emb, emb) == 100.0
    assert retrieval_agreement(emb, shuffled) < 50.0


def test_two_heads_are_each_judged_and_a_broken_regression_head_fails_alone() -> None:
    # The defect: only the first head was checked, and a 1-wide output's cosine is only its sign.
    logits = RNG.standard_normal((100, 4)).astype(np.float32)
    score = RNG.standard_normal((100, 1)).astype(np.float32)
    targets = {"class_logits": logits.argmax(1), "score": score + 0.1}
    signature = resolve_output_metrics(
        _signature(class_logits=(4,), score=(1,)), "classification", {}, ["class_logits", "score"]
    )
    metrics = output_metrics(signature)

    result = measure_accuracy(
        {"class_logits": logits, "score": score},
        {"class_logits": logits, "score": score * 1.5},  # same signs: a sign-only check would pass
        metrics=metrics,
        targets=targets,
        accuracy_budget=0.5,
        min_cosine=0.99,
    )

    by_name = {o.name: o for o in result.outputs}
    assert metrics == {
        "class_logits": OutputMetric("classification", "top1_accuracy"),
        "score": OutputMetric("regression", "mae"),
    }
    assert by_name["class_logits"].within_budget and by_name["class_logits"].drop_points == 0.0
    assert not by_name["score"].within_budget and by_name["score"].cosine_mean is None
    assert "'score'" in result.reason and "MAE vs targets" in result.reason
    assert not result.within_budget


def test_classification_without_labels_falls_back_to_agreement_and_says_so() -> None:
    logits = RNG.standard_normal((40, 3)).astype(np.float32)
    flipped = logits.copy()
    flipped[0] = -flipped[0]

    result = measure_accuracy(
        {"y": logits},
        {"y": flipped},
        metrics={"y": OutputMetric("classification", "top1_accuracy")},
        accuracy_budget=5.0,
        min_cosine=-1.0,
    )

    (out,) = result.outputs
    assert out.metric == "top1_agreement" and "no labels" in out.basis
    assert out.drop_points == pytest.approx(2.5)


def test_regression_without_targets_is_judged_against_fp32_spread() -> None:
    y = RNG.standard_normal((50, 2))

    result = measure_accuracy(
        {"y": y},
        {"y": y + 0.001},
        metrics={"y": OutputMetric("regression", "rmse")},
        accuracy_budget=0.5,
        min_cosine=0.99,
    )

    assert result.within_budget and "vs FP32" in result.outputs[0].basis


def test_metrics_naming_an_unknown_output_or_a_foreign_metric_are_refused() -> None:
    signature = _signature(logits=(4,))

    with pytest.raises(ConfigError, match=r"model\.metrics.*\['embedding'\].*\['logits'\]"):
        resolve_output_metrics(signature, "classification", {"embedding": {"task": "embedding"}})
    with pytest.raises(ConfigError, match=r"model\.metrics\.logits"):
        resolve_output_metrics(
            signature, "classification", {"logits": {"task": "regression", "metric": "cosine"}}
        )


def test_top1_accuracy_asked_for_without_labels_says_how_to_add_them() -> None:
    with pytest.raises(ConfigError, match="labels/logits"):
        resolve_output_metrics(
            _signature(logits=(4,)), "classification", {"logits": {"metric": "top1_accuracy"}}
        )


def test_plain_labels_belong_to_the_first_classification_output() -> None:
    metrics = {
        "score": OutputMetric("regression", "mae"),
        "logits": OutputMetric("classification", "top1_accuracy"),
    }
    labels = np.arange(5)

    targets = targets_for(metrics, {"score": np.zeros((5, 1))}, labels)

    assert sorted(targets) == ["logits", "score"] and targets["logits"] is not None
