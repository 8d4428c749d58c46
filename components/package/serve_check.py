"""Serve a packaged repository with a real Triton server and check its answers and its batching.

The bundled server (see :mod:`components.package.tritonserver`) has the Python backend only,
so the check serves a *copy* of the repository in which models the server cannot load
natively are swapped for vxdeploy's Python-backend model.py with the same config otherwise:
an ONNX model runs under ONNX Runtime inside Triton (``platform: onnxruntime_onnx`` becomes
``backend: python``), and ``KIND_GPU`` instances become ``KIND_CPU`` without a GPU. Every
swap is listed in the result. TensorRT engines and vLLM models cannot run here at all: the
check then reports why it did not run, never a pass.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from components.common.config import TritonConfig
from components.common.data import Dataset
from components.common.errors import CandidateUnavailable, ModelIntakeError
from components.common.signature import ModelSignature
from components.package.model_config import read_model_config, write_model_config
from components.package.repository import LAYOUTS, MODEL_REPOSITORY_DIR, write_python_model
from components.package.tritonserver import TritonInstall, find_bundled_triton, running_triton


class ServeCheckUnavailable(CandidateUnavailable):
    """The serve check cannot run here (no bundled Triton, or a model it cannot load); not a pass."""


@dataclass
class ServeCheckResult:
    """What the served repository answered, how fast, and how Triton batched the requests."""

    model: str
    requests: int
    executions: int
    inferences: int
    cache_hits: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    max_abs_diff: float
    cosine: float
    passed: bool
    reason: str
    substitutions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def batching_observed(self) -> bool:
        """Fewer executions than requests that reached the model (cache hits never do)."""
        return self.executions < self.requests - self.cache_hits

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "requests": self.requests,
            "executions": self.executions,
            "inferences": self.inferences,
            "cache_hits": self.cache_hits,
            "batching_observed": self.batching_observed,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "throughput_rps": round(self.throughput_rps, 1),
            "max_abs_diff": self.max_abs_diff,
            "cosine": self.cosine,
            "passed": self.passed,
        }


def serve_copy(model_repository: Path, dest: Path, *, gpu_available: bool) -> list[str]:
    """Copy ``model_repository`` to ``dest`` with the swaps the bundled server needs.

    Returns:
        One sentence per swap.

    Raises:
        ServeCheckUnavailable: for a model the bundled server cannot run in any form.
    """
    shutil.copytree(model_repository, dest)
    substitutions: list[str] = []
    for model_dir in sorted(p for p in dest.iterdir() if p.is_dir()):
        config = read_model_config(model_dir)
        if config.platform == "tensorrt_plan":
            raise ServeCheckUnavailable(
                f"model {config.name!r} is a TensorRT engine; the bundled tritonserver has no TensorRT "
                "backend (and engines need the GPU and TensorRT they were built with)"
            )
        if config.backend == "vllm":
            raise ServeCheckUnavailable(
                f"model {config.name!r} needs the vLLM backend, which the bundled server lacks"
            )
        if config.platform == "onnxruntime_onnx":
            layout = LAYOUTS["onnx"]
            config.ClearField("platform")
            config.backend = "python"
            config.parameters["runtime"].string_value = "onnxruntime"
            config.parameters["model_file"].string_value = layout.file_name
            for version_dir in (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
                write_python_model(version_dir)
            substitutions.append(
                f"{config.name}: platform onnxruntime_onnx served as backend python running ONNX Runtime "
                "(the bundled tritonserver has no onnxruntime backend); the rest of the config is unchanged"
            )
        if not gpu_available:
            for group in config.instance_group:
                if group.kind == mc.ModelInstanceGroup.KIND_GPU:
                    group.kind = mc.ModelInstanceGroup.KIND_CPU
                    substitutions.append(f"{config.name}: KIND_GPU instances run as KIND_CPU (no GPU here)")
        write_model_config(config, model_dir)
    return substitutions


def reference_outputs(
    model_file: Path, model_format: str, signature: ModelSignature, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The source model's outputs for ``inputs`` (PyTorch eager, or ONNX Runtime for ONNX sources)."""
    if model_format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        results = session.run(signature.output_names, {n: inputs[n] for n in signature.input_names})
        return {n: np.asarray(r) for n, r in zip(signature.output_names, results, strict=True)}
    import torch

    if model_format == "torch_export":
        module = torch.export.load(str(model_file)).module()
    elif model_format == "torchscript":
        module = torch.jit.load(str(model_file), map_location="cpu")
    else:
        raise ModelIntakeError(
            f"source_model format={model_format!r}: expected torch_export, torchscript or onnx"
        )
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in signature.input_names])
    outs = out if isinstance(out, (list, tuple)) else [out]
    return {n: o.detach().cpu().numpy() for n, o in zip(signature.output_names, outs, strict=True)}


@dataclass(frozen=True)
class _Answer:
    index: int
    outputs: dict[str, np.ndarray]
    latency_s: float
    error: str = ""


def _send(
    url: str,
    model: str,
    config: mc.ModelConfig,
    samples: Dataset,
    count: int,
    concurrency: int,
) -> tuple[list[_Answer], float]:
    """Send ``count`` one-sample requests, ``concurrency`` in flight; return answers and wall time."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    local = threading.local()
    clients: list[Any] = []
    lock = threading.Lock()
    output_names = [t.name for t in config.output]

    def client() -> Any:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
            # Connect before the first timed request, so latency excludes channel setup.
            local.client.is_model_ready(model)
            with lock:
                clients.append(local.client)
        return local.client

    def one(i: int) -> _Answer:
        k = i % len(samples)
        inputs = []
        for t in config.input:
            array = np.ascontiguousarray(samples.inputs[t.name][k : k + 1])
            item = grpcclient.InferInput(t.name, list(array.shape), _wire_dtype(t.data_type))
            item.set_data_from_numpy(array)
            inputs.append(item)
        start = time.perf_counter()
        try:
            result = client().infer(
                model, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in output_names]
            )
        except InferenceServerException as exc:
            return _Answer(i, {}, time.perf_counter() - start, str(exc))
        latency = time.perf_counter() - start
        return _Answer(i, {n: result.as_numpy(n) for n in output_names}, latency)

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            answers = list(pool.map(one, range(count)))
    finally:
        for c in clients:
            c.close()
    return answers, time.perf_counter() - start


def _wire_dtype(data_type: int) -> str:
    # TYPE_FP32 -> FP32; TYPE_STRING travels as BYTES.
    name = str(mc.DataType.Name(data_type)).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def _counts(url: str, model: str) -> tuple[int, int, int, int]:
    """(successful requests, executions, inferences, cache hits) so far."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    try:
        stats = c.get_inference_statistics(model).model_stats
    finally:
        c.close()
    s = stats[0]
    return (
        int(s.inference_stats.success.count),
        int(s.execution_count),
        int(s.inference_count),
        int(s.inference_stats.cache_hit.count),
    )


def check_served_repository(
    repository_root: str | Path,
    samples: Dataset,
    reference: Mapping[str, np.ndarray],
    *,
    triton: TritonConfig,
    model: str,
    fp32: bool,
    install: TritonInstall | None = None,
    gpu_available: bool | None = None,
) -> ServeCheckResult:
    """Serve the repository on loopback, send concurrent requests, compare and read the statistics.

    One untimed round of ``serve_check_concurrency`` requests goes first; the figures (and
    the statistics, read before and after) cover the ``serve_check_requests`` that follow.

    Args:
        repository_root: The packaged repository (``model_repository/`` inside).
        samples: Inputs to send, one sample per request, cycling.
        reference: The reference model's outputs for ``samples``, by output name.
        triton: Requests, concurrency, tolerances, startup timeout, response cache size.
        model: The model to query (the repository's default model).
        fp32: Whether to hold the answers to ``triton.serve_check_atol`` (reduced precision
            candidates are held to ``serve_check_min_cosine`` only).
        install: The Triton to run; default: the bundled one.
        gpu_available: Whether GPU instances may stay on the GPU; default: ``torch.cuda.is_available()``.

    Raises:
        ServeCheckUnavailable: when no Triton can run here, or the repository needs a backend it lacks.
        TritonStartError: when the server does not become ready (a model failed to load).
    """
    if install is None:
        install, reason = find_bundled_triton()
        if install is None:
            raise ServeCheckUnavailable(reason)
    if gpu_available is None:
        gpu_available = _cuda_available()
    with tempfile.TemporaryDirectory(prefix="vxdeploy-serve-check-") as tmp:
        served = Path(tmp) / MODEL_REPOSITORY_DIR
        substitutions = serve_copy(
            Path(repository_root) / MODEL_REPOSITORY_DIR, served, gpu_available=gpu_available
        )
        config = read_model_config(served / model)
        cache = triton.response_cache_mb * 1024 * 1024 if config.response_cache.enable else 0
        with running_triton(
            served,
            install=install,
            startup_timeout_s=triton.serve_check_startup_timeout_s,
            cache_size_bytes=cache,
            workdir=Path(tmp) / "server",
        ) as server:
            # One untimed round first: the client's threads and channels start cold, not the server.
            _send(
                server.grpc_url,
                model,
                config,
                samples,
                triton.serve_check_concurrency,
                triton.serve_check_concurrency,
            )
            before = _counts(server.grpc_url, model)
            answers, wall = _send(
                server.grpc_url,
                model,
                config,
                samples,
                triton.serve_check_requests,
                triton.serve_check_concurrency,
            )
            after = _counts(server.grpc_url, model)
    return _judge(model, answers, wall, before, after, reference, len(samples), triton, fp32, substitutions)


def _judge(
    model: str,
    answers: Sequence[_Answer],
    wall: float,
    before: tuple[int, int, int, int],
    after: tuple[int, int, int, int],
    reference: Mapping[str, np.ndarray],
    n_samples: int,
    triton: TritonConfig,
    fp32: bool,
    substitutions: list[str],
) -> ServeCheckResult:
    errors = [f"request {a.index}: {a.error}" for a in answers if a.error]
    got: list[np.ndarray] = []
    want: list[np.ndarray] = []
    for a in answers:
        if a.error:
            continue
        k = a.index % n_samples
        for name, value in a.outputs.items():
            got.append(value.astype(np.float64).ravel())
            want.append(np.asarray(reference[name][k : k + 1], dtype=np.float64).ravel())
    g = np.concatenate(got) if got else np.zeros(0)
    w = np.concatenate(want) if want else np.zeros(0)
    max_abs = float(np.max(np.abs(g - w))) if g.size else float("nan")
    denom = float(np.linalg.norm(g) * np.linalg.norm(w))
    cosine = float(g @ w / denom) if denom > 0 else (1.0 if g.size and np.array_equal(g, w) else 0.0)
    latencies_ms = np.array([a.latency_s * 1000 for a in answers if not a.error])
    reasons = []
    if errors:
        reasons.append(f"{len(errors)} of {len(answers)} requests failed (first: {errors[0]})")
    if g.size and cosine < triton.serve_check_min_cosine:
        reasons.append(f"cosine {cosine:.6f} < triton.serve_check_min_cosine {triton.serve_check_min_cosine}")
    if g.size and fp32 and max_abs > triton.serve_check_atol:
        reasons.append(f"max abs diff {max_abs:.3g} > triton.serve_check_atol {triton.serve_check_atol}")
    return ServeCheckResult(
        model=model,
        requests=after[0] - before[0],
        executions=after[1] - before[1],
        inferences=after[2] - before[2],
        cache_hits=after[3] - before[3],
        p50_ms=float(np.percentile(latencies_ms, 50)) if latencies_ms.size else float("nan"),
        p99_ms=float(np.percentile(latencies_ms, 99)) if latencies_ms.size else float("nan"),
        throughput_rps=len(answers) / wall if wall > 0 else 0.0,
        max_abs_diff=max_abs,
        cosine=cosine,
        passed=not reasons,
        reason="; ".join(reasons) or "answers match the reference",
        substitutions=substitutions,
        errors=errors[:10],
    )


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False
