"""Generation metrics (time to first token, tokens per second): custom metrics the serving side writes.

Why custom metrics: Vertex AI writes only its own ``prediction/online/*`` metrics for a deployed
model (responses, errors, latency of the whole request, CPU/GPU, replicas), and its AI AutoMetrics
scrape of a container's Prometheus ``/metrics`` covers listed frameworks only (vLLM, ``vllm:``
metrics), not Triton's ``nv_*`` metrics. Triton's own time-to-first-response histogram is therefore
not in Cloud Monitoring. For a streamed generation the request latency Vertex AI records is the whole
stream, so TTFT and decode speed must be written by whoever sees the tokens arrive: the serving side
(the generator, per generation) or a prober that streams through the invoke route (the canary's).

The metrics are user-defined (``custom.googleapis.com/vxdeploy/generation/*``) distributions on the
``generic_task`` monitored resource (user-defined metrics cannot be written on Vertex AI's
``aiplatform.googleapis.com/Endpoint``): ``namespace`` = endpoint id, ``job`` = deployed model id,
``task_id`` = the replica. Each point holds one interval's generations and is written as CUMULATIVE
with a fresh start time (at least 1 ms after the previous point's end): Cloud Monitoring accepts
only GAUGE and CUMULATIVE for user-defined metrics (a DELTA write to a metric it must auto-create is
refused), and a cumulative series that restarts every point carries exactly DELTA's meaning; its
aligners (``ALIGN_DELTA``, ``ALIGN_PERCENTILE_*``) treat each start as a reset. The metric labels
repeat ``endpoint_id`` and ``deployed_model_id`` so filters, alert conditions and dashboards group
them exactly like Vertex AI's own metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vxdeploy.components.monitoring.vertex_metrics import EndpointRef

_PREFIX = "custom.googleapis.com/vxdeploy/generation/"
TIME_TO_FIRST_TOKEN = _PREFIX + "time_to_first_token"
"""Milliseconds from the request to the first generated token (encode + prefill + queueing)."""
TOKENS_PER_SECOND = _PREFIX + "tokens_per_second"
"""Decode speed of one generation: tokens after the first per second (per stream)."""
GENERATION_LATENCIES = _PREFIX + "generation_latencies"
"""Milliseconds of one whole generation, first byte of the request to the last token."""
METRIC_TYPES = (TIME_TO_FIRST_TOKEN, TOKENS_PER_SECOND, GENERATION_LATENCIES)
UNITS = {TIME_TO_FIRST_TOKEN: "ms", TOKENS_PER_SECOND: "1/s", GENERATION_LATENCIES: "ms"}
RESOURCE_TYPE = "generic_task"
"""A monitored resource user-defined metrics may be written on."""

# Exponential buckets 0.25 ms (or token/s) x 1.3^i: 60 buckets reach ~1.7e6, a TTFT of minutes or
# a decode speed of thousands of tokens per second both resolve to a few percent.
_SCALE = 0.25
_GROWTH = 1.3
_BUCKETS = 60


def generation_filter(metric_type: str, endpoint: EndpointRef, deployed_model_id: str = "") -> str:
    """A Cloud Monitoring filter for one generation metric of one endpoint (one deployed model when given)."""
    clauses = [
        f'metric.type = "{metric_type}"',
        f'resource.type = "{RESOURCE_TYPE}"',
        f'metric.labels.endpoint_id = "{endpoint.endpoint_id}"',
        f'resource.labels.location = "{endpoint.location}"',
    ]
    if deployed_model_id:
        clauses.append(f'metric.labels.deployed_model_id = "{deployed_model_id}"')
    return " AND ".join(clauses)


def distribution(samples: Sequence[float]) -> Any:
    """A ``google.api.Distribution`` of ``samples`` on the generation metrics' exponential buckets."""
    from google.api import distribution_pb2

    options = distribution_pb2.Distribution.BucketOptions(
        exponential_buckets=distribution_pb2.Distribution.BucketOptions.Exponential(
            num_finite_buckets=_BUCKETS, growth_factor=_GROWTH, scale=_SCALE
        )
    )
    counts = [0] * (_BUCKETS + 2)
    for v in samples:
        if v < _SCALE:
            counts[0] += 1
            continue
        i = int(math.floor(math.log(v / _SCALE) / math.log(_GROWTH))) + 1
        counts[min(i, len(counts) - 1)] += 1
    n = len(samples)
    mean = sum(samples) / n if n else 0.0
    return distribution_pb2.Distribution(
        count=n,
        mean=mean,
        sum_of_squared_deviation=sum((v - mean) ** 2 for v in samples),
        bucket_options=options,
        bucket_counts=counts,
    )


@dataclass(frozen=True)
class GenerationSamples:
    """What one replica measured over one interval: one value per generation.

    Attributes:
        ttft_ms: Time to first token of each generation.
        tokens_per_s: Decode speed of each generation (those with more than one token).
        total_ms: Whole-generation time of each generation.
    """

    ttft_ms: Sequence[float] = ()
    tokens_per_s: Sequence[float] = ()
    total_ms: Sequence[float] = ()


def generation_time_series(
    endpoint: EndpointRef,
    deployed_model_id: str,
    samples: GenerationSamples,
    start: datetime,
    end: datetime,
    *,
    replica: str = "0",
) -> list[Any]:
    """The ``monitoring_v3.TimeSeries`` (distributions, CUMULATIVE from ``start``) of one interval.

    Args:
        endpoint: The endpoint served.
        deployed_model_id: The deployed model that generated.
        samples: The interval's figures.
        start: Start of the interval (after the previous interval's end).
        end: End of the interval.
        replica: The replica (pod) that measured, ``task_id`` of the resource.
    """
    from google.api import metric_pb2
    from google.cloud import monitoring_v3

    series = []
    for metric_type, values in (
        (TIME_TO_FIRST_TOKEN, samples.ttft_ms),
        (TOKENS_PER_SECOND, samples.tokens_per_s),
        (GENERATION_LATENCIES, samples.total_ms),
    ):
        if not values:
            continue
        series.append(
            monitoring_v3.TimeSeries(
                metric={
                    "type": metric_type,
                    "labels": {"endpoint_id": endpoint.endpoint_id, "deployed_model_id": deployed_model_id},
                },
                resource={
                    "type": RESOURCE_TYPE,
                    "labels": {
                        "project_id": endpoint.project,
                        "location": endpoint.location,
                        "namespace": endpoint.endpoint_id,
                        "job": deployed_model_id,
                        "task_id": replica,
                    },
                },
                metric_kind=metric_pb2.MetricDescriptor.CUMULATIVE,
                value_type=metric_pb2.MetricDescriptor.DISTRIBUTION,
                unit=UNITS[metric_type],
                points=[
                    monitoring_v3.Point(
                        interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
                        value=monitoring_v3.TypedValue(distribution_value=distribution(list(values))),
                    )
                ],
            )
        )
    return series


def write_generation_metrics(
    client: Any,
    endpoint: EndpointRef,
    deployed_model_id: str,
    samples: GenerationSamples,
    start: datetime,
    end: datetime,
    *,
    replica: str = "0",
    project: str = "",
    timeout: float | None = None,
) -> int:
    """Write one interval's generation metrics with ``MetricServiceClient.create_time_series``.

    What the serving side calls (once a minute per replica is what Cloud Monitoring accepts for one
    series); ``client`` is a ``monitoring_v3.MetricServiceClient``. Returns the series written.
    ``timeout``: the call's deadline in seconds (None: the client's default).
    """
    series = generation_time_series(endpoint, deployed_model_id, samples, start, end, replica=replica)
    if series:
        extra = {} if timeout is None else {"timeout": timeout}
        client.create_time_series(name=f"projects/{project or endpoint.project}", time_series=series, **extra)
    return len(series)


__all__ = [
    "GENERATION_LATENCIES",
    "METRIC_TYPES",
    "RESOURCE_TYPE",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS_PER_SECOND",
    "GenerationSamples",
    "distribution",
    "generation_filter",
    "generation_time_series",
    "write_generation_metrics",
]
