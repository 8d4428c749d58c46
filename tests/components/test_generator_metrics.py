"""The served generator's own generation metrics, on the real bundled Triton's Prometheus port.

The packaged ``digits-vlm`` repository is served (ONNX parts as the serve check swaps them) with
Triton's metrics on; captions are streamed through gRPC, then ``/metrics`` is scraped: the
generator's histograms of time to first token, tokens/s and whole-generation time hold one
observation per generation, with values that agree with what the client measured.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.generation_support import digits_vlm_files, eval_npz, selected_model_dir, source_model_dir
from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.generation.serve_check import (
    _bundled_text_substitution,
    read_generator_metrics,
    stream_generations,
)
from vxdeploy.components.generation.serving import GENERATOR_HISTOGRAMS, package_generation_repository
from vxdeploy.components.generation.spec import GenerationSpec
from vxdeploy.components.package.serve_check import serve_copy
from vxdeploy.components.package.triton_install import ServeCheckServer
from vxdeploy.components.package.tritonserver import find_bundled_triton, free_port, running_triton

INSTALL, WHY_NOT = find_bundled_triton()
pytestmark = pytest.mark.skipif(INSTALL is None, reason=WHY_NOT)
MODEL = "digits-vlm"
TRITON = TritonConfig(
    max_batch_size=8, dynamic_batching={"preferred_batch_sizes": [8], "max_queue_delay_microseconds": 2000}
)
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> sample name -> [(labels, value)]."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if line.startswith("#") or m is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"] or ""))
        out.setdefault(m["name"], []).append((labels, float(m["value"])))
    return out


def one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    got = [v for lb, v in samples.get(name, []) if all(lb.get(k) == w for k, w in labels.items())]
    assert len(got) == 1, (name, labels, samples.get(name))
    return got[0]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The served copy of the packaged repository and eval images."""
    assert INSTALL is not None
    root = tmp_path_factory.mktemp("vlm-metrics")
    files = digits_vlm_files(root / "files")
    sel_dir, meta = selected_model_dir(files, root / "selected")
    spec = GenerationSpec.from_dict(meta["generation"])
    packaged = package_generation_repository(
        sel_dir,
        meta["parts"],
        spec,
        model_name=MODEL,
        triton=TRITON,
        instance_kind="KIND_CPU",
        out_dir=root / "repo",
    )
    repo = root / "served"
    serve_copy(packaged.repository.model_repository, repo, gpu_available=False)
    _bundled_text_substitution(repo, MODEL, ServeCheckServer(INSTALL, "bundled", frozenset({"python"})))
    return {
        "root": root,
        "served": repo,
        "images": {"images": np.load(eval_npz(root, 12))["images"]},
        "eval": root / "eval.npz",
        "selected": (sel_dir, meta),
        "source": source_model_dir(files, root / "source"),
    }


@pytest.fixture(scope="module")
def served(repository: dict[str, Any]) -> Iterator[dict[str, Any]]:
    port = free_port()
    metrics_args = [
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=false",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={port}",
    ]
    with running_triton(
        repository["served"],
        install=INSTALL,
        startup_timeout_s=120,
        cache_size_bytes=16 << 20,
        extra_args=metrics_args,
        workdir=repository["root"] / "srv",
    ) as running:
        yield {
            "url": running.grpc_url,
            "metrics": f"http://127.0.0.1:{port}/metrics",
            "images": repository["images"],
        }


def test_the_generator_exports_ttft_tokens_per_second_and_latency_per_generation(
    served: dict[str, Any],
) -> None:
    before = scrape(served["metrics"])
    assert "vxdeploy_generation_time_to_first_token_ms_count" in before  # registered at load
    label = {"model": MODEL, "version": "1"}
    count0 = one(before, "vxdeploy_generation_time_to_first_token_ms_count", **label)

    n = len(served["images"]["images"])
    got, _ = stream_generations(served["url"], MODEL, served["images"], list(range(n)), 2)
    assert all(g.final and not g.error for g in got)
    after = scrape(served["metrics"])

    assert one(after, "vxdeploy_generation_time_to_first_token_ms_count", **label) == count0 + n
    assert one(after, "vxdeploy_generation_latency_ms_count", **label) == count0 + n
    tokens = sum(len(g.tokens) for g in got)
    assert one(after, "vxdeploy_generation_tokens_total", **label) - one(
        before, "vxdeploy_generation_tokens_total", **label
    ) == float(tokens)

    # The server-side figures are real and bounded by what the client saw (its clock started earlier).
    ttft_sum = one(after, "vxdeploy_generation_time_to_first_token_ms_sum", **label) - one(
        before, "vxdeploy_generation_time_to_first_token_ms_sum", **label
    )
    total_sum = one(after, "vxdeploy_generation_latency_ms_sum", **label) - one(
        before, "vxdeploy_generation_latency_ms_sum", **label
    )
    client_ttft = sum(g.ttft_ms for g in got)
    client_total = sum(g.total_ms for g in got)
    assert 0 < ttft_sum <= client_ttft and ttft_sum < total_sum <= client_total
    multi = [g for g in got if len(g.tokens) > 1]
    rate_count = one(after, "vxdeploy_generation_tokens_per_second_count", **label) - one(
        before, "vxdeploy_generation_tokens_per_second_count", **label
    )
    assert multi and rate_count == len(multi)
    assert one(after, "vxdeploy_generation_tokens_per_second_sum", **label) > 0

    # The serve check's reader of the same families agrees.
    read = read_generator_metrics(served["metrics"], MODEL)
    assert read["generations"] == count0 + n
    assert read["ttft_ms"] == pytest.approx(
        one(after, "vxdeploy_generation_time_to_first_token_ms_sum", **label) / (count0 + n)
    )
    assert set(GENERATOR_HISTOGRAMS.values()) <= {k.removesuffix("_count") for k in after}

    # Histogram buckets are cumulative and end at +Inf = count.
    buckets = sorted(
        (float(lb["le"]), v)
        for lb, v in after["vxdeploy_generation_latency_ms_bucket"]
        if lb.get("model") == MODEL
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == (float("inf"), count0 + n)


def test_a_request_the_generator_rejects_is_counted_as_a_failure(served: dict[str, Any]) -> None:
    label = {"model": MODEL, "version": "1"}
    before = scrape(served["metrics"]).get("vxdeploy_generation_failures_total", [])
    failures0 = next((v for lb, v in before if lb.get("model") == MODEL), 0.0)
    bad = {"images_flat": np.zeros((1, 10), np.float32)}  # the generator's own check: 64 values per image
    got, _ = stream_generations(served["url"], MODEL, bad, [0], 1)
    assert "'images_flat' has 10 values" in got[0].error
    assert one(scrape(served["metrics"]), "vxdeploy_generation_failures_total", **label) == failures0 + 1


def test_on_vertex_the_served_generator_writes_its_metrics_to_cloud_monitoring(
    repository: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The container environment Vertex AI + the package stage give: the generator's thread exports."""
    from tests.fakes.monitoring import FakeMonitoring
    from vxdeploy.components.monitoring import generation_export as ge
    from vxdeploy.components.monitoring import generation_metrics as gm

    with FakeMonitoring() as fake:
        env = {
            "AIP_MODE": "PREDICTION",
            "AIP_ENDPOINT_ID": "4242",
            "AIP_DEPLOYED_MODEL_ID": "777",
            "AIP_PROJECT_NUMBER": "123456789",
            ge.API_ENDPOINT_ENV: fake.address,
            # Triton itself switches to its Vertex AI mode under AIP_MODE: the routes it serves then.
            "AIP_HTTP_PORT": str(free_port()),
            "AIP_PREDICT_ROUTE": "/v1/endpoints/4242/deployedModels/777:predict",
            "AIP_HEALTH_ROUTE": "/v1/endpoints/4242/deployedModels/777",
            ge.INTERVAL_ENV: "0.5",
        }
        env |= {e["name"]: e["value"] for e in ge.container_env("vx-project", "us-central1")}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with running_triton(
            repository["served"],
            install=INSTALL,
            startup_timeout_s=60,
            cache_size_bytes=16 << 20,
            # Its Vertex AI mode serves HTTP only unless gRPC is asked for (the check streams over gRPC).
            extra_args=[f"--vertex-ai-default-model={MODEL}", "--allow-grpc=true"],
            workdir=tmp_path / "srv",
        ) as running:
            n = 6
            got, _ = stream_generations(running.grpc_url, MODEL, repository["images"], list(range(n)), 1)
            assert all(g.final and not g.error for g in got)
            deadline = time.monotonic() + 30
            counted = 0
            while time.monotonic() < deadline:
                counted = sum(
                    p.value.distribution_value.count
                    for s in fake.time_series("vx-project")
                    if s.metric.type == gm.TIME_TO_FIRST_TOKEN
                    for p in s.points
                )
                if counted >= n:
                    break
                time.sleep(0.2)
            log = running.log_path.read_text(errors="replace")
        assert counted == n, log[-3000:]
        assert (
            "generation metrics export: on (projects/vx-project/locations/us-central1/endpoints/4242)" in log
        )
        series = [s for s in fake.time_series("vx-project") if s.metric.type == gm.GENERATION_LATENCIES]
        assert series and all(dict(s.metric.labels)["deployed_model_id"] == "777" for s in series)


def test_the_serve_check_prices_the_measured_levels_per_1000_generations(
    repository: dict[str, Any], tmp_path: Path
) -> None:
    """Stage report (summary + details), the check's summary and the run report show the cost."""
    from kfp import dsl

    from vxdeploy.components.common.config import DeploymentConfig, ServiceLevelConfig
    from vxdeploy.components.package.stage import run_package, run_serve_check
    from vxdeploy.components.report.build import build_report, render_markdown

    sel_dir, sel_meta = repository["selected"]
    src_dir, src_meta = repository["source"]
    repo = dsl.Model(name="triton_repository", uri=str(tmp_path / "repo"), metadata={})
    triton = TRITON.model_copy(update={"serve_check_requests": 12}).model_dump()
    deployment = DeploymentConfig(project="vx-project", location="us-central1").model_dump()
    run_package(
        dsl.Model(name="selected_model", uri=str(sel_dir), metadata=dict(sel_meta)),
        {"name": MODEL},
        triton,
        deployment,
        repo,
        dsl.Artifact(name="report", uri=str(tmp_path / "package.json"), metadata={}),
    )
    env = {e["name"]: e["value"] for e in repo.metadata["serving_container"]["env"]}
    assert env["VXDEPLOY_GENERATION_METRICS"] == "cloud_monitoring"
    assert env["VXDEPLOY_GENERATION_METRICS_LOCATION"] == "us-central1"
    assert env["VXDEPLOY_GENERATION_METRICS_PROJECT"] == "vx-project"

    # A loose whole-generation target this machine meets; a TTFT target nothing can meet.
    levels = ServiceLevelConfig(
        requests_per_second=40, generation_p50_ms=5000, generation_p95_ms=10000, ttft_p95_ms=0.001
    )
    summary = dsl.Markdown(name="summary", uri=str(tmp_path / "summary.md"), metadata={})
    run_serve_check(
        repo,
        dsl.Model(name="source_model", uri=str(src_dir), metadata=dict(src_meta)),
        dsl.Dataset(name="eval_data", uri=str(repository["eval"]), metadata={"samples": 12}),
        triton,
        dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={}),
        dsl.Artifact(name="report", uri=str(tmp_path / "check.json"), metadata={}),
        deployment=deployment,
        service_levels=levels.model_dump(),
        summary=summary,
    )
    report = json.loads((tmp_path / "check.json").read_text())
    s, details = report["summary"], report["details"]
    assert report["status"] == "succeeded", report["reason"]
    levels_c = [lv for lv in details["levels"] if isinstance(lv["concurrency"], int)]
    assert all(0 < lv["ttft_p50_ms"] <= lv["ttft_p95_ms"] for lv in levels_c)
    cost = details["generation_cost"]
    assert s["replicas"] == cost["replicas"] >= 1
    assert s["cost_per_1000_generations"] == cost["cost_per_1000_generations"] > 0
    # Replicas carry the target load at the operating point's measured generations/s.
    point = next(lv for lv in levels_c if lv["concurrency"] == cost["concurrency"])
    assert cost["replicas"] >= math.ceil(40 / point["generations_per_s"]) - 1
    assert s["missed_targets"] and "service_levels.ttft_p95_ms=0.001" in s["missed_targets"][0]
    assert "per 1,000 generations" in (tmp_path / "summary.md").read_text()
    # The check read the generator's own metrics back: every generation it streamed (+ the warm-up).
    assert s["server_generations"] == s["sent"] + 1
    assert 0 < s["server_ttft_ms"] < s["server_total_ms"] and s["server_tokens_per_s"] > 0
    assert (
        "The generator's own metrics (Triton custom metrics on the metrics port) counted"
        in (details["markdown"])
    )
    assert "USD per 1,000 generations" in details["markdown"]

    package = json.loads((tmp_path / "package.json").read_text())
    page = render_markdown(build_report({"package": package, "serve_check": report}, run_id="r"))
    assert "Cost of serving the generator:" in page and "per 1,000 generations" in page
    assert "TTFT p95 ms" in page
