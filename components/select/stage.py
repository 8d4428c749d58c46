"""Select stage: measure every candidate, pick one, write the selected model and the comparison."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from vxdeploy.components.common.artifacts import SelectedModel, SourceModel
from vxdeploy.components.common.config import (
    DeploymentConfig,
    SelectionConfig,
    ServiceLevelConfig,
    parse_section,
)
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.errors import ServiceLevelError
from vxdeploy.components.common.stage import (
    StageReport,
    log_metrics,
    reports_failure,
    timed,
    write_json,
    write_text_atomic,
)
from vxdeploy.components.compile.candidates import Candidate, copy_folder_atomically, read_manifest
from vxdeploy.components.compile.gpus import check_build_hardware
from vxdeploy.components.compile.stage import artifact_file
from vxdeploy.components.cost import (
    CostReport,
    MeasuredCandidate,
    estimate_costs,
    local_cpu_description,
    require_feasible,
    vertex_accelerator_name,
)
from vxdeploy.components.generation.spec import is_generation
from vxdeploy.components.select.benchmark import BenchmarkResult, CandidateFigures, benchmark_candidates
from vxdeploy.components.select.policy import Gate, SelectionDecision, accuracy_gate, select_candidate
from vxdeploy.components.select.runners import reference_runner
from vxdeploy.components.select.table import decision_markdown, summary_rows


def headline_figures(f: CandidateFigures) -> dict[str, Any]:
    """The selected candidate's figures as they go onto its artifact: accuracy and latency per batch size."""
    out: dict[str, Any] = {}
    if f.accuracy is not None:
        acc = asdict(f.accuracy)
        acc.pop("outputs")
        out["accuracy"] = acc
    out["latency"] = {
        str(b): {
            k: getattr(v, k)
            for k in ("p50_ms", "p90_ms", "p99_ms", "throughput", "throughput_mean", "iqr_pct", "iterations")
        }
        for b, v in sorted(f.latency.items())
    }
    return out


def write_selected_model(
    dest: str | Path,
    candidate: Candidate,
    candidates_dir: str | Path,
    figures: CandidateFigures,
    signature: dict[str, Any],
) -> SelectedModel:
    """Copy the chosen candidate's folder to ``dest`` (file by file, atomically) and return its metadata."""
    copy_folder_atomically((Path(candidates_dir) / candidate.file).parent, dest)
    return SelectedModel(
        name=candidate.name,
        kind=candidate.kind,  # type: ignore[arg-type]  # a manifest's kinds are the configured ones
        precision=candidate.precision,
        runtime=candidate.runtime,
        device=candidate.device,
        file=Path(candidate.file).name,
        sha256=candidate.sha256,
        versions=candidate.versions,
        options=candidate.options,
        signature=signature,
        figures=headline_figures(figures),
        engine=candidate.engine if candidate.runtime == "tensorrt" else None,
        gpu_name=candidate.gpu_name or None,
        compute_capability=(candidate.compute_capability or None) if candidate.gpu_name else None,
    )


def selection_metrics(result: BenchmarkResult, decision: SelectionDecision) -> dict[str, Any]:
    """Headline numbers for the KFP Metrics artifact."""
    cands = [f for f in result.figures if not f.reference]
    figures: dict[str, Any] = {
        "candidates_measured": sum(1 for f in cands if f.measured),
        "candidates_rejected": sum(1 for f in cands if f.rejected_reason),
    }
    chosen = next((f for f in cands if f.name == decision.selected), None)
    if chosen is None:
        return figures
    ref = result.reference
    if chosen.accuracy is not None:
        figures["selected_cosine"] = chosen.accuracy.cosine_mean
        figures["selected_max_abs_diff"] = chosen.accuracy.max_abs_diff
        figures["selected_drop_points"] = chosen.accuracy.drop_points
        figures["selected_task_accuracy"] = chosen.accuracy.task_accuracy
    for b, lat in chosen.latency.items():
        figures[f"selected_p50_ms_b{b}"] = lat.p50_ms
        figures[f"selected_p99_ms_b{b}"] = lat.p99_ms
        figures[f"selected_throughput_b{b}"] = lat.throughput
        if ref is not None and b in ref.latency:
            figures[f"selected_speedup_b{b}"] = lat.throughput / ref.latency[b].throughput
    return figures


def measured_on(figures: CandidateFigures, deployment: DeploymentConfig) -> str:
    """Where a candidate was measured, as the cost model names it (CPU model or Vertex GPU)."""
    if figures.device.startswith("cuda"):
        import torch

        gpu = vertex_accelerator_name(torch.cuda.get_device_name(0), deployment.accelerator_type)
        if gpu:
            return gpu
    return local_cpu_description()


def measured_points(
    figures: Sequence[CandidateFigures], deployment: DeploymentConfig
) -> list[MeasuredCandidate]:
    """One cost-model point per candidate per measured batch size."""
    return [
        MeasuredCandidate(
            name=f.name,
            kind=f.kind,
            measured_on=measured_on(f, deployment),
            batch_size=b,
            p50_ms=lat.p50_ms,
            p95_ms=lat.p95_ms,
            p99_ms=lat.p99_ms,
            throughput_rps=lat.throughput,
        )
        for f in figures
        for b, lat in sorted(f.latency.items())
    ]


def price_and_check_service_levels(
    result: BenchmarkResult, cfg: SelectionConfig, targets: ServiceLevelConfig, deployment: DeploymentConfig
) -> tuple[CostReport | None, Gate, ServiceLevelError | None]:
    """Price the candidates within the accuracy budget and check them against the service levels.

    Returns the cost report, a selection gate that rejects a candidate missing a target (naming
    the target and the measured figure), and the error that stops the run before deployment when
    no candidate within the accuracy budget meets the targets.
    """
    within_budget = accuracy_gate(cfg)
    passing = [f for f in result.figures if not f.reference and f.measured and within_budget(f) is None]
    if not passing:
        return None, lambda f: None, None  # the accuracy gate explains the failure
    points = measured_points(passing, deployment)
    cost = estimate_costs(points, targets, deployment)
    missed = {row.name: row.missed for row in cost.rows}
    infeasible: ServiceLevelError | None = None
    try:
        require_feasible(points, targets, cost)
    except ServiceLevelError as exc:
        infeasible = exc

    def service_gate(f: CandidateFigures) -> str | None:
        return "; ".join(missed[f.name]) if missed.get(f.name) else None

    return cost, service_gate, infeasible


@reports_failure("select")
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
    if is_generation(candidates):  # a multi-part generation model: chosen per part, checked end to end
        from vxdeploy.components.generation import select as generation_select

        return generation_select.run(
            candidates,
            source_model,
            eval_data,
            selection,
            service_levels,
            deployment,
            build_accelerator_type,
            build_accelerator_count,
            selected_model,
            benchmark,
            metrics,
            table,
            report,
        )
    cfg = parse_section(SelectionConfig, selection, "selection")
    sl_cfg = parse_section(ServiceLevelConfig, service_levels, "service_levels")
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    rep = StageReport("select")
    with timed(rep):
        device = check_build_hardware(build_accelerator_type, int(build_accelerator_count))
        manifest = read_manifest(candidates.path)
        signature = manifest.model_signature()
        dataset = load_dataset(eval_data.path, signature, what="data.eval_uri")
        source = SourceModel.read(source_model)
        source_path = artifact_file(source_model, source.file)
        source_format = source.format
        reference_args = (source_path or source_model.path, source_format, signature)
        reference = reference_runner(*reference_args)
        try:
            result = benchmark_candidates(
                manifest,
                candidates.path,
                reference,
                dataset,
                cfg,
                reference_opener=partial(reference_runner, *reference_args),
            )
        finally:
            reference.close()
        cost, service_gate, infeasible = price_and_check_service_levels(result, cfg, sl_cfg, deploy_cfg)
        decision = select_candidate(result.figures, cfg, extra_gates=(service_gate,))

    cost_markdown = cost.to_markdown() if cost is not None else ""
    write_json(benchmark.path, {**result.to_dict(), "decision": decision.to_dict()})
    write_text_atomic(
        table.path,
        decision_markdown(result.figures, decision, result.batch_sizes)
        + (f"\n## Cost at the target load\n\n{cost_markdown}" if cost_markdown else ""),
    )
    log_metrics(metrics, {**selection_metrics(result, decision), **(cost.headline() if cost else {})})
    rep.summary = {
        "device": device,
        "policy": decision.policy,
        "selected": decision.selected,
        "reason": decision.reason,
    }
    if cost is not None:
        rep.summary["cheapest"] = cost.cheapest or ""
    rep.details = {
        "selected": decision.selected,
        "candidates": summary_rows(result.figures, decision, result.batch_sizes),
        "decision": decision.to_dict(),
        "benchmark": result.to_dict(),
        "cost": {**cost.to_dict(), "markdown": cost_markdown} if cost is not None else None,
    }
    error = infeasible or decision.error()
    if error is not None:
        rep.status, rep.reason = "failed", str(error)
        rep.write(report.path)
        raise error
    chosen = next(c for c in manifest.candidates if c.name == decision.selected)
    figures = next(f for f in result.figures if f.name == decision.selected)
    write_selected_model(selected_model.path, chosen, candidates.path, figures, manifest.signature).write(
        selected_model
    )
    rep.summary["figures"] = headline_figures(figures)
    rep.write(report.path)
