"""Start the cloud fakes on loopback so ``vxdeploy run --local`` can drive a whole rollout offline.

Starts the Vertex AI fake (REST), a Cloud Storage emulator (the staging bucket), the Cloud
Monitoring fake (gRPC) fed by simulated traffic that follows each endpoint's traffic split, and
the dashboards fake (REST). An
endpoint ``vxdeploy-endpoint`` already serves a healthy baseline model, so the run's new version
goes through the canary steps; ``--canary-error-rate`` makes the new version fail its analysis.

Usage::

    python -m tests.fakes.serve_fakes [--canary-error-rate 0.2] [--config-out fakes.yaml]

then, in another shell, the command it prints, e.g.::

    STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT vxdeploy run --local \\
        --api-endpoint http://127.0.0.1:PORT --config fakes.yaml
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.vertex import FakeVertex, ServingProfile
from vxdeploy.components.cloud.labels import MANAGED_BY_KEY, MANAGED_BY_VALUE

PROJECT = "vxdeploy-local"  # what `vxdeploy run --api-endpoint` uses when no project is configured
BUCKET = "vxdeploy-staging"
ENDPOINT = "vxdeploy-endpoint"


@dataclass
class RunningFakes:
    """Addresses of the running fakes and the config a run needs to use them."""

    vertex: FakeVertex
    vertex_address: str
    storage_address: str
    monitoring_address: str
    dashboards_address: str
    baseline_deployed_model: str
    config: dict[str, Any]

    def command(self, config_path: str) -> str:
        return (
            f"STORAGE_EMULATOR_HOST={self.storage_address} vxdeploy run --local "
            f"--api-endpoint {self.vertex_address} --config {config_path}"
        )


def run_config(storage: str, monitoring: str, dashboards: str, *, interval_s: float) -> dict[str, Any]:
    """The deployment and canary sections that point a run at the fakes (CPU serving, short steps)."""
    return {
        "deployment": {
            "enabled": True,
            "project": PROJECT,
            "endpoint": ENDPOINT,
            "staging_bucket": f"gs://{BUCKET}/vxdeploy",
            "machine_type": "n1-standard-4",
            "accelerator_type": "",
            "accelerator_count": 0,
            "max_poll_interval_s": 0.5,
        },
        "canary": {
            "interval_s": interval_s,
            "monitoring_endpoint": monitoring,
            "lease_ttl_s": 900,
            "undeploy_grace_s": interval_s,
        },
        "monitoring": {"monitoring_endpoint": monitoring, "dashboards_endpoint": dashboards},
    }


@contextmanager
def serving_fakes(
    *,
    canary_error_rate: float = 0.0,
    canary_latency_ms: float = 20.0,
    baseline_latency_ms: float = 20.0,
    fail_smoke: bool = False,
    seed_baseline: bool = True,
    interval_s: float = 3.0,
    requests_per_s: float = 200.0,
    vertex_port: int = 0,
    generation: bool = False,
    canary_wrong_captions: bool = False,
) -> Iterator[RunningFakes]:
    """Run every fake a local rollout needs; stop them all on exit.

    With ``generation`` the deployed models stream captions of the built-in digits-vlm (a rollout of
    ``builtin://digits-vlm``); ``canary_wrong_captions`` makes the new version caption each digit as
    the next one (no errors: only the caption check catches it).
    """
    from tests.fakes.dashboards import FakeDashboards
    from tests.fakes.gcs import gcs_emulator
    from tests.fakes.traffic import TrafficSimulator

    with ExitStack() as stack:
        gcs = stack.enter_context(gcs_emulator(bucket=BUCKET, project=PROJECT))
        vertex = FakeVertex(project=PROJECT, storage_host=gcs.url).start(vertex_port)
        stack.callback(vertex.stop)
        baseline_id = ""
        if seed_baseline:
            _, baseline_id = vertex.seed_serving_endpoint(
                ENDPOINT, labels={MANAGED_BY_KEY: MANAGED_BY_VALUE}, endpoint_id=ENDPOINT
            )

        servers = _caption_servers(stack, canary_wrong_captions) if generation else None

        def profile(dm: Any) -> ServingProfile:
            extra: dict[str, Any] = {}
            if servers is not None:
                good, canary = servers
                extra = {
                    "generator": good if dm.id == baseline_id else canary,
                    "ttft_ms": 40.0,
                    "tokens_per_s": 200.0,
                }
            if dm.id == baseline_id:
                return ServingProfile(latency_ms=baseline_latency_ms, **extra)
            return ServingProfile(
                fail_predictions=fail_smoke,
                error_rate=canary_error_rate,
                latency_ms=canary_latency_ms,
                **extra,
            )

        vertex.serving_profile = profile
        monitoring, sink = stack.enter_context(_monitoring_fake(PROJECT))
        dashboards = stack.enter_context(FakeDashboards()).address
        stack.enter_context(TrafficSimulator(vertex, sink, requests_per_s=requests_per_s))
        yield RunningFakes(
            vertex=vertex,
            vertex_address=vertex.address,
            storage_address=gcs.url,
            monitoring_address=monitoring,
            dashboards_address=dashboards,
            baseline_deployed_model=baseline_id,
            config=run_config(gcs.url, monitoring, dashboards, interval_s=interval_s),
        )


def _caption_servers(stack: ExitStack, canary_wrong: bool) -> tuple[Any, Any]:
    """(baseline, canary) caption servers on the built-in digits-vlm's ONNX parts."""
    import tempfile

    from tests.fakes.generation import CaptionServer
    from vxdeploy.components.common import builtin_vlm

    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vxdeploy-vlm-")))
    onnx = {p: path.with_suffix(".onnx") for p, path in builtin_vlm.write_digits_vlm(folder).items()}
    spec = builtin_vlm.generation_spec()
    return CaptionServer(onnx, spec), CaptionServer(onnx, spec, wrong_captions=canary_wrong)


@contextmanager
def _monitoring_fake(project: str) -> Iterator[tuple[str, Any]]:
    """The Cloud Monitoring gRPC fake, and a sink writing time series to it over gRPC."""
    from tests.fakes.monitoring import FakeMonitoring
    from tests.fakes.traffic import monitoring_sink

    with FakeMonitoring() as fake:
        yield fake.address, monitoring_sink(fake.address, project)


ROLLOUT_TEST_SETTINGS = (
    "selection.batch_sizes=[1, 8]",
    "selection.min_iterations=5",
    "selection.min_seconds=0.05",
    "selection.max_eval_samples=128",
    "compilation.candidates=[onnxruntime_fp32, onnxruntime_int8]",
    "triton.serve_check_sweep=[1, 16]",
    "triton.serve_check_sweep_window_s=0.5",
)
"""What a rollout test's run measures: enough to pick a candidate and pass the serve check, not
to time it (the rollout is what these tests check; selection's and the serve check's own tests
time at the defaults). AOT Inductor's CPU build is left out: tests/unit/test_aoti.py covers it."""


def run_local_rollout(fakes: RunningFakes, workdir: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """``vxdeploy run --local`` against ``fakes`` (config, API endpoint, GCS emulator): its rc and report.

    Sets ``STORAGE_EMULATOR_HOST`` for the run and restores it after. Small measurement settings
    keep a test's run short; ``extra`` adds arguments (e.g. ``--model builtin://digits-vlm``).
    """
    import json
    import os

    from vxdeploy.pipelines.cli import main as cli_main

    config = workdir / "fakes.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(fakes.config))
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = fakes.storage_address
    try:
        code = cli_main(
            [
                "run",
                "--local",
                "--api-endpoint",
                fakes.vertex_address,
                "--config",
                str(config),
                "--workdir",
                str(workdir / "run"),
                *(arg for setting in ROLLOUT_TEST_SETTINGS for arg in ("--set", setting)),
                *extra,
            ]
        )
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
    return code, json.loads((workdir / "run" / "report.json").read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.serve_fakes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--canary-error-rate", type=float, default=0.0, help="error rate of the new version (0..1)"
    )
    parser.add_argument(
        "--canary-latency-ms", type=float, default=20.0, help="typical latency of the new version"
    )
    parser.add_argument(
        "--baseline-latency-ms", type=float, default=20.0, help="typical latency of the baseline"
    )
    parser.add_argument(
        "--fail-smoke", action="store_true", help="the new version answers every request with 500"
    )
    parser.add_argument(
        "--empty", action="store_true", help="no serving baseline: the run is a first deployment"
    )
    parser.add_argument(
        "--generation", action="store_true", help="deployed models stream digits-vlm captions"
    )
    parser.add_argument(
        "--canary-wrong-captions", action="store_true", help="with --generation: the new version miscaptions"
    )
    parser.add_argument(
        "--interval-s", type=float, default=3.0, help="canary.interval_s written to the config"
    )
    parser.add_argument(
        "--vertex-port", type=int, default=0, help="port of the Vertex AI fake (0: any free one)"
    )
    parser.add_argument("--config-out", default="vxdeploy-fakes.yaml", help="where to write the run config")
    args = parser.parse_args(argv)
    with serving_fakes(
        canary_error_rate=args.canary_error_rate,
        canary_latency_ms=args.canary_latency_ms,
        baseline_latency_ms=args.baseline_latency_ms,
        fail_smoke=args.fail_smoke,
        seed_baseline=not args.empty,
        interval_s=args.interval_s,
        vertex_port=args.vertex_port,
        generation=args.generation,
        canary_wrong_captions=args.canary_wrong_captions,
    ) as fakes:
        config_path = Path(args.config_out)
        config_path.write_text(yaml.safe_dump(fakes.config, sort_keys=False))
        print(f"Vertex AI fake:        {fakes.vertex_address}")
        print(f"Cloud Storage fake:    {fakes.storage_address} (bucket {BUCKET})")
        print(f"Cloud Monitoring fake: {fakes.monitoring_address} (dashboards {fakes.dashboards_address})")
        if fakes.baseline_deployed_model:
            print(f"Endpoint {ENDPOINT!r} serves deployed model {fakes.baseline_deployed_model} at 100%")
        print(f"wrote {config_path}; in another shell run:\n  {fakes.command(str(config_path))}")
        print("Ctrl-C stops the fakes.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
