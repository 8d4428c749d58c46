"""The benchmark harness: every candidate measured the same way against the FP32 reference.

Accuracy: every evaluation sample through the candidate and through the FP32 reference, each
output judged by its task's metric through the one accuracy gate (:mod:`vxdeploy.components.verify.accuracy`).
Latency: at each batch size, after warm-up, timed
call by call until both ``min_iterations`` and ``min_seconds`` are reached; percentiles,
throughput (at the median latency) and the spread (interquartile range, coefficient of variation)
are reported.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vxdeploy.components.common import progress
from vxdeploy.components.common.config import SelectionConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.errors import CandidateUnavailable
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.compile.candidates import Candidate, CandidateManifest
from vxdeploy.components.select.isolated import CallTimer, InProcessTimer, RunnerOpener, start_process_timers
from vxdeploy.components.select.runners import load_candidate_runner
from vxdeploy.components.verify.accuracy import AccuracyResult, measure_accuracy, output_metrics, targets_for
from vxdeploy.components.verify.runners import Runner, run_batches

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
    round_ms: list[float] = field(default_factory=list)
    """Median per-call latency in each interleaved round (empty when timed alone)."""
    timed_in: str = "shared process"
    """``own process`` (a worker process of its own) or ``shared process`` (the measuring one)."""

    def percentile(self, which: str) -> float:
        """``p50``, ``p90``, ``p95`` or ``p99`` in milliseconds."""
        return float(getattr(self, f"{which}_ms"))


def latency_figures(
    batch_size: int,
    times_s: Sequence[float],
    round_s: Sequence[float] = (),
    *,
    timed_in: str = "shared process",
) -> LatencyFigures:
    """Summarize per-call wall times (seconds) of ``batch_size``-sample calls (and per-round medians)."""
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
        round_ms=[round(1e3 * float(r), 6) for r in round_s],
        timed_in=timed_in,
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


SpeedupVerdict = Literal["faster", "slower", "not distinguishable"]


@dataclass
class SpeedupFigures:
    """How much faster one runner is than another at one batch size, from interleaved rounds.

    Each round times both runners back to back, so a change in the machine's load moves both;
    ``ratio`` is the median over rounds of (other's time / this runner's time), ``ratio_p25`` /
    ``ratio_p75`` its interquartile range. The verdict claims a difference only when that range
    excludes 1; otherwise the two are ``not distinguishable`` on this machine at this load.
    """

    batch_size: int
    ratio: float
    ratio_p25: float
    ratio_p75: float
    rounds: int
    verdict: SpeedupVerdict

    def describe(self, versus: str = "the reference") -> str:
        spread = f"{self.ratio_p25:.2f}-{self.ratio_p75:.2f}"
        if self.verdict == "not distinguishable":
            return f"not distinguishable from {versus} ({self.ratio:.2f}x, IQR {spread} spans 1)"
        return f"{self.ratio:.2f}x {versus} (IQR {spread}, {self.rounds} rounds)"


def compare_latency(runner: LatencyFigures, other: LatencyFigures) -> SpeedupFigures:
    """``runner``'s speed relative to ``other`` (> 1: faster), paired round by round where interleaved.

    Runners timed in the same rounds are compared round by round; otherwise (different batch
    sizes, or timed apart) the ratio of medians is judged by whether the two interquartile
    ranges of per-call latency overlap.
    """
    if (
        runner.round_ms
        and len(runner.round_ms) == len(other.round_ms)
        and runner.batch_size == other.batch_size
    ):
        mine = np.asarray(runner.round_ms)
        theirs = np.asarray(other.round_ms)
        ratios = theirs / np.where(mine > 0, mine, np.inf)
        p25, p50, p75 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
        rounds = len(ratios)
    else:
        # Throughput ratio (batch sizes may differ); the IQR ends give the range of the ratio.
        def q(f: LatencyFigures, pct: float) -> float:
            width = f.iqr_pct / 200.0 * f.p50_ms
            return f.batch_size / max(f.p50_ms + (width if pct > 50 else -width), 1e-12)

        p50 = (runner.batch_size / runner.p50_ms) / (other.batch_size / other.p50_ms)
        p25 = q(runner, 75) / q(other, 25)
        p75 = q(runner, 25) / q(other, 75)
        rounds = 0
    verdict: SpeedupVerdict = "faster" if p25 > 1.0 else "slower" if p75 < 1.0 else "not distinguishable"
    return SpeedupFigures(runner.batch_size, p50, p25, p75, rounds, verdict)


def time_interleaved(
    entries: Sequence[tuple[CandidateFigures, Runner]],
    dataset: Dataset,
    batch_sizes: Sequence[int],
    cfg: SelectionConfig,
    *,
    openers: Mapping[str, RunnerOpener | None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    max_rounds_factor: int = 3,
    settle_s: float = 0.02,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Time every runner at every batch size in interleaved rounds; fill ``latency`` and ``speedup``.

    At each batch size, after warm-up, each round runs every runner in turn (the order rotates
    from round to round) for about ``min_seconds / min_iterations`` seconds each, so slow and
    fast runners share the same minutes of the machine. Rounds continue until there are
    ``min_iterations`` of them and every runner has run ``min_seconds`` (at most
    ``max_rounds_factor`` times ``min_iterations`` rounds). The reference's figures (the entry
    marked ``reference``) then give each other runner its :class:`SpeedupFigures`.

    A runner whose figure name has a recipe in ``openers`` is opened again and timed in a worker
    process of its own (:mod:`vxdeploy.components.select.isolated`): runtimes sharing one process slow
    each other down (spinning thread pools), which made in-process speed-ups differ from the
    same runners timed alone by up to 3x. The others are timed here with ``clock``; each
    figure's ``timed_in`` says which. Before each runner's turn the process sleeps ``settle_s``
    so that the previous runner's pools park.
    """
    recipes = {name: op for name, op in (openers or {}).items() if op is not None}
    wanted = [(fig.name, recipes.get(fig.name)) for fig, _ in entries if fig.name in recipes]
    workers = start_process_timers(wanted) if wanted else {}
    timers: dict[str, CallTimer] = {
        fig.name: workers.get(fig.name) or InProcessTimer(runner, clock) for fig, runner in entries
    }
    try:
        _time_rounds(entries, timers, dataset, batch_sizes, cfg, max_rounds_factor, settle_s, sleep)
    finally:
        for timer in workers.values():
            timer.close()
    reference = next((fig for fig, _ in entries if fig.reference), None)
    if reference is None:
        return
    for fig, _ in entries:
        if fig.reference:
            continue
        for b, lat in fig.latency.items():
            if b in reference.latency:
                fig.speedup[b] = compare_latency(lat, reference.latency[b])


def _time_rounds(
    entries: Sequence[tuple[CandidateFigures, Runner]],
    timers: Mapping[str, CallTimer],
    dataset: Dataset,
    batch_sizes: Sequence[int],
    cfg: SelectionConfig,
    max_rounds_factor: int,
    settle_s: float,
    sleep: Callable[[float], None],
) -> None:
    for b in batch_sizes:
        active = []
        for fig, runner in entries:
            if runner.max_batch is not None and b > runner.max_batch:
                fig.not_measured[b] = (
                    f"batch {b} is above the engine's optimization profile (max {runner.max_batch})"
                )
            else:
                active.append((fig, timers[fig.name]))
        if not active:
            continue
        feeds = batch_feeds(dataset, b)
        reps: dict[str, int] = {}
        per_round = cfg.min_seconds / cfg.min_iterations
        for fig, timer in active:
            timer.set_feeds(feeds)
            timer.time_calls(cfg.warmup_iterations)
            (probe,) = timer.time_calls(1)
            # 5 % over the share, so that min_iterations rounds also reach min_seconds.
            reps[fig.name] = int(min(1000, max(1, math.ceil(1.05 * per_round / max(probe, 1e-9)))))
        calls: dict[str, list[float]] = {fig.name: [] for fig, _ in active}
        rounds: dict[str, list[float]] = {fig.name: [] for fig, _ in active}
        r = 0
        while True:
            shift = r % len(active)
            for fig, timer in active[shift:] + active[:shift]:
                sleep(settle_s)
                times = timer.time_calls(reps[fig.name])
                calls[fig.name].extend(times)
                rounds[fig.name].append(float(np.median(times)))
            r += 1
            progress.step(f"benchmark batch {b}", r, cfg.min_iterations, unit="rounds")
            enough = all(sum(t) >= cfg.min_seconds for t in calls.values())
            if (r >= cfg.min_iterations and enough) or r >= max_rounds_factor * cfg.min_iterations:
                break
        for fig, timer in active:
            fig.latency[b] = latency_figures(b, calls[fig.name], rounds[fig.name], timed_in=timer.where)


@dataclass
class AccuracyFigures:
    """A candidate's outputs against the FP32 reference on the evaluation samples, per output.

    Judged by :func:`vxdeploy.components.verify.accuracy.measure_accuracy`, the same gate as INT8
    calibration's: each output by its own task and metric (``outputs``). ``drop_points`` is the
    worst drop over the drop-judged outputs (``drop_basis`` names its metric) and ``cosine_mean``
    the worst mean per-row cosine over the cosine-gated ones; ``within_budget`` and ``reason`` are
    the verdict. ``top1_agreement`` / ``task_accuracy`` / ``reference_accuracy`` (fractions) are
    the first classification output's, for the tables.
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
    within_budget: bool = True
    reason: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def judged_by(self) -> str:
        """Each output's metric and figure, e.g. ``logits: top1_accuracy 91.2 (FP32 91.4)``."""
        parts = []
        for o in self.outputs:
            value = o.get("candidate_value")
            fp32 = o.get("fp32_value")
            text = f"{o['name']}: {o['metric']}"
            if value is not None:
                text += f" {value:.4g}" + (f" (FP32 {fp32:.4g})" if fp32 is not None else "")
            if o.get("drop_points") is not None:
                text += f", drop {o['drop_points']:.3g} pts"
            parts.append(text)
        return "; ".join(parts)


def accuracy_figures(result: AccuracyResult) -> AccuracyFigures:
    """The selection's view of one accuracy verdict."""
    cls = result.first("classification")
    agreement = cls.figures.get("top1_agreement_%") if cls is not None else None
    task = cls.figures.get("top1_accuracy_%") if cls is not None else None
    ref_task = cls.figures.get("fp32_top1_accuracy_%") if cls is not None else None
    return AccuracyFigures(
        samples=result.samples,
        max_abs_diff=result.max_abs_diff,
        cosine_mean=result.min_cosine,
        cosine_min=min((c.cosine_min for c in result.comparisons), default=1.0),
        top1_agreement=None if agreement is None else agreement / 100.0,
        task_accuracy=None if task is None else task / 100.0,
        reference_accuracy=None if ref_task is None else ref_task / 100.0,
        drop_points=result.drop_points,
        drop_basis=result.drop_basis,
        within_budget=result.within_budget,
        reason=result.reason,
        outputs=[asdict(o) for o in result.outputs],
    )


def compare_with_reference(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    signature: ModelSignature,
    cfg: SelectionConfig,
    targets: Mapping[str, np.ndarray] | None = None,
) -> AccuracyFigures:
    """Judge a candidate's outputs against the reference's, output by output (first axis = samples)."""
    result = measure_accuracy(
        reference,
        candidate,
        metrics=output_metrics(signature),
        targets=targets,
        accuracy_budget=cfg.accuracy_budget,
        min_cosine=cfg.min_cosine,
    )
    return accuracy_figures(result)


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
    speedup: dict[int, SpeedupFigures] = field(default_factory=dict)
    """Throughput relative to the reference per batch size, from the same interleaved rounds."""

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
        d["speedup"] = {str(b): asdict(v) for b, v in sorted(self.speedup.items())}
        return d


def evaluation_batch_sizes(signature: ModelSignature, cfg: SelectionConfig) -> list[int]:
    """The batch sizes to time: the configured ones, or the model's fixed batch when it has no dynamic one."""
    fixed = signature.fixed_batch
    return list(cfg.batch_sizes) if fixed is None else [fixed]


def batch_feeds(dataset: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """``batch_size`` real samples (repeated when the dataset has fewer)."""
    n = len(dataset)
    idx = np.arange(batch_size) % n
    return {k: np.ascontiguousarray(v[idx]) for k, v in dataset.inputs.items()}


def run_all(
    runner: Runner, dataset: Dataset, batch_size: int, fixed_batch: bool = False
) -> dict[str, np.ndarray]:
    """Every sample of ``dataset`` through ``runner`` in batches; outputs concatenated per output.

    With ``fixed_batch`` (a model without a dynamic batch) the last short batch is dropped.
    """
    return run_batches(runner, dataset.inputs, (batch_size,), fixed_batch=fixed_batch)


def measure_runner(
    figures: CandidateFigures,
    runner: Runner,
    dataset: Dataset,
    reference_outputs: Mapping[str, np.ndarray],
    signature: ModelSignature,
    batch_sizes: Sequence[int],
    cfg: SelectionConfig,
    *,
    timed: bool = True,
) -> CandidateFigures:
    """Fill ``figures`` with ``runner``'s accuracy against ``reference_outputs`` and its latency.

    With ``timed`` False only the accuracy is measured (:func:`time_interleaved` times the
    runners together afterwards).
    """
    fixed = not all(spec.batched for spec in signature.inputs)
    eval_batch = max(batch_sizes)
    if runner.max_batch is not None:
        eval_batch = min(eval_batch, runner.max_batch)
    outputs = run_all(runner, dataset, eval_batch, fixed_batch=fixed)
    n = len(next(iter(outputs.values())))
    metrics = output_metrics(signature)
    targets = targets_for(metrics, dataset.targets, dataset.labels)
    figures.accuracy = compare_with_reference(
        {k: v[:n] for k, v in reference_outputs.items()},
        outputs,
        signature,
        cfg,
        {k: v[:n] for k, v in targets.items()},
    )
    for b in batch_sizes if timed else ():
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
    reference_opener: RunnerOpener | None = None,
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
        reference_opener: A picklable recipe that opens the reference again, so that it is timed
            in a process of its own like every candidate (without one it is timed in this
            process, and ``timed_in`` says so).

    Returns:
        Figures for every candidate; those not built or not runnable here carry ``rejected_reason``.
    """
    signature = manifest.model_signature()
    samples = dataset.take(min(len(dataset), cfg.max_eval_samples))
    batch_sizes = evaluation_batch_sizes(signature, cfg)
    fixed = not all(spec.batched for spec in signature.inputs)
    reference_outputs = run_all(reference, samples, max(batch_sizes), fixed_batch=fixed)
    results: list[CandidateFigures] = []
    opened: list[tuple[CandidateFigures, Runner]] = []
    openers: dict[str, RunnerOpener | None] = {}
    try:
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
                measure_runner(
                    ref_fig, reference, samples, reference_outputs, signature, batch_sizes, cfg, timed=False
                )
            )
            opened.append((ref_fig, reference))
            openers[ref_fig.name] = reference_opener
        for fig, runner in extra_runners:
            results.append(
                _measure_safely(
                    fig,
                    partial(_given, runner),
                    samples,
                    reference_outputs,
                    signature,
                    batch_sizes,
                    cfg,
                    opened,
                )
            )
        for cand in manifest.candidates:
            fig = _figures_of(cand)
            if not cand.built:
                fig.rejected_reason = f"not built ({cand.status}): {cand.reason}"
                results.append(fig)
                continue
            opener = partial(load_candidate_runner, cand, candidates_dir, signature)
            openers[fig.name] = opener
            results.append(
                _measure_safely(
                    fig,
                    opener,
                    samples,
                    reference_outputs,
                    signature,
                    batch_sizes,
                    cfg,
                    opened,
                )
            )
        # Timed together, round by round, so that the machine's load falls on every runner alike.
        time_interleaved(opened, samples, batch_sizes, cfg, openers=openers)
    finally:
        for _fig, runner in opened:
            if runner is not reference:
                runner.close()
    return BenchmarkResult(results, reference.name, len(next(iter(reference_outputs.values()))), batch_sizes)


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
    reference_outputs: Mapping[str, np.ndarray],
    signature: ModelSignature,
    batch_sizes: Sequence[int],
    cfg: SelectionConfig,
    opened: list[tuple[CandidateFigures, Runner]],
) -> CandidateFigures:
    """Open one runner and measure its accuracy; a runner that cannot open or breaks is rejected, not fatal.

    A runner that works is appended to ``opened`` (still open) for the interleaved timing.
    """
    try:
        runner = open_runner()
    except CandidateUnavailable as exc:
        fig.rejected_reason = f"cannot run on this machine: {exc}"
        return fig
    try:
        measure_runner(fig, runner, samples, reference_outputs, signature, batch_sizes, cfg, timed=False)
    except Exception as exc:  # a candidate that crashes loses, the others are still measured
        log.exception("measuring %s failed", fig.name)
        fig.rejected_reason = f"failed while measuring: {type(exc).__name__}: {exc}"
        runner.close()
        return fig
    opened.append((fig, runner))
    return fig
