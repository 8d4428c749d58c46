"""Serving performance measured through Triton: a concurrency sweep, dynamic batching off and on.

``perf_analyzer`` is the field's tool for this, but it does not install here: the package index
this project installs from offers only ``perf-analyzer`` 0.1.0, a 2 kB placeholder without the
binary (2.60.0's wheels are not mirrored). So the sweep does what ``perf_analyzer
--concurrency-range`` does, with tritonclient: at each concurrency N, N closed-loop clients each
send one-sample gRPC requests back to back for a warm-up and then a measurement window; the
throughput and the p50/p95/p99 latencies are the client's, over the requests that completed in
the window; the queue and compute times are Triton's own statistics over the point, read once
they have settled (the server records a request's statistics after it sends the answer).

Dynamic batching off and on are two copies of the served model in the served repository (the
packaged model is never changed): ``<model>__batching_off`` without ``dynamic_batching``, and
``<model>__batching_on`` with it (the packaged settings, or the defaults when the package has
none); both without the response cache, so every request runs the model. Their files are
links to the packaged ones.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from vxdeploy.components.common import progress
from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.errors import InternalError
from vxdeploy.components.common.stage import markdown_table
from vxdeploy.components.package.model_config import read_model_config, to_wire, write_model_config

SWEEP_SUFFIXES = {"off": "__batching_off", "on": "__batching_on"}
MEASURED_WITH = (
    "tritonclient gRPC closed-loop clients (perf_analyzer's --concurrency-range method); perf_analyzer "
    "itself does not install here: the package index offers only perf-analyzer 0.1.0, a placeholder "
    "without the binary"
)


class StatisticsNotSettled(InternalError):
    """Triton's statistics did not reach the requests answered before the timeout."""


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative figures of one model from Triton's statistics extension."""

    success: int
    failures: int
    executions: int
    inferences: int
    cache_hits: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(**{k: v - getattr(other, k) for k, v in asdict(self).items()})


def read_counters(url: str, model: str) -> ModelCounters:
    """The model's statistics now (all versions summed)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model).model_stats
    finally:
        client.close()
    total = ModelCounters(0, 0, 0, 0, 0, 0, 0, 0, 0)
    for s in stats:
        i = s.inference_stats
        total = ModelCounters(
            success=total.success + int(i.success.count),
            failures=total.failures + int(i.fail.count),
            executions=total.executions + int(s.execution_count),
            inferences=total.inferences + int(s.inference_count),
            cache_hits=total.cache_hits + int(i.cache_hit.count),
            queue_ns=total.queue_ns + int(i.queue.ns),
            compute_input_ns=total.compute_input_ns + int(i.compute_input.ns),
            compute_infer_ns=total.compute_infer_ns + int(i.compute_infer.ns),
            compute_output_ns=total.compute_output_ns + int(i.compute_output.ns),
        )
    return total


def settled_counters(
    url: str,
    model: str,
    *,
    expected_requests: int,
    timeout_s: float = 10.0,
    poll_s: float = 0.05,
) -> ModelCounters:
    """The statistics once they count ``expected_requests`` (successes + failures) in all.

    Triton updates a request's statistics after it sends the answer, so statistics read right
    after the last answer can miss the last few requests. This polls until the count reaches
    ``expected_requests``; if it stops short, it waits until the figures stop changing for
    ``timeout_s`` and raises.

    Raises:
        StatisticsNotSettled: the count stayed below ``expected_requests`` for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    counters = read_counters(url, model)
    while counters.success + counters.failures < expected_requests:
        if time.monotonic() > deadline:
            raise StatisticsNotSettled(
                f"Triton's statistics of {model!r} count {counters.success + counters.failures} requests "
                f"after {timeout_s:g} s; {expected_requests} were answered"
            )
        time.sleep(poll_s)
        counters = read_counters(url, model)
    return counters


@dataclass(frozen=True)
class SweepPoint:
    """One concurrency level of one batching mode."""

    batching: str
    concurrency: int
    requests: int
    """Requests sent at this point (warm-up included); Triton's statistics count the same."""
    measured: int
    """Requests that completed in the measurement window (the latency percentiles' sample)."""
    errors: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    executions: int
    avg_batch: float
    queue_ms: float
    compute_ms: float
    statistics_requests: int
    """Requests Triton's statistics counted at this point (equals ``requests`` once settled)."""

    @property
    def compute_per_sample_ms(self) -> float:
        """Compute time per sample: a request's compute time is its whole batch's execution."""
        return self.compute_ms / self.avg_batch if self.avg_batch else math.nan

    def row(self) -> dict[str, Any]:
        return {
            "batching": self.batching,
            "clients": self.concurrency,
            "infer/s": round(self.throughput_rps, 1),
            "p50 ms": round(self.p50_ms, 2),
            "p95 ms": round(self.p95_ms, 2),
            "p99 ms": round(self.p99_ms, 2),
            "avg batch": round(self.avg_batch, 2),
            "queue ms": round(self.queue_ms, 3),
            "compute ms": round(self.compute_ms, 3),
            "compute ms/sample": round(self.compute_per_sample_ms, 3),
            "requests": self.requests,
            "counted": self.statistics_requests,
        }


@dataclass
class SweepResult:
    """The sweep's points and the dynamic-batching gain read from them."""

    model: str
    points: list[SweepPoint]
    window_s: float
    wall_s: float
    gain: float | None
    gain_basis: str
    measured_with: str = MEASURED_WITH

    @property
    def counts_match(self) -> bool:
        return all(p.statistics_requests == p.requests for p in self.points)

    def best(self, batching: str) -> SweepPoint | None:
        points = [p for p in self.points if p.batching == batching and p.measured]
        return max(points, key=lambda p: p.throughput_rps, default=None)

    def throughput_at(self, p95_target_ms: float | None) -> SweepPoint | None:
        """The highest-throughput point (any mode) whose p95 meets the target (None: any)."""
        points = [
            p
            for p in self.points
            if p.measured and not p.errors and (p95_target_ms is None or p.p95_ms <= p95_target_ms)
        ]
        return max(points, key=lambda p: p.throughput_rps, default=None)

    def summary(self) -> dict[str, Any]:
        on, off = self.best("on"), self.best("off")
        return {
            "sweep_points": len(self.points),
            "sweep_wall_s": round(self.wall_s, 1),
            "sweep_best_rps_batching_on": round(on.throughput_rps, 1) if on else None,
            "sweep_best_rps_batching_off": round(off.throughput_rps, 1) if off else None,
            "dynamic_batching_gain": round(self.gain, 2) if self.gain is not None else None,
            "sweep_counts_match": self.counts_match,
        }

    def to_markdown(self) -> str:
        gain = f"{self.gain:.2f}x" if self.gain is not None else "not measured"
        return "\n".join(
            [
                f"### Serving sweep of `{self.model}` through Triton",
                "",
                markdown_table([p.row() for p in self.points]),
                f"Dynamic batching gain at equal or better p99: **{gain}** ({self.gain_basis}).",
                "",
                *self._why(),
                f"Each point: {self.window_s:g} s measured after a warm-up; latencies are the client's, "
                "queue and compute times Triton's statistics per request, read after they settled "
                f"(`counted` = requests in Triton's statistics). Measured with {self.measured_with}.",
                "",
            ]
        )

    def _why(self) -> list[str]:
        """What batching saved here: compute per sample at batch 1 and at the largest batches formed."""
        single = [p for p in self.points if p.measured and p.avg_batch and p.avg_batch <= 1.0]
        batched = max(self.points, key=lambda p: p.avg_batch, default=None)
        if not single or batched is None or batched.avg_batch <= 1.0:
            return []
        alone = min(p.compute_per_sample_ms for p in single)
        return [
            f"Compute per sample: {alone:.3f} ms alone, {batched.compute_per_sample_ms:.3f} ms in batches of "
            f"{batched.avg_batch:.1f} on average ({batched.concurrency} clients); what batching saves beyond "
            "that is per-request overhead (Triton's scheduling, the backend's request handling).",
            "",
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "points": [asdict(p) for p in self.points],
            "window_s": self.window_s,
            "wall_s": self.wall_s,
            "gain": self.gain,
            "gain_basis": self.gain_basis,
            "measured_with": self.measured_with,
        }


def add_sweep_variants(repository: Path, model: str, triton: TritonConfig) -> dict[str, str]:
    """Add the batching-off and batching-on copies of ``model`` to a served repository.

    Returns:
        Batching mode -> model name; empty when the model cannot batch (``max_batch_size`` 0)
        or is an ensemble (its steps batch, and they are shared).
    """
    config = read_model_config(repository / model)
    if config.max_batch_size <= 0 or config.platform == "ensemble":
        return {}
    variants: dict[str, str] = {}
    for mode, suffix in SWEEP_SUFFIXES.items():
        name = model + suffix
        dest = repository / name
        shutil.copytree(repository / model, dest, copy_function=_link)
        variant = mc.ModelConfig()
        variant.CopyFrom(config)
        variant.name = name
        variant.response_cache.enable = False
        if mode == "off":
            variant.ClearField("dynamic_batching")
        elif not variant.HasField("dynamic_batching"):
            defaults = triton.dynamic_batching
            sizes = [b for b in defaults.preferred_batch_sizes if b <= config.max_batch_size]
            variant.dynamic_batching.preferred_batch_size.extend(sizes)
            variant.dynamic_batching.max_queue_delay_microseconds = defaults.max_queue_delay_microseconds
        (dest / "config.pbtxt").unlink()
        write_model_config(variant, dest)
        variants[mode] = name
    return variants


def _link(src: str, dst: str) -> None:
    os.symlink(os.path.abspath(src), dst)


def run_point(
    url: str,
    model: str,
    config: mc.ModelConfig,
    samples: Dataset,
    *,
    batching: str,
    concurrency: int,
    window_s: float,
    warmup_s: float,
    settle_timeout_s: float = 10.0,
) -> SweepPoint:
    """``concurrency`` closed-loop clients for ``warmup_s + window_s``; Triton's statistics around it."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    requests = _prepared_requests(config, samples)
    outputs = [t.name for t in config.output]
    before = read_counters(url, model)
    lock = threading.Lock()
    latencies: list[float] = []
    sent = [0]
    errors = [0]
    times: dict[str, float] = {}

    def set_clock() -> None:  # runs once every client is connected, before any is released
        now = time.perf_counter()
        times["measure"] = now + warmup_s
        times["end"] = now + warmup_s + window_s

    ready = threading.Barrier(concurrency + 1, action=set_clock, timeout=60)

    def worker(index: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs]
        mine: list[float] = []
        count = failed = 0
        try:
            client.is_model_ready(model)  # connect before the clock starts
            ready.wait()
            k = index
            while True:
                start = time.perf_counter()
                if start >= times["end"]:
                    break
                try:
                    client.infer(model, requests[k % len(requests)], outputs=wanted)
                    ok = True
                except InferenceServerException:
                    ok = False
                done = time.perf_counter()
                count += 1
                failed += not ok
                if ok and start >= times["measure"] and done <= times["end"]:
                    mine.append(done - start)
                k += concurrency
        finally:
            client.close()
            with lock:
                latencies.extend(mine)
                sent[0] += count
                errors[0] += failed

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    for t in threads:
        t.join()
    after = settled_counters(
        url, model, expected_requests=before.success + before.failures + sent[0], timeout_s=settle_timeout_s
    )
    delta = after - before
    ms = np.array(latencies) * 1000.0
    per_request = max(delta.success, 1)
    return SweepPoint(
        batching=batching,
        concurrency=concurrency,
        requests=sent[0],
        measured=len(latencies),
        errors=errors[0],
        throughput_rps=len(latencies) / window_s,
        p50_ms=_percentile(ms, 50),
        p95_ms=_percentile(ms, 95),
        p99_ms=_percentile(ms, 99),
        executions=delta.executions,
        avg_batch=delta.inferences / delta.executions if delta.executions else 0.0,
        queue_ms=delta.queue_ns / per_request / 1e6,
        compute_ms=(delta.compute_input_ns + delta.compute_infer_ns + delta.compute_output_ns)
        / per_request
        / 1e6,
        statistics_requests=delta.success + delta.failures,
    )


def _percentile(ms: np.ndarray, q: float) -> float:
    return float(np.percentile(ms, q)) if ms.size else math.nan


def _prepared_requests(config: mc.ModelConfig, samples: Dataset) -> list[list[Any]]:
    """One list of InferInput per sample (one sample per request), built once and reused."""
    import tritonclient.grpc as grpcclient

    prepared = []
    for k in range(len(samples)):
        inputs = []
        for t in config.input:
            array = to_wire(np.ascontiguousarray(samples.inputs[t.name][k : k + 1]), t)
            item = grpcclient.InferInput(t.name, list(array.shape), wire_dtype(t.data_type))
            item.set_data_from_numpy(array)
            inputs.append(item)
        prepared.append(inputs)
    return prepared


def wire_dtype(data_type: int) -> str:
    """The wire name of a config data type (TYPE_FP32 -> FP32; TYPE_STRING travels as BYTES)."""
    name = str(mc.DataType.Name(data_type)).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def run_sweep(
    url: str,
    variants: dict[str, str],
    repository: Path,
    samples: Dataset,
    *,
    concurrencies: Sequence[int],
    window_s: float,
    warmup_s: float,
    model: str,
) -> SweepResult:
    """Every concurrency level with batching off, then on; the gain at equal or better p99."""
    start = time.perf_counter()
    points: list[SweepPoint] = []
    for mode in ("off", "on"):
        name = variants.get(mode)
        if name is None:
            continue
        config = read_model_config(repository / name)
        for concurrency in concurrencies:
            progress.step("serve sweep", len(points), len(variants) * len(concurrencies), unit="points")
            points.append(
                run_point(
                    url,
                    name,
                    config,
                    samples,
                    batching=mode,
                    concurrency=concurrency,
                    window_s=window_s,
                    warmup_s=warmup_s,
                )
            )
    gain, basis = batching_gain(points)
    return SweepResult(
        model=model,
        points=points,
        window_s=window_s,
        wall_s=time.perf_counter() - start,
        gain=gain,
        gain_basis=basis,
    )


def batching_gain(points: Sequence[SweepPoint]) -> tuple[float | None, str]:
    """Dynamic batching's throughput gain at equal or better p99 latency.

    For a p99 budget L, each mode's throughput is that of its fastest point with p99 <= L
    (the concurrency a user would run it at under that budget). The gain is batching-on's over
    batching-off's at the budget where it is largest, trying each measured p99 as the budget
    (so each side is a measured point, and batching-on's p99 is no worse than the budget).

    Returns:
        The ratio (None when a mode is missing) and a sentence naming the budget and both points.
    """
    off = [p for p in points if p.batching == "off" and p.measured and not p.errors]
    on = [p for p in points if p.batching == "on" and p.measured and not p.errors]
    if not off or not on:
        return None, "needs both batching modes measured without errors"
    best: tuple[float, float, SweepPoint, SweepPoint] | None = None
    for budget in sorted({p.p99_ms for p in off + on}):
        on_ok = [p for p in on if p.p99_ms <= budget]
        off_ok = [p for p in off if p.p99_ms <= budget]
        if not on_ok or not off_ok:
            continue
        a = max(on_ok, key=lambda p: p.throughput_rps)
        b = max(off_ok, key=lambda p: p.throughput_rps)
        ratio = a.throughput_rps / b.throughput_rps
        if best is None or ratio > best[0] + 1e-9:
            best = (ratio, budget, a, b)
    if best is None:
        return None, "no p99 budget is met by a point of each mode"
    ratio, budget, a, b = best
    return ratio, (
        f"at a p99 budget of {budget:.2f} ms: on {a.throughput_rps:.0f} infer/s at {a.concurrency} clients "
        f"(p99 {a.p99_ms:.2f} ms), off {b.throughput_rps:.0f} infer/s at {b.concurrency} clients "
        f"(p99 {b.p99_ms:.2f} ms)"
    )
