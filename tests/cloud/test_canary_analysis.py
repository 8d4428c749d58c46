"""Canary analysis: the checks on one window, and percentiles from Cloud Monitoring distributions."""

from __future__ import annotations

import pytest
from google.api import distribution_pb2

from tests.fakes.traffic import latency_distribution
from vxdeploy.components.canary.analysis import analyse
from vxdeploy.components.canary.metrics import WindowStats, merge_p99, percentile_from_buckets
from vxdeploy.components.common.config import CanaryConfig

LIMITS = CanaryConfig(
    max_error_rate=0.01, max_p99_latency_ms=200, max_error_rate_increase=0.005, max_latency_ratio=1.5
)
BASELINE = WindowStats(requests=900, errors=0, p99_latency_ms=50.0)


def failed(canary: WindowStats, baseline: WindowStats | None = BASELINE) -> list[str]:
    return [c.name for c in analyse(canary, baseline, LIMITS).checks if not c.passed]


def test_a_canary_like_its_baseline_passes() -> None:
    # Given canary figures within every limit / When analysed / Then nothing fails
    assert failed(WindowStats(requests=100, errors=0, p99_latency_ms=55.0)) == []


def test_no_requests_fails_even_without_a_baseline() -> None:
    # Given a window without requests / When analysed / Then the data check fails
    assert failed(WindowStats(), None) == ["canary_requests"]


def test_requests_without_latency_data_fail() -> None:
    # Given counts but no latency distribution / When analysed / Then the latency check fails for lack of data
    assert failed(WindowStats(requests=100, errors=0, p99_latency_ms=None)) == ["canary_p99_latency_ms"]


def test_error_rate_above_the_absolute_limit_fails() -> None:
    # Given 5% errors / When analysed / Then both the absolute and the relative error checks fail
    assert failed(WindowStats(requests=100, errors=5, p99_latency_ms=50.0)) == [
        "canary_error_rate",
        "error_rate_increase",
    ]


def test_error_rate_increase_over_the_baseline_fails_under_the_absolute_limit() -> None:
    # Given 0.9% errors against a clean baseline (limit 1%, increase limit 0.5 points)
    # When analysed / Then only the increase fails
    assert failed(WindowStats(requests=1000, errors=9, p99_latency_ms=50.0)) == ["error_rate_increase"]


def test_p99_above_the_absolute_limit_fails() -> None:
    # Given a p99 of 250 ms (limit 200), the baseline as slow / When analysed / Then the absolute check fails
    slow_baseline = WindowStats(requests=900, errors=0, p99_latency_ms=240.0)
    assert failed(WindowStats(requests=100, errors=0, p99_latency_ms=250.0), slow_baseline) == [
        "canary_p99_latency_ms"
    ]


def test_baseline_without_data_is_not_a_pass() -> None:
    # Given a healthy canary but a baseline that served nothing / When analysed / Then the comparison fails
    assert failed(WindowStats(requests=100, errors=0, p99_latency_ms=50.0), WindowStats()) == [
        "baseline_requests"
    ]


def test_percentile_interpolates_inside_the_bucket() -> None:
    # Given 100 values: 50 in (0,10], 49 in (10,20], 1 in (20,40]
    bounds, counts = [10.0, 20.0, 40.0], [50, 49, 1, 0]

    # When p99 is read / Then it is the top of the second bucket (rank 99 of 100)
    assert percentile_from_buckets(bounds, counts, 0.99) == pytest.approx(20.0)


def test_percentile_in_the_overflow_bucket_is_its_lower_bound() -> None:
    # Given everything above the last finite bound / When p99 is read / Then it is that bound
    assert percentile_from_buckets([10.0, 20.0], [0, 0, 5], 0.99) == 20.0


def test_p99_of_merged_distributions_matches_the_samples() -> None:
    # Given two points' latency distributions (exponential buckets, growth 1.25) of 1..100 ms and 101..200 ms
    first = latency_distribution([float(v) for v in range(1, 101)])
    second = latency_distribution([float(v) for v in range(101, 201)])

    # When merged into one p99
    p99 = merge_p99([first, second])

    # Then it lies within one bucket (25%) of the true p99 (198 ms)
    assert p99 is not None and 198 / 1.25 <= p99 <= 198 * 1.25


def test_empty_distributions_give_no_p99() -> None:
    # Given a distribution without counts / When merged / Then there is no p99 (no data)
    assert merge_p99([distribution_pb2.Distribution()]) is None
