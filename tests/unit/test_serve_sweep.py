"""The serving sweep's pieces without a Triton: the gain, the variants, settled statistics, server choice."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

from vxdeploy.components.common.config import DynamicBatchingConfig, TritonConfig
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package import triton_install
from vxdeploy.components.package.model_config import CONFIG_FILE, read_model_config
from vxdeploy.components.package.repository import MODEL_REPOSITORY_DIR, package_triton_repository
from vxdeploy.components.package.serve_check import ServeCheckResult, serve_copy, short_substitutions
from vxdeploy.components.package.serve_sweep import (
    StatisticsNotSettled,
    SweepPoint,
    add_sweep_variants,
    batching_gain,
    settled_counters,
)
from vxdeploy.components.package.triton_install import (
    PYTRITON_HOME_ENV,
    TRITON_ROOT_ENV,
    find_serve_check_server,
)
from vxdeploy.components.package.tritonserver import find_bundled_triton

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 4)),),
    outputs=(TensorSpec("output", "float32", ("batch", 2)),),
)


def _point(batching: str, clients: int, rps: float, p99: float) -> SweepPoint:
    return SweepPoint(
        batching=batching,
        concurrency=clients,
        requests=int(rps),
        measured=int(rps),
        errors=0,
        throughput_rps=rps,
        p50_ms=p99 / 3,
        p95_ms=p99 / 2,
        p99_ms=p99,
        executions=int(rps),
        avg_batch=1.0,
        queue_ms=0.0,
        compute_ms=1.0,
        statistics_requests=int(rps),
    )


def test_the_gain_compares_each_mode_at_its_best_within_the_same_p99_budget() -> None:
    points = [
        _point("off", 1, 1000, 1.2),
        _point("off", 16, 1200, 85.0),
        _point("off", 64, 900, 280.0),
        _point("on", 1, 300, 6.0),
        _point("on", 16, 1050, 56.0),
        _point("on", 64, 1400, 130.0),
    ]

    gain, basis = batching_gain(points)

    # At p99 <= 130 ms: on's best is 1400 (64 clients), off's best is 1200 (16 clients), not 900.
    assert gain == pytest.approx(1400 / 1200)
    assert "p99 budget of 130.00 ms" in basis and "off 1200 infer/s at 16 clients" in basis


def test_a_batching_loss_is_reported_as_a_ratio_below_one() -> None:
    points = [_point("off", 4, 1000, 5.0), _point("on", 4, 500, 5.0)]

    gain, _ = batching_gain(points)

    assert gain == pytest.approx(0.5)


def test_no_gain_without_both_modes() -> None:
    gain, basis = batching_gain([_point("on", 4, 500, 5.0)])

    assert gain is None and "both batching modes" in basis


def _repository(tmp_path: Path, triton: TritonConfig) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["output"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    onnx.save(model, str(tmp_path / "model.onnx"))
    package_triton_repository(
        tmp_path / "model.onnx",
        "onnxruntime_fp32",
        SIGNATURE,
        model_name="linear",
        triton=triton,
        instance_kind="KIND_GPU",
        out_dir=tmp_path / "repo",
    )
    return tmp_path / "repo" / MODEL_REPOSITORY_DIR


def test_sweep_variants_are_copies_with_batching_off_and_on_and_the_package_is_untouched(
    tmp_path: Path,
) -> None:
    triton = TritonConfig(
        response_cache=True,
        dynamic_batching=DynamicBatchingConfig(preferred_batch_sizes=[8], max_queue_delay_microseconds=500),
    )
    repo = _repository(tmp_path, triton)
    packaged = (repo / "linear" / CONFIG_FILE).read_bytes()

    variants = add_sweep_variants(repo, "linear", triton)

    assert variants == {"off": "linear__batching_off", "on": "linear__batching_on"}
    off, on = (read_model_config(repo / variants[m]) for m in ("off", "on"))
    assert (off.name, on.name) == ("linear__batching_off", "linear__batching_on")
    assert not off.HasField("dynamic_batching")
    assert list(on.dynamic_batching.preferred_batch_size) == [8]
    assert on.dynamic_batching.max_queue_delay_microseconds == 500
    assert not off.response_cache.enable and not on.response_cache.enable
    assert os.path.islink(repo / variants["on"] / "1" / "model.onnx")
    assert (repo / "linear" / CONFIG_FILE).read_bytes() == packaged


def test_a_model_that_cannot_batch_gets_no_variants(tmp_path: Path) -> None:
    triton = TritonConfig(max_batch_size=0)
    repo = _repository(tmp_path, triton)

    assert add_sweep_variants(repo, "linear", triton) == {}


def test_the_serving_image_server_gets_the_repository_byte_for_byte(tmp_path: Path) -> None:
    repo = _repository(tmp_path, TritonConfig())
    packaged = (repo / "linear" / CONFIG_FILE).read_bytes()

    image = serve_copy(
        repo, tmp_path / "image", gpu_available=True, backends=frozenset({"onnxruntime", "python"})
    )
    bundled = serve_copy(repo, tmp_path / "bundled", gpu_available=False)

    assert image == []
    assert (tmp_path / "image" / "linear" / CONFIG_FILE).read_bytes() == packaged
    assert short_substitutions(bundled) == [
        "onnxruntime_onnx -> python backend (ONNX Runtime) on CPU",
        "KIND_GPU -> KIND_CPU",
    ]


def test_the_verdict_states_the_substitutions() -> None:
    result = ServeCheckResult(
        model="m",
        requests=4,
        executions=1,
        inferences=4,
        cache_hits=0,
        p50_ms=1.0,
        p99_ms=2.0,
        throughput_rps=10.0,
        max_abs_diff=0.0,
        cosine=1.0,
        passed=True,
        reason="",
        substitutions=["m: KIND_GPU instances run as KIND_CPU (no GPU here)"],
    )

    assert result.verdict == "passed with substitutions: KIND_GPU -> KIND_CPU"
    result.substitutions = []
    result.server = "serving-image"
    assert result.verdict == "passed on the serving image Triton"


def test_the_serving_image_triton_is_chosen_and_never_swapped_for_the_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tritonserver"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").write_text("#!/bin/sh\n")
    (root / "bin" / "tritonserver").chmod(0o755)
    for backend in ("onnxruntime", "python", "tensorrt"):
        (root / "backends" / backend).mkdir(parents=True)
    monkeypatch.setenv(TRITON_ROOT_ENV, str(root))

    server, _ = find_serve_check_server()

    assert server is not None and server.production
    assert server.install.binary == root / "bin" / "tritonserver"
    assert server.install.backends == root / "backends"
    assert server.backends == {"onnxruntime", "python", "tensorrt"}

    # Without it (a laptop, kfp.local, which sets the task's environment too): the bundled
    # stand-in when installed, else None and how to get one.
    monkeypatch.setenv(TRITON_ROOT_ENV, str(tmp_path / "missing"))
    monkeypatch.setenv(PYTRITON_HOME_ENV, str(tmp_path / "no-pytriton"))
    server, reason = find_serve_check_server()
    if find_bundled_triton()[0] is not None:
        assert server is not None and server.origin == "bundled" and server.backends == {"python"}
    else:
        assert server is None
        assert (
            "missing/bin/tritonserver" in reason and "-m vxdeploy.components.package.triton_install" in reason
        )


def test_without_any_triton_the_reason_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRITON_ROOT_ENV, str(tmp_path / "missing"))
    monkeypatch.setenv(PYTRITON_HOME_ENV, str(tmp_path / "no-pytriton"))
    monkeypatch.setattr(triton_install, "find_bundled_triton", _nowhere)

    server, reason = find_serve_check_server()

    assert server is None
    assert "missing/bin/tritonserver is not an executable file" in reason
    assert (
        "-m vxdeploy.components.package.triton_install" in reason
        and "triton.serve_check: best_effort" in reason
    )


def _nowhere(package_name: str = "pytriton", search_path: Any = None) -> tuple[None, str]:
    return None, "not installed"


class _LaggingStatistics(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Triton's ModelStatistics RPC whose count reaches ``final`` only after ``lag`` reads."""

    def __init__(self, final: int, lag: int, stuck_at: int | None = None) -> None:
        self.final, self.lag, self.stuck_at, self.reads = final, lag, stuck_at, 0

    def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802 - the RPC's name
        self.reads += 1
        if self.stuck_at is not None:
            count = self.stuck_at
        else:
            count = self.final if self.reads > self.lag else self.final - (self.lag - self.reads + 1)
        stats = service_pb2.ModelStatistics(name=request.name, execution_count=count, inference_count=count)
        stats.inference_stats.success.count = count
        stats.inference_stats.queue.count = count
        stats.inference_stats.queue.ns = 1000 * count
        return service_pb2.ModelStatisticsResponse(model_stats=[stats])


@pytest.fixture
def statistics_server() -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(servicer: _LaggingStatistics) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(0)


def test_statistics_are_read_once_they_count_every_request_answered(statistics_server: Any) -> None:
    servicer = _LaggingStatistics(final=64, lag=3)
    url = statistics_server(servicer)

    counters = settled_counters(url, "m", expected_requests=64, timeout_s=5, poll_s=0.01)

    assert counters.success == 64 and counters.queue_ns == 64_000
    assert servicer.reads == 4  # 61, 62, 63 were read first: reading once would have counted 61


def test_statistics_that_never_reach_the_answers_are_an_error_naming_both_counts(
    statistics_server: Any,
) -> None:
    url = statistics_server(_LaggingStatistics(final=64, lag=0, stuck_at=59))

    with pytest.raises(StatisticsNotSettled, match="count 59 requests after 0.2 s; 64 were answered"):
        settled_counters(url, "m", expected_requests=64, timeout_s=0.2, poll_s=0.01)
