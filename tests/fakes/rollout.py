"""Test helpers for the deploy and canary stages: stand-in artifacts, a packaged repository, metrics.

:class:`InMemoryMetrics` is a real :class:`components.canary.metrics.MetricsSource` whose figures
a test sets per deployed model (dependency injection, not a patched SDK).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from components.canary.metrics import WindowStats


@dataclass
class StandInArtifact:
    """What a KFP artifact offers a stage: ``path``, ``uri`` and ``metadata``."""

    path: str
    uri: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class RecordedMetrics:
    """A KFP ``Metrics`` stand-in that keeps what was logged."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.values[name] = value


def make_packaged_repository(root: Path, model_name: str = "model") -> Path:
    """A small packaged Triton repository (``model_repository/``, ``manifest.json``) as packaging makes."""
    from components.package.manifest import write_manifest

    version = root / "model_repository" / model_name / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"onnx-bytes-" + model_name.encode())
    (root / "model_repository" / model_name / "config.pbtxt").write_text(
        f'name: "{model_name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
    )
    write_manifest(root)
    return root


def write_eval_data(path: Path, samples: int = 4) -> Path:
    """A digits-shaped evaluation ``.npz`` (input (N,1,8,8) float32 and labels)."""
    rng = np.random.default_rng(0)
    np.savez(
        path,
        input=rng.random((samples, 1, 8, 8), dtype=np.float32),
        labels=np.arange(samples, dtype=np.int64) % 10,
    )
    return path


class InMemoryMetrics:
    """Per-deployed-model figures set by the test; records every query.

    Args:
        stats: The figures of a deployed model id, or a function of it (e.g. by role).
        default: The figures of any other deployed model.
    """

    def __init__(
        self,
        stats: dict[str, WindowStats] | Callable[[str], WindowStats] | None = None,
        default: WindowStats | None = None,
    ) -> None:
        self.stats = stats or {}
        self.default = (
            default if default is not None else WindowStats(requests=1000, errors=1, p99_latency_ms=40.0)
        )
        self.queries: list[tuple[str, str, datetime, datetime]] = []

    def window_stats(
        self, endpoint_id: str, deployed_model_id: str, start: datetime, end: datetime
    ) -> WindowStats:
        self.queries.append((endpoint_id, deployed_model_id, start, end))
        if callable(self.stats):
            return self.stats(deployed_model_id)
        return self.stats.get(deployed_model_id, self.default)


HEALTHY = WindowStats(requests=1000, errors=1, p99_latency_ms=40.0)
"""A deployed model doing well: 0.1% errors, 40 ms p99."""
FAILING = WindowStats(requests=1000, errors=200, p99_latency_ms=45.0)
"""A deployed model answering 20% errors."""
NO_DATA = WindowStats()
"""A window without a single request."""


PROJECT = "vxdeploy-test"
ARTIFACT_URI = "gs://vxdeploy-test/pipeline-root/run/package/triton_repository"


class RolloutHarness:
    """Runs the deploy stage, the canary stage and the exit handler against a :class:`FakeVertex`.

    Args:
        fake: The running Vertex AI fake.
        root: A scratch folder.
        deployment: Overrides of the deployment section.
        canary: Overrides of the canary section.
    """

    def __init__(
        self,
        fake: Any,
        root: Path,
        deployment: dict[str, Any] | None = None,
        canary: dict[str, Any] | None = None,
    ) -> None:
        self.fake = fake
        self.root = root
        self.model = {"name": "model"}
        self.deployment: dict[str, Any] = {
            "enabled": True,
            "project": PROJECT,
            "api_endpoint": fake.address,
            "endpoint": "vxdeploy-endpoint",
            "max_poll_interval_s": 0.05,
            "operation_timeout_s": 30,
            **(deployment or {}),
        }
        self.canary: dict[str, Any] = {"interval_s": 0, "lease_ttl_s": 600, **(canary or {})}
        self.repo = make_packaged_repository(root / "triton_repository")
        self.eval_data = StandInArtifact(str(write_eval_data(root / "eval.npz")))
        self.repository = StandInArtifact(str(self.repo), ARTIFACT_URI, {})
        self._calls = 0

    def _dir(self, what: str) -> Path:
        self._calls += 1
        d = self.root / f"{self._calls:02d}-{what}"
        d.mkdir(parents=True)
        return d

    def deploy(
        self,
        run_id: str,
        *,
        gcp_resources: Path | None = None,
        storage: Any = None,
        source_labels: dict[str, str] | None = None,
    ) -> DeployRun:
        """The deploy stage, as the component calls it."""
        from components.deploy import stage

        d = self._dir("deploy")
        source_model = StandInArtifact(
            str(d / "source_model"), metadata={"source_labels": source_labels or {}}
        )
        vertex_model = StandInArtifact(str(d / "vertex_model"))
        vertex_endpoint = StandInArtifact(str(d / "vertex_endpoint"))
        report = StandInArtifact(str(d / "report.json"))
        resources = gcp_resources or self.root / f"gcp_resources-{run_id}.json"
        outputs = stage.run(
            self.repository,
            source_model,
            self.model,
            self.deployment,
            self.canary,
            run_id,
            vertex_model,
            vertex_endpoint,
            str(resources),
            report,
            storage=storage,
        )
        return DeployRun(
            outputs.deployed_model_id, vertex_model, vertex_endpoint, resources, _read(report.path)
        )

    def run_canary(
        self, run_id: str, deployed: DeployRun, metrics: Any, sleep: Callable[[float], None] = lambda _s: None
    ) -> CanaryRun:
        """The canary stage, as the component calls it (``metrics`` None: Cloud Monitoring; no real sleep)."""
        from components.canary import stage

        d = self._dir("canary")
        recorded = RecordedMetrics()
        table = StandInArtifact(str(d / "table.md"))
        report = StandInArtifact(str(d / "report.json"))
        error: Exception | None = None
        try:
            stage.run(
                deployed.vertex_endpoint,
                deployed.vertex_model,
                self.eval_data,
                deployed.deployed_model_id,
                self.deployment,
                self.canary,
                run_id,
                recorded,
                table,
                report,
                metrics_source=metrics,
                sleep=sleep,
            )
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            error = exc
        report_data = _read(report.path) if Path(report.path).is_file() else {}
        table_text = Path(table.path).read_text() if Path(table.path).is_file() else ""
        return CanaryRun(report_data, recorded.values, table_text, error)

    def rollback(self, run_id: str, state: str = "FAILED") -> dict[str, Any]:
        """The exit handler with a final pipeline state."""
        from components.canary import stage

        report = StandInArtifact(str(self._dir("rollback") / "report.json"))
        stage.run_rollback({"state": state}, self.deployment, run_id, report)
        return _read(report.path)


@dataclass
class DeployRun:
    deployed_model_id: str
    vertex_model: StandInArtifact
    vertex_endpoint: StandInArtifact
    gcp_resources: Path
    report: dict[str, Any]

    @property
    def endpoint_id(self) -> str:
        return str(self.vertex_endpoint.metadata["endpointId"])


@dataclass
class CanaryRun:
    report: dict[str, Any]
    metrics: dict[str, float]
    table: str
    error: Exception | None


def _read(path: str | Path) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data
