"""The benchmark harness: every candidate measured the same way against the FP32 reference.

Accuracy: every evaluation sample through the candidate and through the FP32 reference; per
output the largest absolute difference and the per-sample cosine; for classifiers top-1
agreement and, with labels, task accuracy. Latency: at each batch size, after warm-up, timed
call by call until both ``min_iterations`` and ``min_seconds`` are reached; percentiles,
throughput (at the median latency) and the spread (interquartile range, coefficient of variation)
are reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from components.common.config import SelectionConfig
from components.common.data import Dataset
from components.common.errors import CandidateUnavailable
from components.common.signature import ModelSignature
from components.compile.candidates import Candidate, CandidateManifest
from components.select.runners import Runner, load_candidate_runner

log = logging.getLogger(__name__)


@dataclass
class LatencyFigures:
    """Latency of one runner at one batch size.

    ``throughput`` is samples per second at the median latency: on a machine shared with other
    work, the mean is dominated by the calls that were descheduled, which says more about the
    neighbours than about the candidate. ``throughput_mean`` (from the mean latency) is kept beside
    it. The spread is the interquartile range relative to the median (``iqr_pct``) and the
    coefficient of variation (``cv_pct``).
    """

    batch_size: int
    iterations: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    throughput_mean: float
    iqr_pct: float
    cv_pct: float

    def percentile(self, which: str) -> float:
        """``p50``, ``p90``, ``p95`` or ``p99`` in milliseconds."""
        return float(getattr(self, f"{which}_ms"))


def latency_figures(batch_size: int, times_s: Sequence[float]) -> LatencyFigures:
    """Summarize per-call wall times (seconds) of ``batch_size``-sample calls."""
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings to summarize")
    p25, p50, p75, p90, p95, p99 = (float(v) for v in np.percentile(t, [25, 50, 75, 90, 95, 99]))
    mean = float(t.mean())
    std = float(t.std(ddof=1)) if t.size > 1 else 0.0
    return LatencyFigures(
        batch_size=batch_size,
        iterations=int(t.size),
        seconds=float(t.sum() / 1e3),
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=mean,
        std_ms=std,
        min_ms=float(t.min()),
        max_ms=float(t.max()),
        throughput=batch_size / (p50 / 1e3) if p50 > 0 else float("inf"),
        throughput_mean=batch_size / (mean / 1e3) if mean > 0 else float("inf"),
        iqr_pct=100.0 * (p75 - p25) / p50 if p50 > 0 else 0.0,
        cv_pct=100.0 * std / mean if mean > 0 else 0.0,
    )


def measure_latency(
    runner: Runner,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int,
    min_iterations: int,
    min_seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyFigures:
    """Time ``runner.run(feeds)`` after ``warmup`` calls until ``min_iterations`` and ``min_seconds`` are met.

    Adaptive: a fast model runs many iterations (``min_seconds`` binds), a slow one at least
    ``min_iterations`` (enough for percentiles).
    """
    batch = int(next(iter(feeds.values())).shape[0])
    for _ in range(warmup):
        runner.run(feeds)
    times: list[float] = []
    total = 0.0
    while len(times) < min_iterations or total < min_seconds:
        start = clock()
        runner.run(feeds)
        elapsed = clock() - start
        times.append(elapsed)
        total += elapsed
    return latency_figures(batch, times)


@dataclass
class OutputComparison:
    """One output of a candidate against the reference."""

    name: str
    max_abs_diff: float
    cosine_mean: float
    cosine_min: float


@dataclass
class AccuracyFigures:
    """A candidate's outputs against the FP32 reference on the evaluation samples.

    ``drop_points`` is what the accuracy budget limits: the fall in task accuracy (with labels)
    or in top-1 agreement with the reference (without), in percentage points; None when the
    model is not a classifier (then only the cosine gate applies).
    """

    samples: int
    max_abs_diff: float
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None
    task_accuracy: float | None
    reference_accuracy: float | None
    drop_points: float | None
    drop_basis: str
    outputs: list[OutputComparison] = field(default_factory=list)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    na = np.linalg.norm(a2, axis=1)
    nb = np.linalg.norm(b2, axis=1)
    dot = (a2 * b2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    # Two zero vectors agree perfectly; one zero vector against a non-zero one not at all.
    cos = np.where((na == 0) & (nb == 0), 1.0, cos)
    return np.asarray(np.nan_to_num(np.clip(cos, -1.0, 1.0), nan=0.0))


def compare_with_reference(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    output_names: Sequence[str],
    labels: np.ndarray | None = None,
) -> AccuracyFigures:
    """Compare a candidate's outputs with the reference's, output by output (first axis = samples)."""
    comparisons = []
    for name, ref, got in zip(output_names, reference, candidate, strict=True):
        if ref.shape != got.shape:
            raise ValueError(f"output {name!r}: candidate shape {got.shape} != reference shape {ref.shape}")
        cos = _row_cosines(ref, got)
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        comparisons.append(
            OutputComparison(
                name, float(diff.max()) if diff.size else 0.0, float(cos.mean()), float(cos.min())
            )
        )
    ref0, got0 = reference[0], candidate[0]
    classifier = ref0.ndim == 2 and ref0.shape[1] > 1
    agreement = task = ref_task = drop = None
    basis = "none"
    if classifier:
        ref_top1 = ref0.argmax(axis=1)
        got_top1 = got0.argmax(axis=1)
        agreement = float((ref_top1 == got_top1).mean())
        basis = "top1_agreement"
        drop = 100.0 * (1.0 - agreement)
        if labels is not None:
            task = float((got_top1 == labels).mean())
            ref_task = float((ref_top1 == labels).mean())
            drop = 100.0 * (ref_task - task)
            basis = "task_accuracy"
    return AccuracyFigures(
        samples=int(len(ref0)),
        max_abs_diff=max(c.max_abs_diff for c in comparisons),
        cosine_mean=min(c.cosine_mean for c in comparisons),
        cosine_min=min(c.cosine_min for c in comparisons),
        top1_agreement=agreement,
        task_accuracy=task,
        reference_accuracy=ref_task,
        drop_points=drop,
        drop_basis=basis,
        outputs=comparisons,
    )


@dataclass
class CandidateFigures:
    """Everything measured about one candidate (or the reference), and why it was rejected if it was."""

    name: str
    kind: str
    precision: str
    runtime: str
    device: str
    accuracy: AccuracyFigures | None = None
    latency: dict[int, LatencyFigures] = field(default_factory=dict)
    not_measured: dict[int, str] = field(default_factory=dict)
    rejected_reason: str = ""
    reference: bool = False
    candidate: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.accuracy is not None and bool(self.latency)

    def best_throughput(self) -> tuple[int, float] | None:
        """The batch size with the highest throughput and that throughput."""
        if not self.latency:
            return None
        batch = max(self.latency, key=lambda b: self.latency[b].throughput)
        return batch, self.latency[batch].throughput

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = {str(b): asdict(v) for b, v in sorted(self.latency.items())}
        d["not_measured"] = {str(b): r for b, r in sorted(self.not_measured.items())}
        return d


def evaluation_batch_sizes(signature: ModelSignature, cfg: SelectionConfig) -> list[int]:
    """The batch sizes to time: the configured ones, or the model's fixed batch when it has no dynamic one."""
    if all(spec.batched for spec in signature.inputs):
        return list(cfg.batch_sizes)
    first = {spec.shape[0] for spec in signature.inputs if spec.shape}
    static = [d for d in first if isinstance(d, int)]
    return [static[0]] if len(static) == 1 and len(first) == 1 else [1]


def batch_feeds(dataset: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """``batch_size`` real samples (repeated when the dataset has fewer)."""
    n = len(dataset)
    idx = np.arange(batch_size) % n
    return {k: np.ascontiguousarray(v[idx]) for k, v in dataset.inputs.items()}


def run_all(runner: Runner, dataset: Dataset, batch_size: int, fixed_batch: bool = False) -> list[np.ndarray]:
    """Every sample of ``dataset`` through ``runner`` in batches; outputs concatenated per output.

    With ``fixed_batch`` (a model without a dynamic batch) the last short batch is dropped.
    """
    chunks: list[list[np.ndarray]] = []
    for feeds in dataset.batches(batch_size):
        if fixed_batch and len(next(iter(feeds.values()))) != batch_size:
            break
        chunks.append(runner.run(feeds))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def measure_runner(
    figures: CandidateFigures,
    runner: Runner,
    dataset: Dataset,
    reference_outputs: Sequence[np.ndarray],
    signature: ModelSignature,
    batch_sizes: Sequence[int],
    cfg: SelectionConfig,
) -> CandidateFigures:
    """Fill ``figures`` with ``runner``'s accuracy against ``reference_outputs`` and its latency."""
    fixed = not all(spec.batched for spec in signature.inputs)
    eval_batch = max(batch_sizes)
    if runner.max_batch is not None:
        eval_batch = min(eval_batch, runner.max_batch)
    outputs = run_all(runner, dataset, eval_batch, fixed_batch=fixed)
    n = len(outputs[0])
    figures.accuracy = compare_with_reference(
        [r[:n] for r in reference_outputs],
        outputs,
        signature.output_names,
        None if dataset.labels is None else dataset.labels[:n],
    )
    for b in batch_sizes:
        if runner.max_batch is not None and b > runner.max_batch:
            figures.not_measured[b] = (
                f"batch {b} is above the engine's optimization profile (max {runner.max_batch})"
            )
            continue
        figures.latency[b] = measure_latency(
            runner,
            batch_feeds(dataset, b),
            warmup=cfg.warmup_iterations,
            min_iterations=cfg.min_iterations,
            min_seconds=cfg.min_seconds,
        )
    return figures


@dataclass
class BenchmarkResult:
    """The figures of the reference (first, when measured) and of every candidate in the manifest."""

    figures: list[CandidateFigures]
    reference_name: str
    samples: int
    batch_sizes: list[int]

    @property
    def reference(self) -> CandidateFigures | None:
        return next((f for f in self.figures if f.reference), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference_name,
            "samples": self.samples,
            "batch_sizes": self.batch_sizes,
            "figures": [f.to_dict() for f in self.figures],
        }


def benchmark_candidates(
    manifest: CandidateManifest,
    candidates_dir: str | Path,
    reference: Runner,
    dataset: Dataset,
    cfg: SelectionConfig,
    *,
    extra_runners: Sequence[tuple[CandidateFigures, Runner]] = (),
) -> BenchmarkResult:
    """Measure the reference and every candidate of ``manifest`` the same way.

    Args:
        manifest: The candidates manifest.
        candidates_dir: The directory the manifest's files are relative to.
        reference: The FP32 reference runner (its outputs are the accuracy baseline).
        dataset: Evaluation samples (and labels); at most ``cfg.max_eval_samples`` are used.
        cfg: The selection section (batch sizes, iterations).
        extra_runners: More runners to measure beside the candidates, e.g. a benchmark's
            ``torch.compile`` baseline; their figures are not selectable unless the caller says so.

    Returns:
        Figures for every candidate; those not built or not runnable here carry ``rejected_reason``.
    """
    signature = manifest.model_signature()
    samples = dataset.take(min(len(dataset), cfg.max_eval_samples))
    batch_sizes = evaluation_batch_sizes(signature, cfg)
    fixed = not all(spec.batched for spec in signature.inputs)
    reference_outputs = run_all(reference, samples, max(batch_sizes), fixed_batch=fixed)
    results: list[CandidateFigures] = []
    if cfg.measure_reference:
        ref_fig = CandidateFigures(
            reference.name,
            "reference",
            "fp32",
            "pytorch" if "pytorch" in reference.name else "onnxruntime",
            reference.device,
            reference=True,
        )
        results.append(
            measure_runner(ref_fig, reference, samples, reference_outputs, signature, batch_sizes, cfg)
        )
    for fig, runner in extra_runners:
        results.append(
            _measure_safely(
                fig, partial(_given, runner), samples, reference_outputs, signature, batch_sizes, cfg
            )
        )
    for cand in manifest.candidates:
        fig = _figures_of(cand)
        if not cand.built:
            fig.rejected_reason = f"not built ({cand.status}): {cand.reason}"
            results.append(fig)
            continue
        results.append(
            _measure_safely(
                fig,
                partial(load_candidate_runner, cand, candidates_dir, signature),
                samples,
                reference_outputs,
                signature,
                batch_sizes,
                cfg,
            )
        )
    return BenchmarkResult(results, reference.name, len(reference_outputs[0]), batch_sizes)


def _given(runner: Runner) -> Runner:
    return runner


def _figures_of(cand: Candidate) -> CandidateFigures:
    return CandidateFigures(
        name=cand.name,
        kind=cand.kind,
        precision=cand.precision,
        runtime=cand.runtime,
        device=cand.device,
        candidate=cand.to_dict(),
    )


def _measure_safely(
    fig: CandidateFigures,
    open_runner: Callable[[], Runner],
    samples: Dataset,
    reference_outputs: Sequence[np.ndarray],
    signature: ModelSignature,
    batch_sizes: Sequence[int],
    cfg: SelectionConfig,
) -> CandidateFigures:
    """Measure one runner; a runner that cannot open or breaks while running is rejected, not fatal."""
    try:
        runner = open_runner()
    except CandidateUnavailable as exc:
        fig.rejected_reason = f"cannot run on this machine: {exc}"
        return fig
    try:
        return measure_runner(fig, runner, samples, reference_outputs, signature, batch_sizes, cfg)
    except Exception as exc:  # a candidate that crashes loses, the others are still measured
        log.exception("measuring %s failed", fig.name)
        fig.rejected_reason = f"failed while measuring: {type(exc).__name__}: {exc}"
        return fig
    finally:
        runner.close()
