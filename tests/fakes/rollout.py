"""Test helpers for the deploy and canary stages: stand-in artifacts, a packaged repository, metrics.

:class:`InMemoryMetrics` is a real :class:`vxdeploy.components.canary.metrics.MetricsSource` whose figures
a test sets per deployed model (dependency injection, not a patched SDK).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.canary.metrics import WindowStats


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
    from vxdeploy.components.package.manifest import write_manifest

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
        from vxdeploy.components.deploy import stage

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
        from vxdeploy.components.canary import stage

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
        from vxdeploy.components.canary import stage

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


# ----------------------------------------------------------------------------- fault matrix
ENDPOINT_NAME = "vxdeploy-endpoint"
MATRIX_STEPS = [25, 50, 100]


@dataclass
class Attempt:
    """One try of a rollout (deploy, then canary) by calling the plain functions."""

    decision: str = ""  # "promoted", "rolled_back" or "" when it raised
    error: BaseException | None = None
    canary_id: str = ""
    cleanup_error: str = ""

    @property
    def failed(self) -> bool:
        return self.decision != "promoted" or self.error is not None or bool(self.cleanup_error)


class FaultWorld:
    """A Vertex AI fake, a Cloud Monitoring fake and simulated traffic, for rollouts under injected faults.

    The deploy and canary steps and the exit handler are the plain functions, called directly with
    a fast retry policy (``deadline_s``), no real sleeps and tiny polling intervals.

    Args:
        root: A scratch folder.
        seed: Seed of the fakes (deployed model ids, simulated traffic).
        deadline_s: The retry deadline of one call.
        canary: Overrides of the canary section.
    """

    def __init__(self, root: Path, seed: int = 0, deadline_s: float = 0.4, **canary: Any) -> None:
        from tests.fakes.monitoring import FakeMonitoring
        from tests.fakes.traffic import TrafficSimulator, monitoring_sink
        from tests.fakes.vertex import FakeVertex
        from vxdeploy.components.cloud.retry import RetryPolicy
        from vxdeploy.components.common.config import CanaryConfig, DeploymentConfig, ModelConfig

        self.root = root
        self.vertex = FakeVertex(project=PROJECT, seed=seed).start()
        self.monitoring = FakeMonitoring().start()
        self.traffic = TrafficSimulator(
            self.vertex, monitoring_sink(self.monitoring.address, PROJECT), requests_per_tick=400, seed=seed
        )
        self.retry = RetryPolicy(deadline_s=deadline_s, initial_delay_s=0.005, max_delay_s=0.05)
        self.model_cfg = ModelConfig(name="model")
        self.deploy_cfg = DeploymentConfig(
            enabled=True,
            project=PROJECT,
            api_endpoint=self.vertex.address,
            endpoint=ENDPOINT_NAME,
            max_poll_interval_s=0.01,
            operation_timeout_s=5,
            retry_timeout_s=deadline_s,
        )
        self.canary_cfg = CanaryConfig(
            **{
                "steps": MATRIX_STEPS,
                "interval_s": 0,
                "lease_ttl_s": 600,
                "undeploy_grace_s": 0,
                "smoke_requests": 1,
                "monitoring_endpoint": self.monitoring.address,
                **canary,
            }
        )
        self.repo = make_packaged_repository(root / "triton_repository")
        self.samples = {"input": np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)}
        self.on_analysis: Callable[[int], None] = lambda _n: None
        self.analyses = 0
        self.sleeps: list[float] = []
        self.stage = ""  # "deploy" or "canary" while a rollout runs that step

    def close(self) -> None:
        self.vertex.stop()
        self.monitoring.stop()

    def api(self) -> Any:
        from vxdeploy.components.cloud.vertex import connect

        return connect(self.deploy_cfg, retry=self.retry)

    def _sleep(self, seconds: float) -> None:
        """The canary's wait before an analysis: one tick of traffic (and any faults due then)."""
        self.sleeps.append(seconds)
        self.analyses += 1
        self.on_analysis(self.analyses)
        self.traffic.tick()

    def rollout(self, run_id: str) -> Attempt:
        """Deploy, then the canary, as a run's two tasks; an error ends the try (as a failed task)."""
        from vxdeploy.components.canary.metrics import CloudMonitoringMetricsSource
        from vxdeploy.components.canary.rollout import run_canary
        from vxdeploy.components.deploy.deployment import deploy_to_endpoint

        attempt = Attempt()
        api = self.api()
        try:
            self.stage = "deploy"
            deployed = deploy_to_endpoint(
                self.repo,
                ARTIFACT_URI,
                {},
                self.model_cfg,
                self.deploy_cfg,
                self.canary_cfg,
                run_id,
                api=api,
                gcp_resources_path=self.root / f"gcp_resources-{run_id}.json",
            )
            attempt.canary_id = deployed.deployed_model_id
            self.stage = "canary"
            metrics = CloudMonitoringMetricsSource(
                PROJECT, api_endpoint=self.monitoring.address, retry=self.retry
            )
            result = run_canary(
                api,
                deployed.endpoint.name,
                deployed.deployed_model_id,
                deployed.version.versioned_name,
                self.deploy_cfg,
                self.canary_cfg,
                run_id,
                metrics=metrics,
                samples=self.samples,
                predict_path=deployed.container.predict_route,
                sleep=self._sleep,
            )
            attempt.decision = result.decision
            attempt.cleanup_error = result.cleanup_error
        except Exception as exc:  # noqa: BLE001 - a failed task; the scenario goes on to recover it
            attempt.error = exc
        finally:
            self.stage = ""
        return attempt

    def exit_handler(self, run_id: str, *, run_failed: bool = True, deadline_s: float = 3.0) -> Any:
        """The exit handler's plain function, as ``rollback_on_failure`` calls it."""
        from vxdeploy.components.canary.rollout import roll_back_failed_run

        return roll_back_failed_run(
            self.api(),
            self.endpoint_name,
            run_id,
            run_failed=run_failed,
            deploy_cfg=self.deploy_cfg,
            deadline_s=deadline_s,
            sleep=lambda _s: None,
        )

    @property
    def endpoint_name(self) -> str:
        return str(self.vertex.endpoint(ENDPOINT_NAME).name)

    def version_of_run(self, run_id: str) -> Any:
        from vxdeploy.components.cloud.labels import RUN_ID_KEY, label_value

        found = [v for v in self.vertex.model_versions() if v.labels.get(RUN_ID_KEY) == label_value(run_id)]
        return found


def rollout_invariant(world: FaultWorld, *, old_run: str, new_run: str, ttl_s: float) -> str:
    """Which version serves ("old" or "new") after checking the invariant; raises AssertionError if broken.

    Traffic is 100% on one deployed model, of the old version (before the commit) or the new one
    (after it); no duplicate models, versions, endpoints or deployed models; the rollout lease is
    released or expires within ``ttl_s``; the promoted aliases are on the version that serves.
    """
    import time as _time

    from vxdeploy.components.cloud.aliases import versioned_name
    from vxdeploy.components.cloud.lease import read_lease

    endpoints = [e for e in world.vertex.endpoints() if e.display_name == ENDPOINT_NAME]
    assert len(endpoints) == 1, f"{len(endpoints)} endpoints named {ENDPOINT_NAME}"
    endpoint = endpoints[0]
    split = {k: v for k, v in endpoint.traffic_split.items() if v > 0}
    assert list(split.values()) == [100], f"traffic split {split} is not 100% on one deployed model"
    serving_id = next(iter(split))
    by_id = {dm.id: dm for dm in endpoint.deployed_models}
    assert serving_id in by_id, f"{serving_id} takes traffic but is not deployed"
    old_versions, new_versions = world.version_of_run(old_run), world.version_of_run(new_run)
    assert len(old_versions) == 1 and len(new_versions) <= 1, (
        f"model versions per run: {old_run}={len(old_versions)}, {new_run}={len(new_versions)}"
    )
    models = {v.name for v in world.vertex.model_versions() if v.labels.get("managed-by") == "vxdeploy"}
    assert len(models) == 1, f"vxdeploy models {models}"
    serving_version = versioned_name(by_id[serving_id])
    old = f"{old_versions[0].name}@{old_versions[0].version_id}"
    new = f"{new_versions[0].name}@{new_versions[0].version_id}" if new_versions else ""
    assert serving_version in (old, new), f"{serving_version} serves, neither {old} nor {new}"
    copies = [versioned_name(dm) for dm in endpoint.deployed_models]
    assert len(copies) == len(set(copies)), f"a version is deployed twice: {copies}"
    lease = read_lease(endpoint)
    if lease is not None:
        left = lease.expires_at - _time.time()
        assert left <= ttl_s + 1, f"lease of {lease.holder} expires in {left:.0f} s > ttl {ttl_s:g} s"
    else:
        assert len(endpoint.deployed_models) == 1, (
            f"lease released but {len(endpoint.deployed_models)} models stay deployed: "
            f"{[dm.id for dm in endpoint.deployed_models]}"
        )
    holders = {
        a: f"{v.name}@{v.version_id}"
        for v in world.vertex.model_versions()
        if v.labels.get("managed-by") == "vxdeploy"
        for a in v.version_aliases
        if a in ("production", "default")
    }
    assert holders.get("production") == serving_version, f"aliases {holders}; serving {serving_version}"
    assert holders.get("default") == serving_version, f"aliases {holders}; serving {serving_version}"
    return "new" if serving_version == new else "old"
