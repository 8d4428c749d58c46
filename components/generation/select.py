"""Selection for a generation model: measure each part's candidates, choose per part, check the whole.

1. **Real activations.** The FP32 parts (each part's ``onnxruntime_fp32`` candidate, the export
   itself) caption the evaluation images, and give each part's inputs on the way
   (:meth:`~vxdeploy.components.generation.loop.RunnerParts.part_inputs`): the images for the vision
   encoder, its features for the projector, the image tokens and ``bos`` ids for the prefill, the
   first decode step's ids and cache for the step. Those are each part's evaluation set.
2. **Per part**, every built candidate is timed at ``selection.batch_sizes`` on those activations,
   in interleaved rounds, each runner in a worker process of its own
   (:func:`vxdeploy.components.select.benchmark.time_interleaved`, the single-model timing rules),
   beside the part's PyTorch program as the reference. Its outputs are compared with the FP32 part's
   (cosine, shown), and its accuracy is judged **end to end**: captions generated with that part
   swapped in and every other part FP32, exact match against the references in points (against FP32
   agreement when the data has no references). The part's choice is the shared policy's
   (:func:`vxdeploy.components.select.policy.select_candidate`: fastest, ties to the more accurate,
   then the simpler) among the candidates within ``selection.accuracy_budget``.
3. **The combination** of the choices is generated end to end; while it breaks the budget, the part
   whose own drop was largest goes back to FP32 (said in ``fallbacks``).
4. **End-to-end figures** of the selected combination and of FP32 everywhere, in this process on
   the same images, interleaved: caption exact match, agreement with FP32, encode ms, time to first
   token, tokens/s and p50/p95 of whole generations at batch 1, captions/s at the largest batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.common.artifacts import Candidates, SelectedModel, SourceModel
from vxdeploy.components.common.config import SelectionConfig, parse_section
from vxdeploy.components.common.data import Dataset, load_dataset
from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.common.stage import (
    StageReport,
    log_metrics,
    markdown_table,
    timed,
    write_json,
    write_text_atomic,
)
from vxdeploy.components.compile.candidates import (
    Candidate,
    CandidateManifest,
    copy_folder_atomically,
    read_manifest,
)
from vxdeploy.components.compile.gpus import check_build_hardware
from vxdeploy.components.compile.ort import ALLOW_SPINNING_ENV
from vxdeploy.components.generation.loop import Generation, RunnerParts, agreement, batch_size, exact_match
from vxdeploy.components.generation.spec import GenerationSpec
from vxdeploy.components.select.benchmark import (
    AccuracyFigures,
    BenchmarkResult,
    CandidateFigures,
    compare_with_reference,
    evaluation_batch_sizes,
    time_interleaved,
)
from vxdeploy.components.select.isolated import MEASUREMENT_ENV, RunnerOpener
from vxdeploy.components.select.policy import SelectionDecision, select_candidate
from vxdeploy.components.select.runners import load_candidate_runner, reference_runner
from vxdeploy.components.select.table import decision_markdown, summary_rows
from vxdeploy.components.verify.runners import Runner, run_batches

log = logging.getLogger(__name__)

FP32 = "onnxruntime_fp32"
"""Each part's FP32 candidate: the export as it is, the baseline of every comparison."""


# --- generations over the evaluation images ------------------------------------------------------


def generate_all(
    parts: RunnerParts, images: Mapping[str, np.ndarray], batch: int
) -> tuple[Generation, float]:
    """Captions of every image in batches of ``batch``, and captions per second.

    The rate is ``batch`` over the median wall time of the full batches (all batches when there is
    no full one), so that one descheduled batch on a shared machine does not set it.
    """
    n = batch_size(images)
    gens = [parts.generate({k: v[i : i + batch] for k, v in images.items()}) for i in range(0, n, batch)]
    full = [g.total_ms for g in gens if len(g.texts) == batch]
    rows, times = (batch, full) if full else (n, [g.total_ms for g in gens])
    median_s = float(np.median(times)) / 1e3
    rate = rows / median_s if median_s > 0 else 0.0
    tokens = np.concatenate([g.tokens for g in gens])
    return replace(gens[0], tokens=tokens, texts=[t for g in gens for t in g.texts]), rate


def part_activations(parts: RunnerParts, images: Mapping[str, np.ndarray], batch: int) -> dict[str, Dataset]:
    """Role -> the real inputs that part sees (:meth:`RunnerParts.part_inputs`), every image, by batch."""
    n = batch_size(images)
    chunks = [parts.part_inputs({k: v[i : i + batch] for k, v in images.items()}) for i in range(0, n, batch)]
    return {
        role: Dataset({name: np.concatenate([c[role][name] for c in chunks]) for name in chunks[0][role]})
        for role in chunks[0]
    }


# --- end-to-end accuracy ------------------------------------------------------------------------


@dataclass
class EndToEndAccuracy:
    """Captions of one combination of part candidates against the references and against FP32.

    ``exact`` is None without references; ``drop_points`` is then the disagreement with FP32.
    """

    combination: dict[str, str]
    samples: int
    exact: float | None
    fp32_exact: float | None
    agreement: float
    drop_points: float
    drop_basis: str
    within_budget: bool
    captions_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    combination: Mapping[str, str],
    tokens: np.ndarray,
    texts: Sequence[str],
    fp32_tokens: np.ndarray,
    fp32_texts: Sequence[str],
    references: Sequence[str] | None,
    budget: float,
) -> EndToEndAccuracy:
    """One combination's captions judged against the references (or FP32 agreement) and the budget."""
    agree = agreement(tokens, fp32_tokens)
    exact: float | None = None
    fp32_exact: float | None = None
    if references is not None:
        exact, fp32_exact = exact_match(texts, references), exact_match(fp32_texts, references)
        drop, basis = 100.0 * (fp32_exact - exact), "caption exact match, end to end"
    else:
        drop, basis = 100.0 * (1.0 - agree), "caption agreement with FP32, end to end"
    return EndToEndAccuracy(
        combination=dict(combination),
        samples=len(texts),
        exact=exact,
        fp32_exact=fp32_exact,
        agreement=agree,
        drop_points=drop,
        drop_basis=basis,
        within_budget=drop <= budget + 1e-9,
    )


def end_to_end_accuracy_figures(
    part_accuracy: AccuracyFigures | None, e2e: EndToEndAccuracy
) -> AccuracyFigures:
    """A part candidate's accuracy for the policy: its own outputs' cosine to FP32, the end-to-end verdict.

    The policy ranks by the end-to-end drop; the part's cosine is shown (and breaks ties), not gated.
    """
    base = part_accuracy or AccuracyFigures(
        samples=e2e.samples,
        max_abs_diff=0.0,
        cosine_mean=1.0,
        cosine_min=1.0,
        top1_agreement=None,
        task_accuracy=None,
        reference_accuracy=None,
        drop_points=None,
        drop_basis="",
    )
    return replace(
        base,
        top1_agreement=e2e.agreement,
        task_accuracy=e2e.exact,
        reference_accuracy=e2e.fp32_exact,
        drop_points=e2e.drop_points,
        drop_basis=e2e.drop_basis,
        within_budget=e2e.within_budget,
        reason=""
        if e2e.within_budget
        else f"{e2e.drop_basis} drops {e2e.drop_points:.2f} points (agreement with FP32 {e2e.agreement:.3f})",
    )


# --- the stage's pieces ---------------------------------------------------------------------------


@dataclass
class PartSelection:
    """One part's measurement and decision."""

    part: str
    role: str
    manifest: CandidateManifest
    signature: ModelSignature
    result: BenchmarkResult
    decision: SelectionDecision
    end_to_end: dict[str, EndToEndAccuracy] = field(default_factory=dict)
    """Candidate name -> the captions with that candidate in this part and FP32 elsewhere."""

    @property
    def chosen(self) -> str:
        return self.decision.selected or FP32

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.manifest.candidates if c.name == name)

    def figures(self, name: str) -> CandidateFigures:
        return next(f for f in self.result.figures if f.name == name and not f.reference)


@dataclass
class EndToEndTiming:
    """Whole generations at batch 1, one image per call, FP32 and the selection interleaved."""

    generations: int
    encode_ms: float
    ttft_ms: float
    tokens_per_s: float
    p50_ms: float
    p95_ms: float

    @classmethod
    def of(cls, gens: Sequence[Generation]) -> EndToEndTiming:
        total = np.asarray([g.total_ms for g in gens])
        return cls(
            generations=len(gens),
            encode_ms=float(np.median([g.encode_ms for g in gens])),
            ttft_ms=float(np.median([g.ttft_ms for g in gens])),
            tokens_per_s=float(np.median([g.tokens_per_s for g in gens if g.tokens_per_s > 0] or [0.0])),
            p50_ms=float(np.percentile(total, 50)),
            p95_ms=float(np.percentile(total, 95)),
        )


def time_generations(
    combos: Mapping[str, RunnerParts],
    images: Mapping[str, np.ndarray],
    cfg: SelectionConfig,
    *,
    max_calls: int = 2000,
) -> dict[str, EndToEndTiming]:
    """Time batch-1 generations of each combination, alternating image by image (order rotating).

    After ``warmup_iterations`` calls each, images are generated one at a time until every
    combination has ``min_iterations`` calls and ``min_seconds`` of them (at most ``max_calls``).
    """
    n = batch_size(images)
    names = list(combos)

    def one(i: int) -> dict[str, np.ndarray]:
        return {k: v[i % n : i % n + 1] for k, v in images.items()}

    for name in names:
        for i in range(cfg.warmup_iterations):
            combos[name].generate(one(i))
    gens: dict[str, list[Generation]] = {name: [] for name in names}
    i = 0
    while i < max_calls:
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            gens[name].append(combos[name].generate(one(i)))
        i += 1
        enough = all(sum(g.total_ms for g in v) / 1e3 >= cfg.min_seconds for v in gens.values())
        if i >= cfg.min_iterations and enough:
            break
    return {name: EndToEndTiming.of(v) for name, v in gens.items()}


def _part_figures(cand: Candidate) -> CandidateFigures:
    return CandidateFigures(
        name=cand.name,
        kind=cand.kind,
        precision=cand.precision,
        runtime=cand.runtime,
        device=cand.device,
        candidate=cand.to_dict(),
    )


class GenerationSelection:
    """Everything selection needs across parts: manifests, signatures, FP32 runners, references."""

    def __init__(
        self,
        candidates_dir: str | Path,
        meta: Candidates,
        spec: GenerationSpec,
        dataset: Dataset,
        cfg: SelectionConfig,
        source_parts: Mapping[str, Path | None],
    ) -> None:
        self.dir = Path(candidates_dir)
        self.spec = spec
        self.cfg = cfg
        self.dataset = dataset
        self.images = {k: v for k, v in dataset.inputs.items()}
        self.source_parts = dict(source_parts)
        self.manifests = {p: read_manifest(self.dir / p) for p in spec.part_names}
        self.signatures = {
            p: ModelSignature.from_dict(meta.parts.get(p, {}).get("signature") or self.manifests[p].signature)
            for p in spec.part_names
        }
        self.references: list[str] | None = None
        targets = dataset.targets.get("output_ids")
        labels = targets if targets is not None else dataset.labels
        if labels is not None:
            self.references = spec.references(labels)
        self._runners: dict[tuple[str, str], Runner] = {}
        for p in spec.part_names:
            if not any(c.name == FP32 and c.built for c in self.manifests[p].candidates):
                raise ConfigError(
                    "compilation.candidates",
                    [c.name for c in self.manifests[p].built],
                    f"part {p!r} has no built {FP32} candidate: a generation model's selection compares "
                    f"every part against its FP32 export; include {FP32} in compilation.candidates",
                )
        largest = max(cfg.batch_sizes)
        self.eval_batch = largest

    def runner(self, part: str, name: str) -> Runner:
        """The (cached, in-process) runner of ``part``'s candidate ``name``.

        Its ONNX Runtime pools do not spin-wait, as in the timing workers
        (:data:`vxdeploy.components.select.isolated.MEASUREMENT_ENV`): the end-to-end generations are
        timed in this process, where several parts' pools would otherwise spin against each other.
        """
        key = (part, name)
        if key not in self._runners:
            cand = next(c for c in self.manifests[part].candidates if c.name == name)
            with _env(ALLOW_SPINNING_ENV, MEASUREMENT_ENV[ALLOW_SPINNING_ENV]):
                self._runners[key] = load_candidate_runner(cand, self.dir / part, self.signatures[part])
        return self._runners[key]

    def opener(self, part: str, name: str) -> RunnerOpener:
        cand = next(c for c in self.manifests[part].candidates if c.name == name)
        return partial(load_candidate_runner, cand, self.dir / part, self.signatures[part])

    def parts_for(self, combination: Mapping[str, str]) -> RunnerParts:
        """A runnable generation of ``combination`` (part -> candidate name; FP32 for parts not named)."""
        runners = {
            role: self.runner(self.spec.part(role), combination.get(self.spec.part(role), FP32))
            for role in self.spec.roles
        }
        sigs = {role: self.signatures[self.spec.part(role)] for role in self.spec.roles}
        return RunnerParts(runners, sigs, self.spec)

    def batch_for(self, combination: Mapping[str, str]) -> int:
        caps = [self.runner(p, combination.get(p, FP32)).max_batch for p in self.spec.part_names]
        return min([self.eval_batch, *[c for c in caps if c]])

    def close(self) -> None:
        for r in self._runners.values():
            r.close()
        self._runners.clear()


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (sessions read it when they open)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def part_policy(cfg: SelectionConfig) -> SelectionConfig:
    """The selection section as it applies to one part.

    The end-to-end gate has judged accuracy, so the part's own cosine is shown, not gated again;
    ``selection.latency_budget_ms`` bounds whole generations (checked on the end-to-end figures),
    not one part's call, so a part under ``max_throughput_within_latency_budget`` is ranked by
    throughput.
    """
    update: dict[str, Any] = {"min_cosine": 0.0}
    if cfg.policy == "max_throughput_within_latency_budget":
        update["policy"] = "max_throughput"
    return cfg.model_copy(update=update)


def select_parts(sel: GenerationSelection) -> tuple[dict[str, PartSelection], Generation]:
    """Measure every part's candidates and choose per part (steps 1 and 2 of the module docstring)."""
    cfg, spec = sel.cfg, sel.spec
    fp32_parts = sel.parts_for({})
    fp32_gen, _ = generate_all(fp32_parts, sel.images, sel.batch_for({}))
    activations = part_activations(fp32_parts, sel.images, sel.batch_for({}))
    out: dict[str, PartSelection] = {}
    for role in spec.roles:
        part = spec.part(role)
        manifest, signature = sel.manifests[part], sel.signatures[part]
        data = activations[role]
        batch_sizes = evaluation_batch_sizes(signature, cfg)
        fp32_outputs = run_batches(sel.runner(part, FP32), data.inputs, (max(batch_sizes),))
        figures: list[CandidateFigures] = []
        entries: list[tuple[CandidateFigures, Runner]] = []
        openers: dict[str, RunnerOpener | None] = {}
        source = sel.source_parts.get(part)
        reference: Runner | None = None
        if cfg.measure_reference and source is not None:
            reference = reference_runner(source, "torch_export", signature)
            ref_fig = CandidateFigures(
                reference.name, "reference", "fp32", "pytorch", reference.device, reference=True
            )
            ref_fig.accuracy = compare_with_reference(
                fp32_outputs, run_batches(reference, data.inputs, (max(batch_sizes),)), signature, cfg
            )
            figures.append(ref_fig)
            entries.append((ref_fig, reference))
            openers[ref_fig.name] = partial(reference_runner, source, "torch_export", signature)
        e2e: dict[str, EndToEndAccuracy] = {}
        for cand in manifest.candidates:
            fig = _part_figures(cand)
            figures.append(fig)
            if not cand.built:
                fig.rejected_reason = f"not built ({cand.status}): {cand.reason}"
                continue
            try:
                runner = sel.runner(part, cand.name)
                outputs = run_batches(
                    runner, data.inputs, (min(max(batch_sizes), runner.max_batch or 1 << 30),)
                )
                own = compare_with_reference(fp32_outputs, outputs, signature, cfg)
                combo = {part: cand.name}
                gen, rate = generate_all(sel.parts_for(combo), sel.images, sel.batch_for(combo))
            except Exception as exc:  # a candidate that cannot run here loses; the others are measured
                log.warning("part %s: measuring %s failed: %s", part, cand.name, exc)
                fig.rejected_reason = f"failed while measuring: {type(exc).__name__}: {exc}"
                continue
            verdict = judge(
                combo,
                gen.tokens,
                gen.texts,
                fp32_gen.tokens,
                fp32_gen.texts,
                sel.references,
                cfg.accuracy_budget,
            )
            verdict.captions_per_s = rate
            e2e[cand.name] = verdict
            fig.accuracy = end_to_end_accuracy_figures(own, verdict)
            if not verdict.within_budget:
                fig.rejected_reason = (
                    f"{fig.accuracy.reason}, over selection.accuracy_budget {cfg.accuracy_budget} points"
                )
            entries.append((fig, runner))
            openers[fig.name] = sel.opener(part, cand.name)
        try:
            time_interleaved(entries, data, batch_sizes, cfg, openers=openers)
        finally:
            if reference is not None:
                reference.close()
        decision = select_candidate(figures, part_policy(cfg))
        result = BenchmarkResult(figures, reference.name if reference else FP32, len(data), batch_sizes)
        out[part] = PartSelection(part, role, manifest, signature, result, decision, e2e)
    return out, fp32_gen


@dataclass
class Combination:
    """The chosen candidate per part after the end-to-end check, and what fell back to FP32."""

    chosen: dict[str, str]
    accuracy: EndToEndAccuracy
    fallbacks: list[dict[str, Any]] = field(default_factory=list)


def check_combination(
    chosen: Mapping[str, str],
    alone_drop: Mapping[str, float],
    evaluate: Callable[[dict[str, str]], EndToEndAccuracy],
    budget: float,
) -> Combination:
    """Judge every part's choice together; while over budget, send the worst part back to FP32.

    Args:
        chosen: Part -> its chosen candidate.
        alone_drop: Part -> the end-to-end drop of its choice with every other part FP32.
        evaluate: Generates with a combination and judges it (:func:`judge`).
        budget: ``selection.accuracy_budget`` (points).

    Returns:
        The combination served, its accuracy and each fallback with its reason.
    """
    current = dict(chosen)
    fallbacks: list[dict[str, Any]] = []
    while True:
        verdict = evaluate(dict(current))
        swapped = [p for p, c in current.items() if c != FP32]
        if verdict.within_budget or not swapped:
            return Combination(dict(current), verdict, fallbacks)
        # The part that loses most alone goes first (ties: the later part, nearer the tokens).
        worst = max(reversed(swapped), key=lambda p: alone_drop.get(p, 0.0))
        fallbacks.append(
            {
                "part": worst,
                "from": current[worst],
                "to": FP32,
                "combination_drop_points": verdict.drop_points,
                "reason": (
                    f"the combination {_combo_text(current)} drops {verdict.drop_points:.2f} points "
                    f"({verdict.drop_basis}), over selection.accuracy_budget {budget:g}; {worst} "
                    f"(alone: {alone_drop.get(worst, 0.0):.2f} points) goes back to {FP32}"
                ),
            }
        )
        log.warning("%s", fallbacks[-1]["reason"])
        current[worst] = FP32


def evaluator(sel: GenerationSelection, fp32: Generation) -> Callable[[dict[str, str]], EndToEndAccuracy]:
    """Captions of a combination over the evaluation images, judged against FP32 and the references."""

    def evaluate(combination: dict[str, str]) -> EndToEndAccuracy:
        gen, rate = generate_all(sel.parts_for(combination), sel.images, sel.batch_for(combination))
        verdict = judge(
            combination,
            gen.tokens,
            gen.texts,
            fp32.tokens,
            fp32.texts,
            sel.references,
            sel.cfg.accuracy_budget,
        )
        verdict.captions_per_s = rate
        return verdict

    return evaluate


def _combo_text(chosen: Mapping[str, str]) -> str:
    return ", ".join(f"{p}={c}" for p, c in chosen.items())


def end_to_end_figures(sel: GenerationSelection, combo: Combination, fp32: Generation) -> dict[str, Any]:
    """``figures.end_to_end``: accuracy of FP32 and of the selection, and timing of both at batch 1."""
    all_fp32 = all(c == FP32 for c in combo.chosen.values())
    combos = {"selected": sel.parts_for(combo.chosen)}
    if not all_fp32:  # the same parts need timing once
        combos["fp32"] = sel.parts_for({})
    timing = time_generations(combos, sel.images, sel.cfg)
    sel_t = timing["selected"]
    fp32_t = timing.get("fp32", sel_t)
    acc = combo.accuracy
    fp32_rate = acc.captions_per_s
    if not all_fp32:
        _, fp32_rate = generate_all(combos["fp32"], sel.images, sel.batch_for({}))
    return {
        "samples": acc.samples,
        "fp32_exact": acc.fp32_exact,
        "selected_exact": acc.exact,
        "agreement": acc.agreement,
        "drop_points": acc.drop_points,
        "drop_basis": acc.drop_basis,
        "encode_ms": sel_t.encode_ms,
        "ttft_ms": sel_t.ttft_ms,
        "tokens_per_s": sel_t.tokens_per_s,
        "p50_ms": sel_t.p50_ms,
        "p95_ms": sel_t.p95_ms,
        "generations_timed": sel_t.generations,
        "captions_per_s": acc.captions_per_s,
        "batch": sel.batch_for(combo.chosen),
        "fp32": {
            "encode_ms": fp32_t.encode_ms,
            "ttft_ms": fp32_t.ttft_ms,
            "tokens_per_s": fp32_t.tokens_per_s,
            "p50_ms": fp32_t.p50_ms,
            "p95_ms": fp32_t.p95_ms,
            "captions_per_s": fp32_rate,
        },
        "speedup_p50": fp32_t.p50_ms / sel_t.p50_ms if sel_t.p50_ms > 0 else None,
        **(
            {
                "latency_budget_ms": sel.cfg.latency_budget_ms,
                "p95_within_latency_budget": sel_t.p95_ms <= sel.cfg.latency_budget_ms,
            }
            if sel.cfg.latency_budget_ms is not None
            else {}
        ),
        "measured": "in process, batch 1, "
        + (
            "FP32 everywhere (the selection)"
            if all_fp32
            else "FP32 and the selection alternating image by image"
        ),
    }


def part_decision_rows(parts: Mapping[str, PartSelection], combo: Combination) -> list[dict[str, Any]]:
    """The per-part decision table: what each part serves and why."""
    rows = []
    for p, s in parts.items():
        name = combo.chosen[p]
        fig = s.figures(name)
        largest = max(s.result.batch_sizes)
        lat = fig.latency.get(largest)
        fp32_lat = s.figures(FP32).latency.get(largest)
        e2e = s.end_to_end.get(name)
        rows.append(
            {
                "part": p,
                "role": s.role,
                "selected": name,
                "precision": fig.precision,
                "device": fig.device,
                f"p50 ms b{largest}": "" if lat is None else round(lat.p50_ms, 4),
                f"vs {FP32} b{largest}": ""
                if lat is None or fp32_lat is None or lat.p50_ms <= 0
                else f"{fp32_lat.p50_ms / lat.p50_ms:.2f}x",
                "end-to-end drop (pts)": "" if e2e is None else round(e2e.drop_points, 2),
                "candidates": ", ".join(
                    f"{f.name}{'' if not f.rejected_reason else ' (rejected)'}"
                    for f in s.result.figures
                    if not f.reference
                ),
                "why": s.decision.reason,
            }
        )
    return rows


def selection_markdown(parts: Mapping[str, PartSelection], combo: Combination, e2e: Mapping[str, Any]) -> str:
    """The selection's Markdown: per-part decisions, the end-to-end figures, then each part's table."""
    lines = [
        f"**Selected per part**: {_combo_text(combo.chosen)}",
        "",
        markdown_table(part_decision_rows(parts, combo)),
        "",
        "**End to end** (" + str(e2e.get("measured", "")) + f", {e2e.get('samples')} captions):",
        "",
        markdown_table(end_to_end_rows(e2e)),
    ]
    for f in combo.fallbacks:
        lines += [f"> **Fallback:** {f['reason']}", ""]
    for p, s in parts.items():
        lines += [
            f"### Part {p} ({s.role})",
            "",
            decision_markdown(s.result.figures, s.decision, s.result.batch_sizes),
        ]
    return "\n".join(lines) + "\n"


def end_to_end_rows(e2e: Mapping[str, Any]) -> list[dict[str, Any]]:
    """FP32 and the selection side by side: caption accuracy, TTFT, tokens/s, encode, p50/p95."""

    def pct(v: Any) -> Any:
        return "" if v is None else round(100.0 * float(v), 2)

    def row(label: str, exact: Any, agree: Any, fig: Mapping[str, Any]) -> dict[str, Any]:
        figures = {
            "encode ms": ("encode_ms", 4),
            "TTFT ms": ("ttft_ms", 4),
            "tokens/s": ("tokens_per_s", 1),
            "p50 ms": ("p50_ms", 4),
            "p95 ms": ("p95_ms", 4),
            "captions/s": ("captions_per_s", 1),
        }
        return {
            "": label,
            "caption exact match %": pct(exact),
            "agreement with FP32 %": pct(agree),
            **{col: round(float(fig.get(key, 0.0)), digits) for col, (key, digits) in figures.items()},
        }

    return [
        row("FP32 (every part)", e2e.get("fp32_exact"), 1.0, e2e.get("fp32") or {}),
        row("selected", e2e.get("selected_exact"), e2e.get("agreement"), e2e),
    ]


def _headline(f: CandidateFigures) -> dict[str, Any]:
    from vxdeploy.components.select.stage import headline_figures

    return headline_figures(f)


def write_selected(
    dest: str | Path,
    sel: GenerationSelection,
    parts: Mapping[str, PartSelection],
    combo: Combination,
    e2e: Mapping[str, Any],
    signature: Mapping[str, Any],
) -> SelectedModel:
    """Copy each part's chosen candidate to ``dest/<part>/`` and return the selected model's metadata."""
    meta_parts: dict[str, dict[str, Any]] = {}
    for p, s in parts.items():
        cand = s.candidate(combo.chosen[p])
        copy_folder_atomically((sel.dir / p / cand.file).parent, Path(dest) / p)
        meta_parts[p] = {
            "role": s.role,
            "candidate": cand.name,
            "kind": cand.kind,
            "runtime": cand.runtime,
            "precision": cand.precision,
            "device": cand.device,
            "file": f"{p}/{Path(cand.file).name}",
            "sha256": cand.sha256,
            "versions": cand.versions,
            "options": cand.options,
            "signature": s.signature.to_dict(),
            "figures": _headline(s.figures(cand.name)),
            **({"engine": cand.engine} if cand.runtime == "tensorrt" else {}),
            **(
                {"gpu_name": cand.gpu_name, "compute_capability": cand.compute_capability}
                if cand.gpu_name
                else {}
            ),
        }
    encoder = meta_parts[sel.spec.part("vision_encoder")]

    def common(key: str, mixed: str) -> str:
        values = {str(v[key]) for v in meta_parts.values()}
        return values.pop() if len(values) == 1 else mixed

    gpu = next((v for v in meta_parts.values() if v.get("gpu_name")), None)
    return SelectedModel(
        name=_combo_text(combo.chosen),
        kind=encoder["kind"],
        file="",
        signature=dict(signature),
        precision=common("precision", "mixed"),
        runtime=common("runtime", "mixed"),
        device="cuda" if any(v["device"] == "cuda" for v in meta_parts.values()) else "cpu",
        sha256="",
        figures={"end_to_end": dict(e2e), "parts": {p: v["figures"] for p, v in meta_parts.items()}},
        gpu_name=gpu["gpu_name"] if gpu else None,
        compute_capability=gpu["compute_capability"] if gpu else None,
        parts=meta_parts,
        generation=sel.spec.to_dict(),
    )


def run(
    candidates: Any,
    source_model: Any,
    eval_data: Any,
    selection: dict[str, Any],
    service_levels: dict[str, Any],
    deployment: dict[str, Any],
    build_accelerator_type: str,
    build_accelerator_count: int,
    selected_model: Any,
    benchmark: Any,
    metrics: Any,
    table: Any,
    report: Any,
) -> None:
    """The select stage for a generation model (same artifacts as the single-model stage).

    Called by :func:`vxdeploy.components.select.stage.run`, whose ``reports_failure`` covers it.
    Service levels and cost of a generation model are judged on the served generator's figures
    (time to first token, p95 of whole generations), after packaging, not here.
    """
    del service_levels, deployment
    cfg = parse_section(SelectionConfig, selection, "selection")
    rep = StageReport("select")
    with timed(rep):
        device = check_build_hardware(build_accelerator_type, int(build_accelerator_count))
        meta = Candidates.read(candidates)
        spec = GenerationSpec.from_metadata(candidates)
        signature = ModelSignature.from_dict(meta.signature)
        dataset = load_dataset(eval_data.path, signature, what="data.eval_uri")
        dataset = dataset.take(min(len(dataset), cfg.max_eval_samples))
        source = SourceModel.read(source_model)
        src_parts = getattr(source, "parts", None) or (source_model.metadata or {}).get("parts") or {}
        source_paths: dict[str, Path | None] = {}
        for p in spec.part_names:
            rel = (src_parts.get(p) or {}).get("file")
            path = Path(source_model.path) / rel if rel else None
            fmt = (src_parts.get(p) or {}).get("format", source.format)
            source_paths[p] = path if path is not None and path.is_file() and fmt == "torch_export" else None
        sel = GenerationSelection(candidates.path, meta, spec, dataset, cfg, source_paths)
        try:
            parts, fp32 = select_parts(sel)
            combo = check_combination(
                {p: s.chosen for p, s in parts.items()},
                {p: s.end_to_end[s.chosen].drop_points for p, s in parts.items() if s.chosen in s.end_to_end},
                evaluator(sel, fp32),
                cfg.accuracy_budget,
            )
            for fallback in combo.fallbacks:  # the part's decision is what it serves
                decision = parts[fallback["part"]].decision
                decision.reason = f"{fallback['reason']} (alone it was chosen: {decision.reason})"
                decision.selected = FP32
            e2e = end_to_end_figures(sel, combo, fp32)
        finally:
            sel.close()
    markdown = selection_markdown(parts, combo, e2e)
    write_text_atomic(table.path, markdown)
    write_json(
        benchmark.path,
        {
            "generation": True,
            "parts": {p: {**s.result.to_dict(), "decision": s.decision.to_dict()} for p, s in parts.items()},
            "combination": combo.chosen,
            "combination_accuracy": combo.accuracy.to_dict(),
            "fallbacks": combo.fallbacks,
            "end_to_end": e2e,
        },
    )
    figures: dict[str, Any] = {
        f"e2e_{k}": v for k, v in e2e.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    figures["parts_not_fp32"] = sum(1 for c in combo.chosen.values() if c != FP32)
    figures["fallbacks"] = len(combo.fallbacks)
    log_metrics(metrics, figures)
    selected = _combo_text(combo.chosen)
    reason = _short_reason(e2e, combo.fallbacks)
    rep.summary = {
        "device": device,
        "policy": cfg.policy,
        "selected": selected,
        "reason": reason,
        "generation": True,
        "end_to_end": {k: v for k, v in e2e.items() if not isinstance(v, dict)},
    }
    rep.details = {
        "selected": selected,
        "decision": {
            "policy": cfg.policy,
            "warnings": [f"{p}: {w}" for p, s in parts.items() for w in s.decision.warnings],
        },
        "generation": {
            "combination": combo.chosen,
            "decisions": part_decision_rows(parts, combo),
            "fallbacks": combo.fallbacks,
            "end_to_end": e2e,
            "combination_accuracy": combo.accuracy.to_dict(),
            "parts": {
                p: {
                    "role": s.role,
                    "selected": combo.chosen[p],
                    "batch_sizes": s.result.batch_sizes,
                    "reference": s.result.reference_name,
                    "candidates": summary_rows(s.result.figures, s.decision, s.result.batch_sizes),
                    "decision": s.decision.to_dict(),
                    "end_to_end": {n: v.to_dict() for n, v in s.end_to_end.items()},
                    "benchmark": s.result.to_dict(),
                }
                for p, s in parts.items()
            },
        },
    }
    write_selected(selected_model.path, sel, parts, combo, e2e, meta.signature).write(selected_model)
    rep.write(report.path)


def _short_reason(e2e: dict[str, Any], fallbacks: list[dict[str, Any]]) -> str:
    """One line for the terminal and the report's head; each part's own reason is in its table row."""

    def pct(value: Any) -> str:
        return f"{100 * value:.1f}%" if isinstance(value, int | float) else "-"

    text = (
        "each part the fastest within the end-to-end budget: caption exact match "
        f"{pct(e2e.get('selected_exact'))} (FP32 {pct(e2e.get('fp32_exact'))}), "
        f"agreement with FP32 {pct(e2e.get('agreement'))}"
    )
    if fallbacks:
        text += f"; {len(fallbacks)} part(s) back to FP32 to keep the combination within the budget"
    return text + "; per-part reasons in the report"
