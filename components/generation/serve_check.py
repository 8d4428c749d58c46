"""Serve a generation model's repository with a real Triton and stream captions through gRPC.

The repository (:mod:`vxdeploy.components.generation.serving`) is served the way the single-model
check serves one (:func:`vxdeploy.components.package.serve_check.serve_copy`: on the bundled stand-in
the ONNX parts run under ONNX Runtime in the Python backend, each swap listed), with Triton's local
response cache configured (``--cache-config local,size=...``) for the vision encoder. A real
``tritonclient.grpc`` client streams each generation (``start_stream`` / ``async_stream_infer``, one
response per token, then the final-flag response) and the check

- compares the served tokens with the in-process generation of the same part files (ONNX Runtime;
  serving must not change one token) and with the PyTorch reference (the ``.pt2`` parts; FP32 parts
  must agree on every caption), and scores exact caption match against the labels;
- measures time to first token, tokens/s per stream, the encode time the generator returns (and the
  vision encoder's compute time from Triton's statistics), end-to-end p50/p95 at each concurrency;
- sends one image twice and reads the vision encoder's statistics: the repeat must be a cache hit.
"""

from __future__ import annotations

import queue
import re
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.generation.loop import agreement, exact_match
from vxdeploy.components.generation.serving import ENCODE_MS, GENERATOR_HISTOGRAMS, TEXT
from vxdeploy.components.generation.spec import OUTPUT_IDS, GenerationSpec
from vxdeploy.components.package.model_config import read_model_config, write_model_config
from vxdeploy.components.package.repository import MODEL_REPOSITORY_DIR
from vxdeploy.components.package.serve_check import ServeCheckUnavailable, _cuda_available, serve_copy
from vxdeploy.components.package.serve_sweep import (
    ModelCounters,
    StatisticsNotSettled,
    read_counters,
    settled_counters,
)
from vxdeploy.components.package.triton_install import ServeCheckServer, find_serve_check_server
from vxdeploy.components.package.tritonserver import TritonInstall, free_port, running_triton

CONCURRENCY = (1, 2, 4)
"""Concurrent streams the end-to-end latency is measured at."""
_RESPONSE_TIMEOUT_S = 60.0


@dataclass
class Streamed:
    """One streamed generation (one image) as the client saw it."""

    index: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    text_sent: bool = False
    encode_ms: float = float("nan")
    sent_s: float = 0.0
    first_s: float = float("nan")
    last_s: float = float("nan")
    final_s: float = float("nan")
    responses: int = 0
    final: bool = False
    error: str = ""

    @property
    def ttft_ms(self) -> float:
        return (self.first_s - self.sent_s) * 1e3

    @property
    def total_ms(self) -> float:
        return (self.final_s - self.sent_s) * 1e3

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second after the first (as :class:`~vxdeploy.components.generation.loop.Generation`)."""
        span = self.last_s - self.first_s
        return (len(self.tokens) - 1) / span if len(self.tokens) > 1 and span > 0 else float("nan")


def _stream_one(
    client: Any,
    inbox: queue.Queue[tuple[float, Any, Any]],
    model: str,
    inputs: Mapping[str, np.ndarray],
    index: int,
) -> Streamed:
    import tritonclient.grpc as grpcclient

    from vxdeploy.components.package.model_config import triton_dtype
    from vxdeploy.components.package.serve_sweep import wire_dtype

    items = []
    for name, array in inputs.items():
        item = grpcclient.InferInput(name, list(array.shape), wire_dtype(triton_dtype(str(array.dtype))))
        item.set_data_from_numpy(np.ascontiguousarray(array))
        items.append(item)
    out = Streamed(index)
    out.sent_s = time.perf_counter()
    client.async_stream_infer(model, items, request_id=str(index), enable_empty_final_response=True)
    while True:
        try:
            at, result, error = inbox.get(timeout=_RESPONSE_TIMEOUT_S)
        except queue.Empty:
            out.error = f"no response within {_RESPONSE_TIMEOUT_S:.0f} s"
            return out
        if error is not None:
            out.error, out.final_s = str(error), at
            return out
        response = result.get_response()
        names = {o.name for o in response.outputs}
        if OUTPUT_IDS in names:
            out.tokens.append(int(result.as_numpy(OUTPUT_IDS).reshape(-1)[0]))
            out.first_s = out.first_s if out.responses else at
            out.last_s = at
            out.responses += 1
        if TEXT in names:
            out.text_sent = True
            out.text += b"".join(result.as_numpy(TEXT).reshape(-1).tolist()).decode()
        if ENCODE_MS in names:
            out.encode_ms = float(result.as_numpy(ENCODE_MS).reshape(-1)[0])
        if response.parameters["triton_final_response"].bool_param:
            out.final, out.final_s = True, at
            return out


def stream_generations(
    url: str, model: str, images: Mapping[str, np.ndarray], indices: Sequence[int], concurrency: int
) -> tuple[list[Streamed], float]:
    """Stream one generation per index (that row of ``images``), ``concurrency`` streams at once.

    Each stream is its own gRPC client with one bidirectional stream, sending its next request when
    the previous one's final response arrived.

    Returns:
        The generations in ``indices`` order, and the wall time of all of them.
    """
    import tritonclient.grpc as grpcclient

    results: dict[int, Streamed] = {}
    todo = list(enumerate(indices))
    lock = threading.Lock()

    def worker() -> None:
        inbox: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
        client = grpcclient.InferenceServerClient(url)
        client.start_stream(callback=lambda result, error: inbox.put((time.perf_counter(), result, error)))
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    slot, index = todo.pop(0)
                feeds = {n: a[index : index + 1] for n, a in images.items()}
                results[slot] = _stream_one(client, inbox, model, feeds, index)
        finally:
            client.stop_stream()
            client.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(len(indices))], time.perf_counter() - start


def _level(concurrency: int | str, got: Sequence[Streamed], wall: float) -> dict[str, Any]:
    ok = [g for g in got if not g.error]
    return {
        "concurrency": concurrency,
        "generations": len(got),
        "p50_ms": _percentile([g.total_ms for g in ok], 50),
        "p95_ms": _percentile([g.total_ms for g in ok], 95),
        "ttft_p50_ms": _percentile([g.ttft_ms for g in ok], 50),
        "ttft_p95_ms": _percentile([g.ttft_ms for g in ok], 95),
        "tokens_per_s": _median([g.tokens_per_s for g in ok]),
        "generations_per_s": len(ok) / wall if wall > 0 else 0.0,
    }


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def _percentile(values: Sequence[float], q: float) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else float("nan")


@dataclass
class GenerationServeResult:
    """What the served generator streamed, how fast, and whether it matches."""

    model: str
    passed: bool
    reason: str
    sent: int
    agreement_reference: float
    """Fraction of captions whose tokens equal the PyTorch reference's."""
    agreement_in_process: float | None
    """... equal the in-process ONNX Runtime generation of the same part files (None: not ONNX)."""
    exact_match: float | None
    ttft_ms: float
    tokens_per_s: float
    encode_ms: float
    encode_ms_cached: float
    encoder_compute_ms: float
    levels: list[dict[str, Any]]
    cache_hits: int
    repeat_hit: bool
    text_streamed: bool
    substitutions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server: str = "bundled"
    generator_requests: int = 0
    generator_executions: int = 0
    """Fewer executions than requests: concurrent generations ran as one batch (dynamic batching)."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    server_metrics: dict[str, float] = field(default_factory=dict)
    """The generator's own metrics over the whole check (Triton's metrics port): ``generations`` and
    the mean ``ttft_ms`` / ``tokens_per_s`` / ``total_ms`` it measured; empty when not scraped."""

    @property
    def verdict(self) -> str:
        from vxdeploy.components.package.serve_check import short_substitutions

        if not self.passed:
            return "failed"
        if not self.substitutions:
            return f"passed on the {'serving image' if self.server == 'serving-image' else 'bundled'} Triton"
        return "passed with substitutions: " + "; ".join(short_substitutions(self.substitutions))

    def summary(self) -> dict[str, Any]:
        """The figures the stage report's summary and the run report show."""
        out: dict[str, Any] = {
            "verdict": self.verdict,
            "server": self.server,
            "model": self.model,
            "generation": True,
            "sent": self.sent,
            "passed": self.passed,
            "agreement_reference": round(self.agreement_reference, 4),
            "ttft_ms": round(self.ttft_ms, 3),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "encode_ms": round(self.encode_ms, 3),
            "encode_ms_cached": round(self.encode_ms_cached, 3),
            "encoder_compute_ms": round(self.encoder_compute_ms, 3),
            "cache_hits": self.cache_hits,
            "repeat_hit": self.repeat_hit,
            "text_streamed": self.text_streamed,
            "generator_requests": self.generator_requests,
            "generator_executions": self.generator_executions,
        }
        for name, value in self.server_metrics.items():
            out[f"server_{name}"] = round(value, 3)
        if self.agreement_in_process is not None:
            out["agreement_in_process"] = round(self.agreement_in_process, 4)
        if self.exact_match is not None:
            out["served_exact"] = round(self.exact_match, 4)
        for level in self.levels:
            c = level["concurrency"]
            if isinstance(c, int):
                out[f"p50_ms_c{c}"] = round(level["p50_ms"], 3)
                out[f"p95_ms_c{c}"] = round(level["p95_ms"], 3)
            else:  # the first pass: new images, one stream
                out["p50_ms"], out["p95_ms"] = round(level["p50_ms"], 3), round(level["p95_ms"], 3)
        return out

    def to_markdown(self) -> str:
        """The served generator's figures as Markdown (the stage summary and the run report)."""
        lines = [
            f"## Served generator `{self.model}`: {self.verdict}",
            "",
            f"{self.reason}.",
            "",
            f"Streamed through gRPC (one response per token): TTFT **{self.ttft_ms:.2f} ms**, "
            f"**{self.tokens_per_s:.0f} tokens/s** per stream, vision encode {self.encode_ms:.2f} ms "
            f"(cached image {self.encode_ms_cached:.2f} ms; encoder compute {self.encoder_compute_ms:.3f} ms "
            "in Triton's statistics) at concurrency 1.",
            "",
            "End-to-end latency per generation (send to final response); after the first pass the images "
            "repeat, so the vision encoder answers from its response cache:",
            "",
            "| concurrency | generations | p50 ms | p95 ms | TTFT p50 ms | TTFT p95 ms | generations/s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for lv in self.levels:
            lines.append(
                f"| {lv['concurrency']} | {lv['generations']} | {lv['p50_ms']:.2f} | {lv['p95_ms']:.2f} | "
                f"{lv['ttft_p50_ms']:.2f} | {lv.get('ttft_p95_ms', float('nan')):.2f} | "
                f"{lv['generations_per_s']:.1f} |"
            )
        lines += [
            "",
            f"Captions: {self.agreement_reference:.1%} identical to the PyTorch reference"
            + (
                f", {self.agreement_in_process:.1%} identical to in-process ONNX Runtime on the same files"
                if self.agreement_in_process is not None
                else ""
            )
            + (f"; exact caption match {self.exact_match:.1%}" if self.exact_match is not None else "")
            + ".",
            f"Response cache: {self.cache_hits} hits on the vision encoder; a repeated image "
            f"{'hit' if self.repeat_hit else 'did NOT hit'} the cache. The generator ran "
            f"{self.generator_requests} requests in {self.generator_executions} executions "
            "(concurrent generations decode as one batch).",
            "",
        ]
        if self.server_metrics:
            m = {"ttft_ms": float("nan"), "total_ms": float("nan"), "tokens_per_s": float("nan")}
            m |= self.server_metrics
            lines += [
                f"The generator's own metrics (Triton custom metrics on the metrics port) counted "
                f"{m.get('generations', 0):.0f} generations: mean TTFT {m['ttft_ms']:.2f} ms, "
                f"mean whole generation {m['total_ms']:.2f} ms, mean {m['tokens_per_s']:.0f} tokens/s, "
                "measured from the batch reaching the generator (on Vertex AI the same figures go to "
                "Cloud Monitoring).",
                "",
            ]
        if self.substitutions:
            lines += ["Substitutions (local stand-in for the serving image):", ""]
            lines += [f"- {s}" for s in self.substitutions] + [""]
        return "\n".join(lines)


_PROMETHEUS_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (\S+)$")


def read_generator_metrics(metrics_url: str, model: str, timeout_s: float = 10.0) -> dict[str, float]:
    """The generator's histograms on Triton's metrics port: ``generations`` and the mean of each figure.

    Args:
        metrics_url: ``http://host:port/metrics``.
        model: The generator's name (the ``model`` label).
        timeout_s: The scrape's deadline.

    Returns:
        ``{"generations": n, "ttft_ms": mean, "tokens_per_s": mean, "total_ms": mean}`` (a figure without
        observations left out); empty when the families are absent (metrics off, or an older generator).
    """
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = _PROMETHEUS_SAMPLE.match(line)
        if m is None or f'model="{model}"' not in m[2]:
            continue
        values[m[1]] = values.get(m[1], 0.0) + float(m[3])
    out: dict[str, float] = {}
    for key, family in GENERATOR_HISTOGRAMS.items():
        count, total = values.get(f"{family}_count"), values.get(f"{family}_sum")
        if count is None or total is None:
            continue
        if key == "ttft_ms":
            out["generations"] = count
        if count > 0:
            out[key] = total / count
    return out


def _bundled_text_substitution(served: Path, model: str, server: ServeCheckServer) -> list[str]:
    """Turn the generator's text off where the backend was built against NumPy 1 but runs NumPy 2."""
    if server.origin != "bundled" or int(np.__version__.split(".")[0]) < 2:
        return []
    config = read_model_config(served / model)
    config.parameters["send_text"].string_value = "false"
    write_model_config(config, served / model)
    return [
        f"{model}: text pieces not streamed, captions decoded from output_ids by the client (the bundled "
        f"Python backend, built against NumPy 1, sends empty BYTES tensors from NumPy {np.__version__})"
    ]


def check_served_generation(
    repository_root: str | Path,
    images: Mapping[str, np.ndarray],
    reference_tokens: np.ndarray,
    spec: GenerationSpec,
    *,
    triton: TritonConfig,
    model: str,
    fp32: bool,
    references: Sequence[str] | None = None,
    in_process_tokens: np.ndarray | None = None,
    install: TritonInstall | None = None,
    gpu_available: bool | None = None,
    concurrency: Sequence[int] = CONCURRENCY,
    requests_per_level: int | None = None,
) -> GenerationServeResult:
    """Serve the generation repository on loopback, stream captions, compare and measure.

    Args:
        repository_root: The packaged repository (``model_repository/`` inside).
        images: The encoder's inputs by name, one row per generation.
        reference_tokens: The PyTorch reference's tokens for ``images`` [N, max_new_tokens].
        spec: The generation facts (decoding, pad).
        triton: The Triton section (startup timeout, response cache size, requests per level).
        model: The generator's name.
        fp32: Whether every part is FP32 (then every caption must equal the reference's).
        references: Reference captions (from the labels) for exact match; None: not scored.
        in_process_tokens: The same part files' in-process generation (must equal the served).
        install: A bundled-style Triton to run; default: the serving image's, else the bundled one.
        gpu_available: Whether GPU instances may stay on the GPU.
        concurrency: Concurrent streams per latency level.
        requests_per_level: Generations per level (default ``triton.serve_check_requests``).

    Raises:
        ServeCheckUnavailable: when no Triton can run here, or a part needs a backend it lacks.
        TritonStartError: when the server does not become ready.
    """
    if install is not None:
        server: ServeCheckServer | None = ServeCheckServer(install, "bundled", frozenset({"python"}))
    else:
        server, why = find_serve_check_server()
        if server is None:
            raise ServeCheckUnavailable(why)
    assert server is not None
    gpu = _cuda_available() if gpu_available is None else gpu_available
    n = len(reference_tokens)
    per_level = requests_per_level or triton.serve_check_requests
    with tempfile.TemporaryDirectory(prefix="vxdeploy-generation-check-") as tmp:
        served = Path(tmp) / MODEL_REPOSITORY_DIR
        substitutions = serve_copy(
            Path(repository_root) / MODEL_REPOSITORY_DIR, served, gpu_available=gpu, backends=server.backends
        )
        substitutions += _bundled_text_substitution(served, model, server)
        encoder = read_model_config(served / spec.part("vision_encoder")).name
        metrics_port = free_port()
        with running_triton(
            served,
            install=server.install,
            startup_timeout_s=triton.serve_check_startup_timeout_s,
            cache_size_bytes=triton.response_cache_mb * 1024 * 1024,
            # The generator's own generation metrics are read back from Triton's metrics port.
            extra_args=[
                "--allow-metrics=true",
                "--allow-gpu-metrics=false",
                "--allow-cpu-metrics=false",
                "--metrics-address=127.0.0.1",
                f"--metrics-port={metrics_port}",
            ],
            workdir=Path(tmp) / "server",
        ) as running:
            url = running.grpc_url
            # A blank image warms every part up without caching any image of the check.
            blank = {k: np.zeros_like(v[:1]) for k, v in images.items()}
            stream_generations(url, model, blank, [0], 1)
            # Every image once, in order, one stream: the captions checked, every encode a cache miss.
            first, first_wall = stream_generations(url, model, images, list(range(n)), 1)
            levels: list[dict[str, Any]] = [_level("1 (new images)", first, first_wall)]
            runs: dict[int, list[Streamed]] = {}
            for c in concurrency:
                got, wall = stream_generations(url, model, images, [i % n for i in range(per_level)], c)
                runs[c] = got
                levels.append(_level(c, got, wall))
            # Triton counts a decoupled request once its execute returns, after the final response:
            # wait for the warm-up, the first pass and every level to count.
            answered = 1 + len(first) + sum(len(got) for got in runs.values())
            try:
                generator = settled_counters(url, model, expected_requests=answered)
            except StatisticsNotSettled:
                generator = read_counters(url, model)
            before = read_counters(url, encoder)
            repeat, _ = stream_generations(url, model, images, [0, 0], 1)
            try:  # the repeat makes two encoder requests (one a cache hit): wait until both count
                after = settled_counters(url, encoder, expected_requests=before.success + before.failures + 2)
            except StatisticsNotSettled:
                after = read_counters(url, encoder)
            try:
                server_metrics = read_generator_metrics(f"http://127.0.0.1:{metrics_port}/metrics", model)
            except OSError:  # a figure of the report, not a verdict: the check stands without it
                server_metrics = {}
    return judge_generations(
        model,
        first,
        [g for c in concurrency for g in runs[c]],
        repeat,
        levels,
        before,
        after,
        reference_tokens,
        spec,
        triton=triton,
        fp32=fp32,
        references=references,
        in_process_tokens=in_process_tokens,
        substitutions=substitutions,
        server=server.origin,
        generator=generator,
        server_metrics=server_metrics,
    )


def judge_generations(
    model: str,
    first: Sequence[Streamed],
    rounds: Sequence[Streamed],
    repeat: Sequence[Streamed],
    levels: list[dict[str, Any]],
    before: ModelCounters,
    after: ModelCounters,
    reference_tokens: np.ndarray,
    spec: GenerationSpec,
    *,
    triton: TritonConfig,
    fp32: bool,
    references: Sequence[str] | None,
    in_process_tokens: np.ndarray | None,
    substitutions: list[str],
    server: str,
    generator: ModelCounters | None = None,
    server_metrics: dict[str, float] | None = None,
) -> GenerationServeResult:
    """The verdict and figures of the streamed generations.

    Args:
        model: The generator's name.
        first: One generation per image, in order, one stream (new images: cache misses).
        rounds: The generations of the concurrency levels (images repeating).
        repeat: The same image twice, one after the other.
        levels: Latency per level (first pass included).
        before: The vision encoder's statistics before ``repeat``.
        after: ... after it (cache hits, executions, compute time).
        reference_tokens: The PyTorch reference's tokens [N, max_new_tokens].
        spec: The generation facts.
        triton: ``serve_check_min_cosine`` is the agreement floor without an in-process twin.
        fp32: Every part FP32: every caption must equal the reference's.
        references: Reference captions for exact match (None: not scored).
        in_process_tokens: The same files' in-process tokens (must equal the served).
        substitutions: What the local server served differently.
        server: ``bundled`` or ``serving-image``.
        generator: The generator's statistics after the levels (requests vs executions: batching).
        server_metrics: The generator's own metrics (:func:`read_generator_metrics`), for the report.
    """
    n = len(first)
    every = [*first, *rounds, *repeat]
    errors = [f"generation {g.index}: {g.error}" for g in every if g.error]
    unfinished = [g.index for g in every if not g.error and not g.final]
    served_tokens = np.full((n, spec.max_new_tokens), spec.pad_token_id, dtype=np.int64)
    for g in first:
        row = g.tokens[: spec.max_new_tokens]
        served_tokens[g.index, : len(row)] = row
    texts = [spec.decode(g.tokens) for g in first]
    text_mismatch = [g.index for g in first if g.text_sent and g.text != spec.decode(g.tokens)]
    ref_agree = agreement(served_tokens, np.asarray(reference_tokens))
    in_proc = agreement(served_tokens, in_process_tokens) if in_process_tokens is not None else None
    # Later rounds must give each image the same tokens as the first pass (batched or cached, or not).
    later = [g for g in every[n:] if not g.error and g.tokens[: spec.max_new_tokens] != first[g.index].tokens]
    reasons = []
    if errors:
        reasons.append(f"{len(errors)} of {len(every)} generations failed (first: {errors[0]})")
    if unfinished:
        reasons.append(f"{len(unfinished)} streams ended without the final response (first: {unfinished[0]})")
    if in_proc is not None and in_proc < 1.0:
        reasons.append(
            f"{1 - in_proc:.1%} of captions differ from the in-process generation of the same files"
        )
    if fp32 and ref_agree < 1.0:
        reasons.append(f"{1 - ref_agree:.1%} of captions of the FP32 parts differ from the PyTorch reference")
    if not fp32 and in_proc is None and ref_agree < triton.serve_check_min_cosine:
        reasons.append(
            f"agreement with the PyTorch reference {ref_agree:.3f} < triton.serve_check_min_cosine "
            f"{triton.serve_check_min_cosine} (the floor for reduced-precision parts served without an "
            "in-process twin)"
        )
    if later:
        reasons.append(
            f"{len(later)} repeated generations gave other tokens than the first (first: {later[0].index})"
        )
    if text_mismatch:
        reasons.append(f"{len(text_mismatch)} streamed texts differ from the decoded tokens")
    repeat_hit = after.cache_hits - before.cache_hits >= 1
    if not repeat_hit:
        reasons.append("a repeated image did not hit the vision encoder's response cache")
    counters = after
    executions = counters.executions
    ok1 = [g for g in first if not g.error]
    return GenerationServeResult(
        model=model,
        passed=not reasons,
        reason="; ".join(reasons) or "streamed captions match",
        sent=len(every),
        agreement_reference=ref_agree,
        agreement_in_process=in_proc,
        exact_match=exact_match(texts, list(references)) if references is not None else None,
        ttft_ms=_median([g.ttft_ms for g in ok1]),
        tokens_per_s=_median([g.tokens_per_s for g in ok1]),
        encode_ms=_median([g.encode_ms for g in first if not g.error]),
        encode_ms_cached=_median([g.encode_ms for g in repeat[1:] if not g.error]),
        encoder_compute_ms=counters.compute_infer_ns / executions / 1e6 if executions > 0 else float("nan"),
        levels=levels,
        cache_hits=counters.cache_hits,
        repeat_hit=repeat_hit,
        text_streamed=any(g.text_sent for g in first),
        substitutions=substitutions,
        errors=errors[:10],
        server=server,
        generator_requests=generator.success if generator else 0,
        generator_executions=generator.executions if generator else 0,
        samples=[{"index": g.index, "tokens": g.tokens, "text": texts[i]} for i, g in enumerate(first[:8])],
        server_metrics=dict(server_metrics or {}),
    )
