"""Simulated prediction traffic: the Cloud Monitoring time series Vertex AI would write for it.

Every tick, requests are routed by each endpoint's current traffic split in a :class:`FakeVertex`;
each deployed model answers them as its :class:`ServingProfile` says (error rate, latency), and
the figures become ``aiplatform.googleapis.com/prediction/online/*`` time series on the
``aiplatform.googleapis.com/Endpoint`` resource, handed to a sink (a Cloud Monitoring fake).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.api import distribution_pb2, metric_pb2
from google.cloud import monitoring_v3

from tests.fakes.vertex import FakeVertex
from vxdeploy.components.canary.metrics import (
    ERROR_COUNT,
    PREDICTION_LATENCIES,
    RESOURCE_TYPE,
    RESPONSE_COUNT,
)

LATENCY_BUCKETS = distribution_pb2.Distribution.BucketOptions(
    exponential_buckets=distribution_pb2.Distribution.BucketOptions.Exponential(
        num_finite_buckets=40, growth_factor=1.25, scale=1.0
    )
)


def latency_distribution(samples_ms: Sequence[float]) -> distribution_pb2.Distribution:
    """A Cloud Monitoring distribution of latencies on exponential buckets (1 ms x 1.25^i)."""
    exp = LATENCY_BUCKETS.exponential_buckets
    counts = [0] * (exp.num_finite_buckets + 2)
    for v in samples_ms:
        if v < exp.scale:
            counts[0] += 1
            continue
        i = int(math.floor(math.log(v / exp.scale) / math.log(exp.growth_factor))) + 1
        counts[min(i, len(counts) - 1)] += 1
    n = len(samples_ms)
    mean = sum(samples_ms) / n if n else 0.0
    return distribution_pb2.Distribution(
        count=n,
        mean=mean,
        sum_of_squared_deviation=sum((v - mean) ** 2 for v in samples_ms),
        bucket_options=LATENCY_BUCKETS,
        bucket_counts=counts,
    )


def _series(
    metric_type: str,
    labels: dict[str, str],
    resource_labels: dict[str, str],
    start: datetime,
    end: datetime,
    value: monitoring_v3.TypedValue,
    value_type: Any,
) -> monitoring_v3.TimeSeries:
    return monitoring_v3.TimeSeries(
        metric={"type": metric_type, "labels": labels},
        resource={"type": RESOURCE_TYPE, "labels": resource_labels},
        metric_kind=metric_pb2.MetricDescriptor.DELTA,
        value_type=value_type,
        points=[
            monitoring_v3.Point(
                interval=monitoring_v3.TimeInterval(start_time=start, end_time=end), value=value
            )
        ],
    )


class TrafficSimulator:
    """Sends simulated traffic through the fake's traffic splits and reports it as time series.

    Args:
        vertex: The Vertex AI fake (its endpoints, splits and serving profiles).
        sink: Receives each tick's time series (e.g. a Cloud Monitoring fake's ``add``).
        requests_per_s: Load on each endpoint.
        tick_s: Seconds between ticks when running in the background.
        seed: Seed of the simulated errors and latencies.
        requests_per_tick: A fixed load per tick instead of ``requests_per_s`` (for tests that tick
            by hand, e.g. from the canary's ``sleep``).
    """

    def __init__(
        self,
        vertex: FakeVertex,
        sink: Callable[[list[monitoring_v3.TimeSeries]], None],
        *,
        requests_per_s: float = 200.0,
        tick_s: float = 0.25,
        seed: int = 0,
        requests_per_tick: int | None = None,
    ) -> None:
        self.vertex = vertex
        self.sink = sink
        self.requests_per_s = requests_per_s
        self.tick_s = tick_s
        self.requests_per_tick = requests_per_tick
        self._rng = random.Random(seed)
        self._last = datetime.now(UTC)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, end: datetime | None = None) -> list[monitoring_v3.TimeSeries]:
        """One interval of traffic, from the previous tick to ``end``; returns (and sinks) its series."""
        end = end or datetime.now(UTC)
        start, self._last = self._last, end
        seconds = max((end - start).total_seconds(), 0.0)
        out: list[monitoring_v3.TimeSeries] = []
        for endpoint in self.vertex.endpoints():
            split = {k: v for k, v in endpoint.traffic_split.items() if v > 0}
            if not split:
                continue
            parts = endpoint.name.split("/")
            resource_labels = {"resource_container": parts[1], "location": parts[3], "endpoint_id": parts[5]}
            for dm in endpoint.deployed_models:
                share = split.get(dm.id, 0)
                if not share:
                    continue
                out += self._model_series(dm, share, seconds, resource_labels, start, end)
        if out:
            self.sink(out)
        return out

    def _model_series(
        self,
        dm: Any,
        share: int,
        seconds: float,
        resource_labels: dict[str, str],
        start: datetime,
        end: datetime,
    ) -> list[monitoring_v3.TimeSeries]:
        profile = self.vertex.serving_profile(dm)
        load = self.requests_per_tick if self.requests_per_tick is not None else self.requests_per_s * seconds
        requests = int(round(load * share / 100))
        if requests == 0:
            return []
        errors = sum(1 for _ in range(requests) if self._rng.random() < profile.error_rate)
        latencies = [self._rng.lognormvariate(math.log(profile.latency_ms), 0.25) for _ in range(requests)]
        labels = {"deployed_model_id": str(dm.id)}
        kinds = metric_pb2.MetricDescriptor
        series = [
            _series(
                RESPONSE_COUNT,
                {**labels, "response_code": "200"},
                resource_labels,
                start,
                end,
                monitoring_v3.TypedValue(int64_value=requests - errors),
                kinds.INT64,
            ),
            _series(
                ERROR_COUNT,
                labels,
                resource_labels,
                start,
                end,
                monitoring_v3.TypedValue(int64_value=errors),
                kinds.INT64,
            ),
            _series(
                PREDICTION_LATENCIES,
                {**labels, "latency_type": "total"},
                resource_labels,
                start,
                end,
                monitoring_v3.TypedValue(distribution_value=latency_distribution(latencies)),
                kinds.DISTRIBUTION,
            ),
        ]
        if errors:
            series.append(
                _series(
                    RESPONSE_COUNT,
                    {**labels, "response_code": "500"},
                    resource_labels,
                    start,
                    end,
                    monitoring_v3.TypedValue(int64_value=errors),
                    kinds.INT64,
                )
            )
        if profile.generator is not None and profile.ttft_ms > 0:
            series += self._generation_series(dm, profile, requests - errors, resource_labels, start, end)
        return series

    def _generation_series(
        self,
        dm: Any,
        profile: Any,
        generations: int,
        resource_labels: dict[str, str],
        start: datetime,
        end: datetime,
    ) -> list[monitoring_v3.TimeSeries]:
        """The custom generation metrics a generator's serving side writes for its answered requests."""
        from vxdeploy.components.monitoring.generation_metrics import (
            GenerationSamples,
            generation_time_series,
        )
        from vxdeploy.components.monitoring.vertex_metrics import EndpointRef

        if generations <= 0:
            return []
        ttft = [self._rng.lognormvariate(math.log(profile.ttft_ms), 0.2) for _ in range(generations)]
        rates = (
            [self._rng.lognormvariate(math.log(profile.tokens_per_s), 0.1) for _ in range(generations)]
            if profile.tokens_per_s > 0
            else []
        )
        total = [t + 3e3 / r for t, r in zip(ttft, rates, strict=False)] if rates else []
        endpoint = EndpointRef(
            resource_labels["resource_container"], resource_labels["location"], resource_labels["endpoint_id"]
        )
        return generation_time_series(
            endpoint, str(dm.id), GenerationSamples(ttft, rates, total), start, end, replica="replica-0"
        )

    def start(self) -> TrafficSimulator:
        self._last = datetime.now(UTC)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="traffic-simulator", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TrafficSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def monitoring_sink(address: str, project: str) -> Callable[[list[monitoring_v3.TimeSeries]], None]:
    """A sink that writes series with ``CreateTimeSeries`` through the real client (200 per call)."""
    from vxdeploy.components.canary.metrics import metric_client

    client = metric_client(address)

    def write(series: list[monitoring_v3.TimeSeries]) -> None:
        for i in range(0, len(series), 200):
            client.create_time_series(name=f"projects/{project}", time_series=series[i : i + 200])

    return write
