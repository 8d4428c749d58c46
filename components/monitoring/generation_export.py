"""The served generator's periodic export of its generation metrics to Cloud Monitoring.

The BLS generator (``components/package/triton_models/generator.py``) measures each generation it
streams (time to first token, tokens/s, whole-generation time) and exposes them as Triton custom
metrics on the metrics port. Vertex AI does not scrape Triton's metrics, so on Vertex AI the
generator also runs one :class:`GenerationMetricsExporter`: a daemon thread that, every
``interval_s`` (60 s: one point per series per minute is what Cloud Monitoring accepts), writes the
interval's samples with :func:`~vxdeploy.components.monitoring.generation_metrics.write_generation_metrics`.

It must never break serving: :meth:`GenerationMetricsExporter.record` only appends to a bounded
buffer under a lock (requests never wait on Cloud Monitoring); a failed write is logged and counted
(:attr:`GenerationMetricsExporter.errors`) and its samples go into the next interval's write; a
buffer that outgrows ``max_samples`` drops its oldest samples (counted in ``dropped``). Nothing here
imports ``google-cloud-monitoring`` until the first write, so a server without it still serves.

Where it writes comes from the serving container's environment (:func:`export_target`): Vertex AI
sets ``AIP_MODE=PREDICTION``, ``AIP_ENDPOINT_ID``, ``AIP_DEPLOYED_MODEL_ID`` and
``AIP_PROJECT_NUMBER`` in every serving container, but not the region, so the package stage puts
``VXDEPLOY_GENERATION_METRICS=cloud_monitoring``, the project id and the region into the container
spec's ``env`` (:func:`container_env`). The replica is the pod's ``HOSTNAME``. The serving
container's service account needs ``roles/monitoring.metricWriter``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from vxdeploy.components.monitoring.generation_metrics import GenerationSamples, write_generation_metrics
from vxdeploy.components.monitoring.vertex_metrics import EndpointRef

LOG = logging.getLogger(__name__)

EXPORT_ENV = "VXDEPLOY_GENERATION_METRICS"
"""``cloud_monitoring`` turns the export on (where Vertex AI's ids are set); anything else leaves it off."""
EXPORT_ON = "cloud_monitoring"
PROJECT_ENV = "VXDEPLOY_GENERATION_METRICS_PROJECT"
"""The project id the metrics go to (default: ``AIP_PROJECT_NUMBER``)."""
LOCATION_ENV = "VXDEPLOY_GENERATION_METRICS_LOCATION"
"""The endpoint's region: the ``location`` label the alert policies and dashboards filter on."""
INTERVAL_ENV = "VXDEPLOY_GENERATION_METRICS_INTERVAL_S"
API_ENDPOINT_ENV = "VXDEPLOY_MONITORING_API_ENDPOINT"
"""A Cloud Monitoring endpoint override (``host:port``; loopback: a fake, no TLS). Default: Google's."""
DEFAULT_INTERVAL_S = 60.0
_MIN_GAP = timedelta(milliseconds=1)
"""A new interval starts at least 1 ms after the previous one ended (Cloud Monitoring's rule)."""


@dataclass(frozen=True)
class ExportTarget:
    """Where and how often one replica writes its generation metrics."""

    endpoint: EndpointRef
    deployed_model_id: str
    replica: str
    interval_s: float = DEFAULT_INTERVAL_S
    api_endpoint: str = ""


def export_target(env: Mapping[str, str] | None = None) -> tuple[ExportTarget | None, str]:
    """The export target from a serving container's environment, or None and why it stays off.

    Args:
        env: The environment (default ``os.environ``).
    """
    env = os.environ if env is None else env
    if env.get(EXPORT_ENV, "") != EXPORT_ON:
        return None, f"{EXPORT_ENV} is not {EXPORT_ON!r} (the package stage sets it for Vertex AI)"
    if env.get("AIP_MODE") != "PREDICTION":
        return None, "not serving on Vertex AI (AIP_MODE is not PREDICTION)"
    endpoint_id, deployed = env.get("AIP_ENDPOINT_ID", ""), env.get("AIP_DEPLOYED_MODEL_ID", "")
    project = env.get(PROJECT_ENV) or env.get("AIP_PROJECT_NUMBER", "")
    location = env.get(LOCATION_ENV, "")
    missing = [
        name
        for name, value in (
            ("AIP_ENDPOINT_ID", endpoint_id),
            ("AIP_DEPLOYED_MODEL_ID", deployed),
            (f"{PROJECT_ENV} or AIP_PROJECT_NUMBER", project),
            (LOCATION_ENV, location),
        )
        if not value
    ]
    if missing:
        return None, "generation metrics export off: " + ", ".join(missing) + " not set"
    try:
        interval = float(env.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S)
    except ValueError:
        return None, f"{INTERVAL_ENV}={env.get(INTERVAL_ENV)!r} is not a number of seconds"
    if interval <= 0:
        return None, f"{INTERVAL_ENV}={interval:g}: the export needs a positive interval"
    target = ExportTarget(
        endpoint=EndpointRef(project, location, endpoint_id),
        deployed_model_id=deployed,
        replica=env.get("HOSTNAME", "") or "0",
        interval_s=interval,
        api_endpoint=env.get(API_ENDPOINT_ENV, ""),
    )
    return target, ""


def container_env(project: str, location: str) -> list[dict[str, str]]:
    """The serving container's ``env`` entries that turn the export on (``ModelContainerSpec.env``)."""
    if not location:
        return []
    env = [{"name": EXPORT_ENV, "value": EXPORT_ON}, {"name": LOCATION_ENV, "value": location}]
    if project:
        env.append({"name": PROJECT_ENV, "value": project})
    return env


def _default_client(target: ExportTarget) -> Any:
    from vxdeploy.components.cloud.monitoring import metric_client

    return metric_client(target.api_endpoint)


class GenerationMetricsExporter:
    """Buffers one replica's generation samples and writes them to Cloud Monitoring each interval.

    Args:
        target: Where the metrics go.
        client_factory: Makes the ``MetricServiceClient`` (called once, on the first write).
        max_samples: Most samples held per metric between writes (oldest dropped beyond it).
        timeout_s: Deadline of one ``CreateTimeSeries`` call.
        clock: The wall clock (UTC datetimes) the intervals are stamped with.
    """

    def __init__(
        self,
        target: ExportTarget,
        *,
        client_factory: Callable[[ExportTarget], Any] = _default_client,
        max_samples: int = 10_000,
        timeout_s: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.target = target
        self._client_factory = client_factory
        self._client: Any = None
        self._max = max_samples
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._ttft: list[float] = []
        self._rates: list[float] = []
        self._total: list[float] = []
        self._start = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        """Failed writes (each logged)."""
        self.written = 0
        """Time series written."""
        self.dropped = 0
        """Samples dropped because the buffer was full."""
        self.last_error = ""

    def record(self, ttft_ms: float, tokens_per_s: float | None, total_ms: float) -> None:
        """Add one generation's figures (``tokens_per_s`` None: a single token). Only takes a lock."""
        with self._lock:
            for values, value in (
                (self._ttft, ttft_ms),
                (self._rates, tokens_per_s),
                (self._total, total_ms),
            ):
                if value is None or value != value or value < 0:  # None, NaN, negative: not a sample
                    continue
                values.append(float(value))
                if len(values) > self._max:
                    del values[0]
                    self.dropped += 1

    def pending(self) -> int:
        """Generations buffered for the next write."""
        with self._lock:
            return len(self._total)

    def export_once(self) -> int:
        """Write the samples gathered since the last successful write; the series written (0 on error).

        A failure is logged and counted, and the samples stay for the next write.
        """
        with self._lock:
            samples = GenerationSamples(tuple(self._ttft), tuple(self._rates), tuple(self._total))
            self._ttft, self._rates, self._total = [], [], []
            start = self._start
        if not (samples.ttft_ms or samples.tokens_per_s or samples.total_ms):
            return 0
        end = max(self._clock(), start + _MIN_GAP)
        try:
            if self._client is None:
                self._client = self._client_factory(self.target)
            n = write_generation_metrics(
                self._client,
                self.target.endpoint,
                self.target.deployed_model_id,
                samples,
                start,
                end,
                replica=self.target.replica,
                timeout=self._timeout_s,
            )
        except Exception as exc:  # never let Cloud Monitoring break serving
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            LOG.warning("generation metrics export failed (%d so far): %s", self.errors, self.last_error)
            with self._lock:  # back in front of what arrived meanwhile, within the bound
                self._ttft = [*samples.ttft_ms, *self._ttft][-self._max :]
                self._rates = [*samples.tokens_per_s, *self._rates][-self._max :]
                self._total = [*samples.total_ms, *self._total][-self._max :]
            return 0
        with self._lock:
            self._start = end + _MIN_GAP
        self.written += n
        return n

    def start(self) -> GenerationMetricsExporter:
        """Write every ``interval_s`` on a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="generation-metrics-export", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.target.interval_s):
            self.export_once()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the thread and write what is left (best effort)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.export_once()


def start_exporter(env: Mapping[str, str] | None = None) -> tuple[GenerationMetricsExporter | None, str]:
    """The running exporter the environment asks for, or None and why not (what the generator calls)."""
    target, why = export_target(env)
    if target is None:
        return None, why
    began = time.monotonic()
    exporter = GenerationMetricsExporter(target).start()
    LOG.info(
        "generation metrics export to Cloud Monitoring every %.0f s for endpoint %s, deployed model %s "
        "(started in %.3f s)",
        target.interval_s,
        target.endpoint.resource_name,
        target.deployed_model_id,
        time.monotonic() - began,
    )
    return exporter, ""


__all__ = [
    "API_ENDPOINT_ENV",
    "EXPORT_ENV",
    "EXPORT_ON",
    "INTERVAL_ENV",
    "LOCATION_ENV",
    "PROJECT_ENV",
    "ExportTarget",
    "GenerationMetricsExporter",
    "container_env",
    "export_target",
    "start_exporter",
]
