"""Per-deployed-model serving figures for canary analysis, read from Cloud Monitoring.

Vertex AI writes online-prediction metrics on the ``aiplatform.googleapis.com/Endpoint``
resource, labelled with the deployed model: ``response_count`` (every answer, by response
code), ``error_count`` and ``prediction_latencies`` (a distribution in milliseconds). A
:class:`MetricsSource` turns one window of them into :class:`WindowStats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from vxdeploy.components.cloud.monitoring import metric_client
from vxdeploy.components.cloud.retry import RetryPolicy

RESOURCE_TYPE = "aiplatform.googleapis.com/Endpoint"
RESPONSE_COUNT = "aiplatform.googleapis.com/prediction/online/response_count"
ERROR_COUNT = "aiplatform.googleapis.com/prediction/online/error_count"
PREDICTION_LATENCIES = "aiplatform.googleapis.com/prediction/online/prediction_latencies"


@dataclass(frozen=True)
class WindowStats:
    """What one deployed model served in one window.

    Attributes:
        requests: Responses counted (``response_count``).
        errors: Errors counted (``error_count``).
        p99_latency_ms: 99th percentile of ``prediction_latencies``; None without latency data.
        note: Why figures are missing (a failed query), for the report.
        generation: The deployed model is a generation model: the generation checks apply.
        output_agreement: Fraction of eval images it captioned as the reference does (None: not
            measured, see ``agreement_expected``).
        agreement_expected: A reference exists, so a missing agreement is missing data.
        ttft_p95_ms: 95th percentile of time to first token.
        tokens_per_s: Median decode speed (tokens after the first, per second, per stream).
        generation_source: Where the TTFT / tokens-per-second figures come from.
    """

    requests: int = 0
    errors: int = 0
    p99_latency_ms: float | None = None
    note: str = ""
    generation: bool = False
    output_agreement: float | None = None
    agreement_expected: bool = False
    ttft_p95_ms: float | None = None
    tokens_per_s: float | None = None
    generation_source: str = ""

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99_latency_ms": self.p99_latency_ms,
            **({"note": self.note} if self.note else {}),
            **(
                {
                    "output_agreement": self.output_agreement,
                    "ttft_p95_ms": self.ttft_p95_ms,
                    "tokens_per_s": self.tokens_per_s,
                    "generation_source": self.generation_source,
                }
                if self.generation
                else {}
            ),
        }


class MetricsSource(Protocol):
    """Where canary analysis reads serving figures from."""

    def window_stats(
        self, endpoint_id: str, deployed_model_id: str, start: datetime, end: datetime
    ) -> WindowStats:
        """Requests, errors and p99 latency of one deployed model between ``start`` and ``end``."""
        ...


def bucket_bounds(options: Any, count: int) -> list[float]:
    """Upper bounds of the first ``count - 1`` buckets of a Cloud Monitoring ``BucketOptions``.

    The last bucket (overflow) has no upper bound; bucket 0 is the underflow bucket.
    """
    kind = options.WhichOneof("options")  # a google.api.Distribution.BucketOptions protobuf
    if kind == "linear_buckets":
        lin = options.linear_buckets
        return [lin.offset + lin.width * i for i in range(count - 1)]
    if kind == "exponential_buckets":
        exp = options.exponential_buckets
        return [exp.scale * exp.growth_factor**i for i in range(count - 1)]
    if kind == "explicit_buckets":
        return list(options.explicit_buckets.bounds)[: count - 1]
    raise ValueError("distribution without bucket options")


def percentile_from_buckets(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, interpolating linearly inside the bucket.

    ``bounds`` are the upper bounds of all but the overflow bucket; a quantile in the overflow
    bucket returns its lower bound (the largest value the histogram can vouch for).
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for i, c in enumerate(counts):
        if c and cumulative + c >= rank:
            lower = 0.0 if i == 0 else bounds[i - 1]
            if i >= len(bounds):
                return lower
            upper = bounds[i]
            return lower + (upper - lower) * max(0.0, rank - cumulative) / c
        cumulative += c
    return bounds[-1] if bounds else None


def merge_p99(distributions: Iterable[Any]) -> float | None:
    """p99 of the sum of ``Distribution`` values that share bucket options (else the worst p99)."""
    return merge_quantile(distributions, 0.99)


def merge_quantile(distributions: Iterable[Any], q: float) -> float | None:
    """The ``q`` quantile of the sum of ``Distribution`` values that share bucket options (else the worst)."""
    merged: dict[tuple[float, ...], list[int]] = {}
    for dist in distributions:
        counts = [int(c) for c in dist.bucket_counts]
        if not counts or sum(counts) == 0:
            continue
        bounds = tuple(bucket_bounds(dist.bucket_options, len(counts)))
        acc = merged.setdefault(bounds, [0] * len(counts))
        if len(acc) < len(counts):
            acc.extend([0] * (len(counts) - len(acc)))
        for i, c in enumerate(counts):
            acc[i] += c
    found = [p for b, c in merged.items() if (p := percentile_from_buckets(b, c, q)) is not None]
    return max(found) if found else None


class CloudMonitoringMetricsSource:
    """Reads the Vertex AI prediction metrics with ``MetricServiceClient.list_time_series``.

    Args:
        project: The project whose metrics to read.
        client: A ``monitoring_v3.MetricServiceClient``; default: one for ``api_endpoint``.
        api_endpoint: ``host:port`` override (a loopback fake is reached without TLS).
        retry: The retry policy of each query (default: the shared one).
    """

    def __init__(
        self, project: str, client: Any = None, api_endpoint: str = "", retry: RetryPolicy | None = None
    ) -> None:
        self.project = project
        self.client = client if client is not None else metric_client(api_endpoint)
        self.retry = retry or RetryPolicy()

    def _series(
        self, metric_type: str, endpoint_id: str, deployed_model_id: str, start: datetime, end: datetime
    ) -> list[Any]:
        from google.cloud import monitoring_v3

        filter_ = (
            f'metric.type = "{metric_type}" AND resource.type = "{RESOURCE_TYPE}" '
            f'AND resource.labels.endpoint_id = "{endpoint_id}" '
            f'AND metric.labels.deployed_model_id = "{deployed_model_id}"'
        )
        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{self.project}",
            filter=filter_,
            interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        # An idempotent read: retried on transient errors under the shared policy.
        return list(self.client.list_time_series(request=request, retry=self.retry.api_core()))

    def window_stats(
        self, endpoint_id: str, deployed_model_id: str, start: datetime, end: datetime
    ) -> WindowStats:
        requests = _sum_counts(self._series(RESPONSE_COUNT, endpoint_id, deployed_model_id, start, end))
        errors = _sum_counts(self._series(ERROR_COUNT, endpoint_id, deployed_model_id, start, end))
        latency_series = self._series(PREDICTION_LATENCIES, endpoint_id, deployed_model_id, start, end)
        # Vertex AI splits latency by latency_type (total, model, overhead); the canary cares about total.
        total = [s for s in latency_series if s.metric.labels.get("latency_type", "total") == "total"]
        p99 = merge_p99(p.value.distribution_value for s in total for p in s.points)
        return WindowStats(requests=requests, errors=errors, p99_latency_ms=p99)

    def generation_stats(
        self, endpoint_id: str, deployed_model_id: str, start: datetime, end: datetime
    ) -> tuple[float | None, float | None]:
        """(p95 time to first token in ms, median tokens/s) of one deployed model, or None each.

        Read from the custom generation metrics the serving side writes
        (:mod:`vxdeploy.components.monitoring.generation_metrics`); None where no series has data.
        """
        from google.cloud import monitoring_v3

        from vxdeploy.components.monitoring import generation_metrics as gm

        def quantile(metric_type: str, q: float) -> float | None:
            filter_ = (
                f'metric.type = "{metric_type}" AND resource.type = "{gm.RESOURCE_TYPE}" '
                f'AND metric.labels.endpoint_id = "{endpoint_id}" '
                f'AND metric.labels.deployed_model_id = "{deployed_model_id}"'
            )
            request = monitoring_v3.ListTimeSeriesRequest(
                name=f"projects/{self.project}",
                filter=filter_,
                interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
                view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
            )
            series = list(self.client.list_time_series(request=request, retry=self.retry.api_core()))
            return merge_quantile((p.value.distribution_value for s in series for p in s.points), q)

        return quantile(gm.TIME_TO_FIRST_TOKEN, 0.95), quantile(gm.TOKENS_PER_SECOND, 0.5)


def _sum_counts(series: Iterable[Any]) -> int:
    total = 0.0
    for s in series:
        for point in s.points:
            value = point.value
            which = type(value).pb(value).WhichOneof("value")
            if which == "int64_value":
                total += value.int64_value
            elif which == "double_value":
                total += value.double_value
    return int(math.floor(total + 0.5))


def combine(stats: Sequence[WindowStats]) -> WindowStats:
    """Several deployed models as one: counts add up; the p99 of the busiest one stands for all."""
    if not stats:
        return WindowStats()
    busiest = max(stats, key=lambda s: s.requests)
    notes = "; ".join(s.note for s in stats if s.note)
    agreements = [s.output_agreement for s in stats if s.output_agreement is not None]
    return WindowStats(
        requests=sum(s.requests for s in stats),
        errors=sum(s.errors for s in stats),
        p99_latency_ms=busiest.p99_latency_ms,
        note=notes,
        generation=any(s.generation for s in stats),
        # Several baselines agree with the reference as the worst of them does.
        output_agreement=min(agreements) if agreements else None,
        agreement_expected=any(s.agreement_expected for s in stats),
        ttft_p95_ms=busiest.ttft_p95_ms,
        tokens_per_s=busiest.tokens_per_s,
        generation_source=busiest.generation_source,
    )


__all__ = [
    "ERROR_COUNT",
    "PREDICTION_LATENCIES",
    "RESOURCE_TYPE",
    "RESPONSE_COUNT",
    "CloudMonitoringMetricsSource",
    "MetricsSource",
    "WindowStats",
    "combine",
    "merge_p99",
    "merge_quantile",
    "metric_client",
    "percentile_from_buckets",
]
