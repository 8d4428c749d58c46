"""Package and serve-check stages: KFP artifacts in and out around the packaging functions.

``run_package`` turns the ``selected_model`` artifact into a Triton repository artifact with
its manifest and Vertex AI container spec; ``run_serve_check`` serves that repository with a
real Triton and compares it with the PyTorch reference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vxdeploy.components.common.artifacts import SelectedModel, ServingContainer, SourceModel
from vxdeploy.components.common.artifacts import TritonRepository as TritonRepositoryMetadata
from vxdeploy.components.common.config import (
    DeploymentConfig,
    ModelConfig,
    ServiceLevelConfig,
    TritonConfig,
    parse_section,
)
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.errors import ModelIntakeError, ParityError
from vxdeploy.components.common.stage import (
    StageReport,
    log_metrics,
    reports_failure,
    timed,
    write_text_atomic,
)
from vxdeploy.components.cost.estimate import CostReport
from vxdeploy.components.cost.measured import local_cpu_description, vertex_accelerator_name
from vxdeploy.components.cost.served import served_cost
from vxdeploy.components.generation.spec import is_generation
from vxdeploy.components.package.manifest import MANIFEST_FILE, verify_manifest
from vxdeploy.components.package.model_config import CONFIG_FILE, config_text, scalar_elements
from vxdeploy.components.package.repository import (
    MODEL_REPOSITORY_DIR,
    TritonRepository,
    check_engine_batch,
    package_triton_repository,
    resolve_instance_kind,
)
from vxdeploy.components.package.serve_check import (
    ServeCheckResult,
    ServeCheckUnavailable,
    check_served_repository,
    reference_outputs,
)
from vxdeploy.components.package.tritonserver import TritonStartError
from vxdeploy.components.package.vertex import vertex_serving_container


def _selected(selected_model: Any) -> tuple[Path, SelectedModel]:
    selected = SelectedModel.read(selected_model)
    model_file = Path(selected_model.path) / selected.file
    if not model_file.is_file():
        raise ModelIntakeError(f"selected_model file {str(model_file)!r} does not exist")
    return model_file, selected


def repository_metadata(
    repository: TritonRepository, container: dict[str, Any], selected: SelectedModel
) -> TritonRepositoryMetadata:
    """What the ``triton_repository`` artifact carries for deployment.

    The engine facts the selection stage recorded go along, so deployment can check the serving
    GPU and TensorRT against them.
    """
    default = repository.configs[repository.default_model]
    engine = {repository.default_model: selected.engine} if selected.engine else {}
    return TritonRepositoryMetadata(
        model_name=repository.default_model,
        models=list(repository.models),
        kind=repository.kinds[repository.default_model],
        kinds=dict(repository.kinds),
        model_repository=MODEL_REPOSITORY_DIR,
        manifest=MANIFEST_FILE,
        manifest_sha256=repository.manifest_sha256,
        files=len(repository.manifest["files"]),
        total_bytes=repository.total_bytes,
        max_batch_size=int(default.max_batch_size),
        instance_kind=instance_kind_name(default.instance_group[0].kind) if default.instance_group else "",
        serving_container=ServingContainer.model_validate(container),
        precision=selected.precision,
        device=selected.device,
        engines=engine,
        gpu_name=selected.gpu_name,
        compute_capability=selected.compute_capability,
        versions=selected.versions,
        scalar_inputs=[t.name for t in default.input if scalar_elements(t)],
    )


def instance_kind_name(kind: int) -> str:
    from tritonclient.grpc import model_config_pb2 as mc

    return str(mc.ModelInstanceGroup.Kind.Name(kind))


@reports_failure("package")
def run_package(
    selected_model: Any,
    model: dict[str, Any],
    triton: dict[str, Any],
    deployment: dict[str, Any],
    triton_repository: Any,
    report: Any,
) -> None:
    """The ``package_triton_repository`` component's body."""
    if is_generation(selected_model):  # a generation model: parts + the streaming generator
        from vxdeploy.components.generation import packaging

        return packaging.run_package(selected_model, model, triton, deployment, triton_repository, report)
    model_cfg = parse_section(ModelConfig, model, "model")
    triton_cfg = parse_section(TritonConfig, triton, "triton")
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    rep = StageReport("package")
    with timed(rep):
        model_file, selected = _selected(selected_model)
        kind, signature, device = selected.kind, selected.model_signature(), selected.device
        if kind.startswith("tensorrt"):
            check_engine_batch(dict(selected.engine or {}), triton_cfg)
        instance_kind = resolve_instance_kind(triton_cfg, deploy_cfg)
        if kind == "aoti" and device == "cpu" and triton_cfg.instance_kind == "auto":
            # A CPU-compiled AOTI package runs on the CPU even on a GPU machine: say so in the config.
            instance_kind = "KIND_CPU"
        repository = package_triton_repository(
            model_file,
            kind,
            signature,
            model_name=model_cfg.name,
            triton=triton_cfg,
            instance_kind=instance_kind,
            out_dir=triton_repository.path,
            device=device if kind == "aoti" else "",
        )
        container = vertex_serving_container(repository, triton_cfg)
    repository_metadata(repository, container, selected).write(triton_repository)
    config = repository.configs[repository.default_model]
    rep.summary = {
        "repository_path": str(repository.root),
        "model_name": repository.default_model,
        "kind": kind,
        "backend": config.platform or config.backend,
        "instance_kind": instance_kind,
        "max_batch_size": int(config.max_batch_size),
        "files": len(repository.manifest["files"]),
        "total_bytes": repository.total_bytes,
        "manifest_sha256": repository.manifest_sha256,
        "serving_image": container["image_uri"],
    }
    rep.details = {
        "configs": {name: config_text(c) for name, c in repository.configs.items()},
        "manifest": repository.manifest,
        "serving_container": container,
        "notes": (
            [
                f"model.parts has {len(model_cfg.parts)} parts: the pipeline packages the selected "
                "candidate only; multi-part repositories come from "
                "vxdeploy.components.package.ensemble.package_ensemble"
            ]
            if model_cfg.parts
            else []
        ),
    }
    rep.write(report.path)


@reports_failure("serve_check")
def run_serve_check(
    triton_repository: Any,
    source_model: Any,
    eval_data: Any,
    triton: dict[str, Any],
    metrics: Any,
    report: Any,
    *,
    deployment: dict[str, Any] | None = None,
    service_levels: dict[str, Any] | None = None,
    summary: Any = None,
) -> None:
    """The ``serve_check`` component's body.

    ``triton.serve_check`` decides what a check that does not pass does: ``required`` fails the
    task (so deployment, which runs after it, does not happen) whether the answers disagree or
    the check cannot run; ``best_effort`` reports it (status ``failed`` or ``skipped``, reason
    saying deployment goes ahead) and returns; ``off`` skips it.

    Raises:
        ParityError: when the served answers disagree with the reference or requests fail (required).
        ServeCheckUnavailable: when a required check cannot run here.
    """
    if is_generation(triton_repository):  # streamed through gRPC: components/generation/serve_check.py
        from vxdeploy.components.generation import packaging

        return packaging.run_serve_check(
            triton_repository,
            source_model,
            eval_data,
            triton,
            metrics,
            report,
            deployment=deployment,
            service_levels=service_levels,
            summary=summary,
        )
    triton_cfg = parse_section(TritonConfig, triton, "triton")
    rep = StageReport("serve_check")
    mode = triton_cfg.serve_check
    if mode == "off":
        rep.status, rep.reason = "skipped", "triton.serve_check is off: deployment goes ahead unchecked"
        rep.summary = {"mode": mode, "verdict": "off"}
        _write_summary(summary, "Serve check: **off** (`triton.serve_check: off`).\n")
        rep.write(report.path)
        return
    with timed(rep):
        root = Path(triton_repository.path)
        verify_manifest(root)
        repo_meta = TritonRepositoryMetadata.read(triton_repository)
        model_name = repo_meta.model_name
        source = SourceModel.read(source_model)
        signature = source.model_signature()
        dataset = load_dataset(eval_data.path, signature, what="eval_data")
        samples = dataset.take(min(len(dataset), triton_cfg.serve_check_requests))
        reference = reference_outputs(
            Path(source_model.path) / source.file, source.format, signature, samples.inputs
        )
        precision = repo_meta.precision or _precision_of(repo_meta.kind)
        try:
            result = check_served_repository(
                root, samples, reference, triton=triton_cfg, model=model_name, fp32=precision == "fp32"
            )
        except ServeCheckUnavailable as exc:
            rep.summary = {"mode": mode, "verdict": "not run"}
            if mode == "required":
                rep.status = "failed"
                rep.reason = (
                    f"serve check required but not run: {exc}; deployment stopped "
                    "(triton.serve_check: best_effort deploys without it)"
                )
                _write_summary(summary, f"Serve check: **failed** — {rep.reason}\n")
                rep.write(report.path)
                raise ServeCheckUnavailable(rep.reason) from exc
            rep.status, rep.reason = "skipped", f"serve check not run: {exc} (best_effort: deploying anyway)"
            _write_summary(summary, f"Serve check: **skipped** — {rep.reason}\n")
            result = None
        except TritonStartError as exc:
            going_ahead = "" if mode == "required" else " (best_effort: deploying anyway)"
            rep.status, rep.reason = "failed", str(exc).splitlines()[0] + going_ahead
            rep.summary = {"mode": mode, "verdict": "failed"}
            rep.details = {"server_log_tail": str(exc)}
            rep.write(report.path)
            if mode == "required":
                raise
            return
    if result is None:
        rep.write(report.path)
        return
    cost = _served_cost(result, repo_meta, deployment, service_levels)
    rep.summary = {"mode": mode, **result.summary()}
    rep.details = {
        "substitutions": result.substitutions,
        "errors": result.errors,
        "precision": precision,
        "reason": result.reason,
        "config": (root / MODEL_REPOSITORY_DIR / model_name / CONFIG_FILE).read_text(),
        **({"sweep": result.sweep.to_dict()} if result.sweep else {}),
        **({"cost": {**cost.to_dict(), "markdown": cost.to_markdown()}} if cost else {}),
    }
    figures = {k: v for k, v in rep.summary.items() if isinstance(v, (int, float))}
    log_metrics(metrics, {k: v for k, v in figures.items() if not (isinstance(v, float) and math.isnan(v))})
    # The run's report shows the cost table once, in its Cost section: its copy leaves it out.
    rep.details["markdown"] = _markdown(result, mode, None)
    _write_summary(summary, _markdown(result, mode, cost))
    if not result.passed:
        rep.status, rep.reason = "failed", result.reason
        if mode == "best_effort":
            rep.reason += " (best_effort: deploying anyway)"
            rep.write(report.path)
            return
        rep.write(report.path)
        raise ParityError(f"serve check of {model_name!r} failed: {result.reason}")
    notes = [result.verdict]
    if not result.batching_observed:
        notes.append("no request was batched with another (executions == requests)")
    rep.reason = "; ".join(notes)
    rep.write(report.path)


def _served_cost(
    result: ServeCheckResult,
    repo_meta: TritonRepositoryMetadata,
    deployment: dict[str, Any] | None,
    service_levels: dict[str, Any] | None,
) -> CostReport | None:
    """The cost table from the sweep (None without a sweep or without the two config sections)."""
    if result.sweep is None or deployment is None or service_levels is None:
        return None
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    targets = parse_section(ServiceLevelConfig, service_levels, "service_levels")
    return served_cost(
        result.sweep.points,
        kind=repo_meta.kind,
        measured_on=_served_on(result, deploy_cfg),
        cfg=targets,
        deployment=deploy_cfg,
    )


def _served_on(result: ServeCheckResult, deployment: DeploymentConfig) -> str:
    """Where Triton ran the model: the GPU's Vertex name when it kept GPU instances, else this CPU."""
    on_cpu = any("KIND_GPU instances run as KIND_CPU" in s for s in result.substitutions)
    if not on_cpu and deployment.accelerator_type:
        try:
            import torch

            if torch.cuda.is_available():
                gpu = vertex_accelerator_name(torch.cuda.get_device_name(0), deployment.accelerator_type)
                if gpu:
                    return gpu
        except ImportError:
            pass
    return local_cpu_description()


def _markdown(result: ServeCheckResult, mode: str, cost: CostReport | None) -> str:
    lines = [
        f"## Serve check of `{result.model}`: {result.verdict}",
        "",
        f"Mode `triton.serve_check: {mode}`; server: {result.server}; {result.reason}.",
        "",
        f"Requests sent {result.sent}, counted by Triton's statistics {result.requests}, executions "
        f"{result.executions}; p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms; max abs diff "
        f"{result.max_abs_diff:.3g}.",
        "",
    ]
    if result.substitutions:
        lines += ["Substitutions (local stand-in for the serving image):", ""]
        lines += [f"- {s}" for s in result.substitutions] + [""]
    if result.sweep:
        lines.append(result.sweep.to_markdown())
    if cost is not None:
        lines += ["### Cost from served throughput", "", cost.to_markdown(), ""]
    return "\n".join(lines)


def _write_summary(summary: Any, text: str) -> None:
    if summary is not None:
        write_text_atomic(summary.path, text)


def _precision_of(kind: str) -> str:
    for precision in ("int8", "fp16", "fp32"):
        if kind.endswith(precision):
            return precision
    return "fp32"
