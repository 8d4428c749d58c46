"""Serve a packaged repository with a real Triton server and check its answers and its batching.

In the serving image (the Vertex AI task) the check runs that image's own ``tritonserver`` over
the packaged repository with every ``config.pbtxt`` unchanged (see
:mod:`vxdeploy.components.package.triton_install`). Elsewhere the bundled server (see
:mod:`vxdeploy.components.package.tritonserver`) has the Python backend only, so the check serves a
*copy* of the repository in which models the server cannot load natively are swapped for
vxdeploy's Python-backend model.py with the same config otherwise: an ONNX model runs under
ONNX Runtime inside Triton (``platform: onnxruntime_onnx`` becomes ``backend: python``), and
``KIND_GPU`` instances become ``KIND_CPU`` without a GPU. Every swap is listed in the result
and its verdict ("passed with substitutions: ..."). TensorRT engines and vLLM models cannot
run on the bundled server at all: the check then reports why it did not run, never a pass.
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

from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.errors import CandidateUnavailable, ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.package.model_config import (
    from_wire,
    read_model_config,
    to_wire,
    write_model_config,
)
from vxdeploy.components.package.repository import LAYOUTS, MODEL_REPOSITORY_DIR, write_python_model
from vxdeploy.components.package.serve_sweep import (
    StatisticsNotSettled,
    SweepResult,
    add_sweep_variants,
    read_counters,
    run_sweep,
    settled_counters,
    wire_dtype,
)
from vxdeploy.components.package.triton_install import ServeCheckServer, find_serve_check_server
from vxdeploy.components.package.tritonserver import TritonInstall, running_triton
from vxdeploy.components.verify.compare import OutputComparison, compare_outputs
from vxdeploy.components.verify.runners import open_runner, run_batches


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
    server: str = "bundled"
    """``serving-image`` (the production tritonserver) or ``bundled`` (nvidia-pytriton's stand-in)."""
    sent: int = 0
    """Requests sent in the checked round (Triton's statistics must count as many)."""
    sweep: SweepResult | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    """Per output: the comparison figures (:class:`~vxdeploy.components.verify.compare.OutputComparison`)."""

    @property
    def verdict(self) -> str:
        """``passed``, ``passed with substitutions: ...`` or ``failed``: what the terminal shows."""
        if not self.passed:
            return "failed"
        if not self.substitutions:
            return f"passed on the {'serving image' if self.server == 'serving-image' else 'bundled'} Triton"
        return "passed with substitutions: " + "; ".join(short_substitutions(self.substitutions))

    @property
    def batching_observed(self) -> bool:
        """Fewer executions than requests that reached the model (cache hits never do)."""
        return self.executions < self.requests - self.cache_hits

    def summary(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "server": self.server,
            "model": self.model,
            "sent": self.sent,
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
            "outputs": {
                o["name"]: {"max_abs_diff": o["max_abs_diff"], "cosine_mean": o["cosine_mean"]}
                for o in self.outputs
            },
            "passed": self.passed,
            **(self.sweep.summary() if self.sweep else {}),
        }


def short_substitutions(substitutions: Sequence[str]) -> list[str]:
    """The swaps in a few words each (``onnxruntime_onnx -> python backend on CPU``), once each."""
    short: list[str] = []
    for s in substitutions:
        if "onnxruntime_onnx served as backend python" in s:
            word = "onnxruntime_onnx -> python backend (ONNX Runtime) on CPU"
        elif "KIND_GPU instances run as KIND_CPU" in s:
            word = "KIND_GPU -> KIND_CPU"
        elif "text pieces not streamed" in s:
            word = "captions decoded from output_ids (bundled backend cannot send text)"
        else:
            word = s
        if word not in short:
            short.append(word)
    return short


def serve_copy(
    model_repository: Path,
    dest: Path,
    *,
    gpu_available: bool,
    backends: frozenset[str] = frozenset({"python"}),
) -> list[str]:
    """Copy ``model_repository`` to ``dest`` with the swaps a server with ``backends`` needs.

    A server with every backend the repository names (the serving image's) gets the copy
    byte for byte: no config is rewritten.

    Returns:
        One sentence per swap.

    Raises:
        ServeCheckUnavailable: for a model the server cannot run in any form.
    """
    shutil.copytree(model_repository, dest)
    substitutions: list[str] = []
    for model_dir in sorted(p for p in dest.iterdir() if p.is_dir()):
        config = read_model_config(model_dir)
        swapped = len(substitutions)
        if config.platform == "tensorrt_plan" and "tensorrt" not in backends:
            raise ServeCheckUnavailable(
                f"model {config.name!r} is a TensorRT engine; the bundled tritonserver has no TensorRT "
                "backend (and engines need the GPU and TensorRT they were built with)"
            )
        if config.backend == "vllm" and "vllm" not in backends:
            raise ServeCheckUnavailable(
                f"model {config.name!r} needs the vLLM backend, which the bundled server lacks"
            )
        if config.platform == "onnxruntime_onnx" and "onnxruntime" not in backends:
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
        if len(substitutions) > swapped:
            write_model_config(config, model_dir)
    return substitutions


def reference_outputs(
    model_file: Path, model_format: str, signature: ModelSignature, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The source model's outputs for ``inputs``, by output name.

    PyTorch eager, called the way its program's in_spec says, or ONNX Runtime for ONNX sources;
    all in one batch, or in batches of the model's fixed batch when its batch is not dynamic.
    """
    if model_format not in ("torch_export", "torchscript", "onnx"):
        raise ModelIntakeError(
            f"source_model format={model_format!r}: expected torch_export, torchscript or onnx"
        )
    kind = "onnxruntime" if model_format == "onnx" else model_format
    runner = open_runner(kind, model_file, signature, name="serve_check_reference")
    try:
        fixed = signature.fixed_batch
        if fixed is not None:
            return run_batches(runner, inputs, (fixed,), fixed_batch=True)
        return run_batches(runner, inputs, (max(len(next(iter(inputs.values()))), 1),))
    finally:
        runner.close()


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
            array = to_wire(np.ascontiguousarray(samples.inputs[t.name][k : k + 1]), t)
            item = grpcclient.InferInput(t.name, list(array.shape), wire_dtype(t.data_type))
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
        return _Answer(i, {t.name: from_wire(result.as_numpy(t.name), t) for t in config.output}, latency)

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            answers = list(pool.map(one, range(count)))
    finally:
        for c in clients:
            c.close()
    return answers, time.perf_counter() - start


def _counts(url: str, model: str, expected_requests: int | None = None) -> tuple[int, int, int, int]:
    """(successful requests, executions, inferences, cache hits); settled when ``expected_requests``."""
    if expected_requests is None:
        c = read_counters(url, model)
    else:
        try:
            c = settled_counters(url, model, expected_requests=expected_requests)
        except StatisticsNotSettled:
            c = read_counters(url, model)  # the shortfall is judged in _judge
    return c.success, c.executions, c.inferences, c.cache_hits


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
    server: ServeCheckServer | None = None,
    sweep: bool | None = None,
) -> ServeCheckResult:
    """Serve the repository on loopback, send concurrent requests, compare and read the statistics.

    One untimed round of ``serve_check_concurrency`` requests goes first; the figures (and
    the statistics, read before and after, once they have settled) cover the
    ``serve_check_requests`` that follow. Then, with ``triton.serve_check_sweep``, the
    concurrency sweep with dynamic batching off and on (:mod:`vxdeploy.components.package.serve_sweep`).

    Args:
        repository_root: The packaged repository (``model_repository/`` inside).
        samples: Inputs to send, one sample per request, cycling.
        reference: The reference model's outputs for ``samples``, by output name.
        triton: Requests, concurrency, tolerances, startup timeout, response cache size, sweep.
        model: The model to query (the repository's default model).
        fp32: Whether to hold the answers to ``triton.serve_check_atol`` (reduced precision
            candidates are held to ``serve_check_min_cosine`` only).
        install: A bundled-style Triton to run (Python backend only); overrides ``server``.
        gpu_available: Whether GPU instances may stay on the GPU; default: ``torch.cuda.is_available()``.
        server: The Triton to run; default: the serving image's, else the bundled one.
        sweep: Whether to run the sweep; default: ``bool(triton.serve_check_sweep)``.

    Raises:
        ServeCheckUnavailable: when no Triton can run here, or the repository needs a backend it lacks.
        TritonStartError: when the server does not become ready (a model failed to load).
    """
    if install is not None:
        server = ServeCheckServer(install, "bundled", frozenset({"python"}))
    if server is None:
        server, reason = find_serve_check_server()
        if server is None:
            raise ServeCheckUnavailable(reason)
    if gpu_available is None:
        gpu_available = _cuda_available()
    if sweep is None:
        sweep = bool(triton.serve_check_sweep)
    with tempfile.TemporaryDirectory(prefix="vxdeploy-serve-check-") as tmp:
        served = Path(tmp) / MODEL_REPOSITORY_DIR
        substitutions = serve_copy(
            Path(repository_root) / MODEL_REPOSITORY_DIR,
            served,
            gpu_available=gpu_available,
            backends=server.backends,
        )
        variants = add_sweep_variants(served, model, triton) if sweep else {}
        config = read_model_config(served / model)
        cache = triton.response_cache_mb * 1024 * 1024 if config.response_cache.enable else 0
        with running_triton(
            served,
            install=server.install,
            startup_timeout_s=triton.serve_check_startup_timeout_s,
            cache_size_bytes=cache,
            workdir=Path(tmp) / "server",
        ) as running:
            # One untimed round first: the client's threads and channels start cold, not the server.
            warm = triton.serve_check_concurrency
            _send(running.grpc_url, model, config, samples, warm, warm)
            before = _counts(running.grpc_url, model, expected_requests=warm)
            answers, wall = _send(
                running.grpc_url,
                model,
                config,
                samples,
                triton.serve_check_requests,
                triton.serve_check_concurrency,
            )
            after = _counts(running.grpc_url, model, expected_requests=before[0] + len(answers))
            swept = (
                run_sweep(
                    running.grpc_url,
                    variants,
                    served,
                    samples,
                    concurrencies=triton.serve_check_sweep,
                    window_s=triton.serve_check_sweep_window_s,
                    warmup_s=min(1.0, triton.serve_check_sweep_window_s / 2),
                    model=model,
                )
                if variants
                else None
            )
    result = _judge(model, answers, wall, before, after, reference, len(samples), triton, fp32, substitutions)
    result.server = server.origin
    result.sweep = swept
    return result


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
    comparisons = _compare_answers(answers, reference, n_samples)
    max_abs = max((c.max_abs_diff for c in comparisons), default=float("nan"))
    # Per-row cosine, as everywhere else; an output one value wide has none worth the name.
    wide = [c for c in comparisons if int(np.prod(c.shape[1:])) > 1]
    cosine = min((c.cosine_mean for c in wide), default=1.0 if comparisons else float("nan"))
    latencies_ms = np.array([a.latency_s * 1000 for a in answers if not a.error])
    reasons = []
    counted = after[0] - before[0]
    answered = sum(1 for a in answers if not a.error)
    if counted != answered:
        reasons.append(
            f"Triton's statistics count {counted} successful requests of the {answered} answered "
            "(read after they settled)"
        )
    if errors:
        reasons.append(f"{len(errors)} of {len(answers)} requests failed (first: {errors[0]})")
    for c in comparisons:
        if not c.shapes_match:
            reasons.append(f"output {c.name!r}: served shape {c.candidate_shape}, reference {c.shape}")
        elif c in wide and c.cosine_mean < triton.serve_check_min_cosine:
            reasons.append(
                f"output {c.name!r}: per-row cosine {c.cosine_mean:.6f} < triton.serve_check_min_cosine "
                f"{triton.serve_check_min_cosine}"
            )
        elif fp32 and c.max_abs_diff > triton.serve_check_atol:
            reasons.append(
                f"output {c.name!r}: max abs diff {c.max_abs_diff:.3g} > triton.serve_check_atol "
                f"{triton.serve_check_atol}"
            )
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
        sent=len(answers),
        outputs=[c.to_dict() for c in comparisons],
    )


def _compare_answers(
    answers: Sequence[_Answer], reference: Mapping[str, np.ndarray], n_samples: int
) -> list[OutputComparison]:
    """The served answers against the reference rows they were asked for, output by output."""
    ok = [a for a in answers if not a.error]
    if not ok:
        return []
    rows = [a.index % n_samples for a in ok]
    want = {name: np.asarray(reference[name])[rows] for name in reference}
    got = {
        name: np.concatenate([np.asarray(a.outputs[name]) for a in ok])
        if all(name in a.outputs for a in ok)
        else np.zeros((0,))
        for name in reference
    }
    return compare_outputs(want, got)


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False
