"""The streamed-generation serve check's verdict: each way a served generator can be wrong fails it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from vxdeploy.components.common import builtin_vlm as vlm
from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.generation.serve_check import Streamed, judge_generations
from vxdeploy.components.package.serve_sweep import ModelCounters

SPEC = vlm.generation_spec()
REFERENCE = np.array([[3, 7, 2, 0], [3, 12, 2, 0]], dtype=np.int64)  # "digit three", "digit eight"


def _streamed(index: int, tokens: list[int], start: float = 0.0, **kw: Any) -> Streamed:
    return Streamed(
        index=index,
        tokens=tokens,
        sent_s=start,
        first_s=start + 0.010,
        last_s=start + 0.030,
        final_s=start + 0.031,
        responses=len(tokens),
        final=True,
        encode_ms=4.0,
        **kw,
    )


def _judge(first: list[Streamed] | None = None, hits: int = 1, **kw: Any) -> Any:
    first = first or [_streamed(0, [3, 7, 2]), _streamed(1, [3, 12, 2])]
    rounds = [_streamed(i % 2, list(first[i % 2].tokens), start=1.0 + i) for i in range(4)]
    repeat = [_streamed(0, [3, 7, 2], start=9.0), _streamed(0, [3, 7, 2], start=9.1)]
    before = ModelCounters(10, 0, 8, 8, 2, 0, 0, 0, 0)
    after = ModelCounters(12, 0, 9, 9, 2 + hits, 0, 0, 4_000_000, 0)
    args: dict[str, Any] = {
        "triton": TritonConfig(),
        "fp32": True,
        "references": ["digit three", "digit eight"],
        "in_process_tokens": REFERENCE,
        "substitutions": [],
        "server": "bundled",
        **kw,
    }
    return judge_generations("digits-vlm", first, rounds, repeat, [], before, after, REFERENCE, SPEC, **args)


def test_matching_streams_pass_with_their_figures() -> None:
    result = _judge()
    assert result.passed, result.reason
    assert result.agreement_reference == 1.0 and result.agreement_in_process == 1.0
    assert result.exact_match == 1.0
    assert result.ttft_ms == pytest.approx(10.0) and result.tokens_per_s == pytest.approx(100.0)
    assert result.encoder_compute_ms == pytest.approx(4.0 / 9) and result.repeat_hit
    assert result.sent == 8
    assert result.summary()["ttft_ms"] == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"first": [_streamed(0, [3, 7, 2]), _streamed(1, [3, 9, 2])]},
            "differ from the in-process generation",
        ),
        (
            {"first": [_streamed(0, [3, 7, 2]), replace(_streamed(1, [3, 12, 2]), final=False)]},
            "final response",
        ),
        (
            {"first": [_streamed(0, [3, 7, 2]), _streamed(1, [], error="boom")]},
            "failed (first: generation 1: boom",
        ),
        ({"hits": 0}, "did not hit the vision encoder's response cache"),
        (
            {"first": [_streamed(0, [3, 7, 2], text="digit two", text_sent=True), _streamed(1, [3, 12, 2])]},
            "streamed texts differ",
        ),
    ],
)
def test_each_fault_fails_the_check_and_says_why(change: dict[str, Any], reason: str) -> None:
    result = _judge(**change)
    assert not result.passed and reason in result.reason
    assert result.verdict == "failed"


def test_fp32_parts_must_match_the_pytorch_reference_and_reduced_precision_the_in_process_twin() -> None:
    other = np.array([[3, 7, 2, 0], [3, 9, 2, 0]], dtype=np.int64)
    served = [_streamed(0, [3, 7, 2]), _streamed(1, [3, 9, 2])]
    fp32 = _judge(first=served, in_process_tokens=other)
    assert not fp32.passed and "FP32 parts differ from the PyTorch reference" in fp32.reason
    int8 = _judge(first=served, in_process_tokens=other, fp32=False)
    assert int8.passed, int8.reason  # the INT8 encoder may change a caption; serving may not
    assert int8.agreement_reference == 0.5 and int8.exact_match == 0.5
    no_twin = _judge(first=served, in_process_tokens=None, fp32=False)
    assert not no_twin.passed and "serve_check_min_cosine" in no_twin.reason
