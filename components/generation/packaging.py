"""Package and serve-check stages of a generation model: what ``package/stage.py`` dispatches to.

Same artifacts in and out as the single-model stages: ``selected_model`` (one folder per part) becomes
a ``triton_repository`` whose default model is the streaming generator; the serve check serves it
with a real Triton and streams captions through gRPC.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.common.artifacts import SelectedModel, SourceModel
from vxdeploy.components.common.artifacts import TritonRepository as TritonRepositoryMetadata
from vxdeploy.components.common.config import (
    DeploymentConfig,
    ModelConfig,
    ServiceLevelConfig,
    TritonConfig,
    parse_section,
)
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.errors import ParityError
from vxdeploy.components.common.stage import StageReport, log_metrics, timed, write_text_atomic
from vxdeploy.components.cost.generation import GenerationCost, GenerationPoint, generation_cost
from vxdeploy.components.cost.measured import local_cpu_description, vertex_accelerator_name
from vxdeploy.components.generation.loop import OnnxParts, TorchParts, generate_batched
from vxdeploy.components.generation.serve_check import GenerationServeResult, check_served_generation
from vxdeploy.components.generation.serving import (
    CONFIGURED_ONLY_DIR,
    GenerationRepository,
    package_generation_repository,
)
from vxdeploy.components.generation.spec import GenerationSpec
from vxdeploy.components.monitoring.generation_export import EXPORT_ENV, container_env
from vxdeploy.components.package.manifest import verify_manifest
from vxdeploy.components.package.model_config import CONFIG_FILE, config_text
from vxdeploy.components.package.repository import (
    KIND_FORMATS,
    LAYOUTS,
    MODEL_REPOSITORY_DIR,
    resolve_instance_kind,
)
from vxdeploy.components.package.serve_check import ServeCheckUnavailable
from vxdeploy.components.package.tritonserver import TritonStartError
from vxdeploy.components.package.vertex import vertex_serving_container


def _part_facts(parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keep = ("role", "candidate", "kind", "precision", "device", "runtime", "file", "sha256")
    return {p: {k: f[k] for k in keep if k in f} for p, f in parts.items()}


def repository_metadata(
    packaged: GenerationRepository, container: dict[str, Any], selected: SelectedModel, spec: GenerationSpec
) -> TritonRepositoryMetadata:
    """The ``triton_repository`` metadata of a generation repository (default model: the generator).

    The single model's metadata, with what differs for parts: the instance kind is the vision
    encoder's, precision and engines are per part, and the parts and the spec go along.
    """
    from vxdeploy.components.package.stage import instance_kind_name
    from vxdeploy.components.package.stage import repository_metadata as single_model_metadata

    repo = packaged.repository
    precisions = sorted({str(f.get("precision", "")) for f in selected.parts.values()} - {""})
    encoder = repo.configs[spec.part("vision_encoder")]
    return single_model_metadata(repo, container, selected).model_copy(
        update={
            "instance_kind": instance_kind_name(encoder.instance_group[0].kind)
            if encoder.instance_group
            else "",
            "precision": "+".join(precisions) or selected.precision,
            "engines": {p: dict(f["engine"]) for p, f in selected.parts.items() if f.get("engine")},
            "parts": _part_facts(selected.parts),
            "generation": spec.to_dict(),
        }
    )


def run_package(
    selected_model: Any,
    model: dict[str, Any],
    triton: dict[str, Any],
    deployment: dict[str, Any],
    triton_repository: Any,
    report: Any,
) -> None:
    """The package stage for a generation model (``package/stage.py`` dispatches here)."""
    model_cfg = parse_section(ModelConfig, model, "model")
    triton_cfg = parse_section(TritonConfig, triton, "triton")
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    rep = StageReport("package")
    with timed(rep):
        selected = SelectedModel.read(selected_model)
        spec = GenerationSpec.from_metadata(selected_model)
        instance_kind = resolve_instance_kind(triton_cfg, deploy_cfg)
        packaged = package_generation_repository(
            selected_model.path,
            selected.parts,
            spec,
            model_name=model_cfg.name or selected.name,
            triton=triton_cfg,
            instance_kind=instance_kind,
            out_dir=triton_repository.path,
        )
        container = vertex_serving_container(packaged.repository, triton_cfg)
        # On Vertex AI the generator also writes its generation metrics to Cloud Monitoring: Vertex AI
        # gives the container the endpoint and deployed model ids, this gives it the project and region.
        container["env"] = [*container["env"], *container_env(deploy_cfg.project, deploy_cfg.location)]
    repository_metadata(packaged, container, selected, spec).write(triton_repository)
    repo = packaged.repository
    rep.summary = {
        "repository_path": str(repo.root),
        "model_name": repo.default_model,
        "kind": repo.kinds[repo.default_model],
        "backend": "python (BLS generator, decoupled)",
        "parts": {a.name: a.kind for a in packaged.parts.values()},
        "instance_kind": instance_kind,
        "max_batch_size": int(repo.configs[repo.default_model].max_batch_size),
        "response_cache": spec.part("vision_encoder"),
        "vllm_part": bool(packaged.vllm_checks),
        "files": len(repo.manifest["files"]),
        "total_bytes": repo.total_bytes,
        "manifest_sha256": repo.manifest_sha256,
        "serving_image": container["image_uri"],
        "generation_metrics": (
            f"Triton custom metrics; on Vertex AI also Cloud Monitoring ({deploy_cfg.location})"
            if any(e["name"] == EXPORT_ENV for e in container["env"])
            else "Triton custom metrics"
        ),
    }
    configs = {name: config_text(c) for name, c in repo.configs.items()}
    vllm_dir = repo.root / CONFIGURED_ONLY_DIR
    for config_file in sorted(vllm_dir.glob(f"*/{CONFIG_FILE}")) if vllm_dir.is_dir() else []:
        configs[f"{CONFIGURED_ONLY_DIR}/{config_file.parent.name}"] = config_file.read_text()
    rep.details = {
        "configs": configs,
        "wiring": packaged.wiring,
        "vllm_checks": packaged.vllm_checks,
        "manifest": repo.manifest,
        "serving_container": container,
        "notes": packaged.notes,
    }
    rep.write(report.path)


def _reference_tokens(
    source_dir: Path, source: SourceModel, spec: GenerationSpec, images: dict[str, np.ndarray]
) -> np.ndarray:
    """The PyTorch reference: the source ``.pt2`` parts through the one greedy loop."""
    files = {p: source_dir / str(f["file"]) for p, f in source.parts.items()}
    parts = TorchParts(files, spec, image_inputs=list(images))
    return generate_batched(parts.generate, images, spec).tokens


def _in_process_tokens(
    root: Path, repo: TritonRepositoryMetadata, spec: GenerationSpec, images: dict[str, np.ndarray]
) -> np.ndarray | None:
    """The same part files of the repository run in-process (ONNX Runtime); None when a part is not ONNX."""
    paths = {}
    for part in spec.part_names:
        if KIND_FORMATS.get(repo.kinds.get(part, "")) != "onnx":
            return None
        paths[part] = root / MODEL_REPOSITORY_DIR / part / "1" / LAYOUTS["onnx"].file_name
    parts = OnnxParts(paths, spec)
    return generate_batched(parts.generate, images, spec).tokens


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
    """The serve check of a generation repository (``package/stage.py`` dispatches here).

    ``triton.serve_check`` decides, as for a single model, what a check that does not pass does.
    With the ``deployment`` and ``service_levels`` sections it also prices the measured levels:
    replicas and cost per 1,000 generations (:func:`vxdeploy.components.cost.generation.generation_cost`).

    Raises:
        ParityError: the streamed captions disagree, streams fail, or the cache missed (required).
        ServeCheckUnavailable: the check cannot run here (required).
        TritonStartError: the server did not become ready (required).
    """
    triton_cfg = parse_section(TritonConfig, triton, "triton")
    mode = triton_cfg.serve_check
    rep = StageReport("serve_check")
    if mode == "off":
        rep.status, rep.reason = "skipped", "triton.serve_check is off: deployment goes ahead unchecked"
        rep.summary = {"mode": mode, "verdict": "off", "generation": True}
        _write_summary(summary, "Serve check: **off** (`triton.serve_check: off`).\n")
        rep.write(report.path)
        return
    result: GenerationServeResult | None = None
    with timed(rep):
        root = Path(triton_repository.path)
        verify_manifest(root)
        repo_meta = TritonRepositoryMetadata.read(triton_repository)
        source = SourceModel.read(source_model)
        spec = GenerationSpec.from_metadata(source_model)
        dataset = load_dataset(eval_data.path, source.model_signature(), what="eval_data")
        samples = dataset.take(min(len(dataset), triton_cfg.serve_check_requests))
        images = {k: np.ascontiguousarray(v) for k, v in samples.inputs.items()}
        reference = _reference_tokens(Path(source_model.path), source, spec, images)
        in_process = _in_process_tokens(root, repo_meta, spec, images)
        references = None
        if samples.labels is not None and (spec.label_captions or np.asarray(samples.labels).ndim == 2):
            references = spec.references(samples.labels)
        fp32 = all(str(f.get("precision", "fp32")) == "fp32" for f in repo_meta.parts.values())
        try:
            result = check_served_generation(
                root,
                images,
                reference,
                spec,
                triton=triton_cfg,
                model=repo_meta.model_name,
                fp32=fp32,
                references=references,
                in_process_tokens=in_process,
            )
        except ServeCheckUnavailable as exc:
            rep.summary = {"mode": mode, "verdict": "not run", "generation": True}
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
        except TritonStartError as exc:
            going_ahead = "" if mode == "required" else " (best_effort: deploying anyway)"
            rep.status, rep.reason = "failed", str(exc).splitlines()[0] + going_ahead
            rep.summary = {"mode": mode, "verdict": "failed", "generation": True}
            rep.details = {"server_log_tail": str(exc)}
            rep.write(report.path)
            if mode == "required":
                raise
            return
    if result is None:
        rep.write(report.path)
        return
    cost = _generation_cost(result, repo_meta, spec, deployment, service_levels)
    rep.summary = {"mode": mode, **result.summary()}
    markdown = result.to_markdown()
    if cost is not None:
        rep.summary |= {
            "replicas": cost.replicas,
            "cost_per_1000_generations": cost.cost_per_1000_generations,
            "missed_targets": list(cost.missed),
        }
        markdown += "\n" + cost_markdown(cost) + "\n"
    rep.details = {
        "generation": True,
        **({"generation_cost": {**cost.to_dict(), "markdown": cost.to_markdown()}} if cost else {}),
        "levels": result.levels,
        "substitutions": result.substitutions,
        "errors": result.errors,
        "samples": result.samples,
        "reason": result.reason,
        "config": (root / MODEL_REPOSITORY_DIR / repo_meta.model_name / CONFIG_FILE).read_text(),
        "markdown": markdown,
    }
    figures = {k: v for k, v in rep.summary.items() if isinstance(v, (int, float))}
    log_metrics(metrics, {k: v for k, v in figures.items() if not (isinstance(v, float) and math.isnan(v))})
    _write_summary(summary, markdown)
    if not result.passed:
        rep.status, rep.reason = "failed", result.reason
        if mode == "best_effort":
            rep.reason += " (best_effort: deploying anyway)"
            rep.write(report.path)
            return
        rep.write(report.path)
        raise ParityError(f"serve check of {repo_meta.model_name!r} failed: {result.reason}")
    rep.reason = result.verdict
    rep.write(report.path)


def _generation_cost(
    result: GenerationServeResult,
    repo_meta: TritonRepositoryMetadata,
    spec: GenerationSpec,
    deployment: dict[str, Any] | None,
    service_levels: dict[str, Any] | None,
) -> GenerationCost | None:
    """Replicas and cost per 1,000 generations from the measured levels (None without both sections).

    The priced levels are the concurrency levels whose images repeat (the vision encoder answers from
    its response cache, as it does for repeated images in production); the new-image pass is shown
    beside them in the levels table.
    """
    if deployment is None or service_levels is None:
        return None
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    targets = parse_section(ServiceLevelConfig, service_levels, "service_levels")
    points = [
        GenerationPoint.from_level(lv)
        for lv in result.levels
        if isinstance(lv["concurrency"], int) and all(math.isfinite(lv[k]) for k in _PRICED_FIGURES)
    ]
    return generation_cost(
        points,
        name=f"{result.model} via Triton (generator)",
        kind=repo_meta.kinds.get(spec.part("vision_encoder"), repo_meta.kind),
        measured_on=_measured_on(result.substitutions, deploy_cfg),
        cfg=targets,
        deployment=deploy_cfg,
    )


_PRICED_FIGURES = ("p50_ms", "p95_ms", "ttft_p50_ms")


def _measured_on(substitutions: list[str], deployment: DeploymentConfig) -> str:
    """Where the generations ran: the GPU's Vertex AI name when parts kept GPU instances, else this CPU."""
    on_cpu = any("KIND_GPU instances run as KIND_CPU" in s for s in substitutions)
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


def cost_markdown(cost: GenerationCost) -> str:
    """The serve check's cost paragraph: replicas, cost per 1,000 generations, missed targets."""
    per_1000 = cost.cost_per_1000_generations
    head = (
        f"### Cost: {cost.replicas} replica{'s' if cost.replicas != 1 else ''}, "
        + ("not priced" if per_1000 is None else f"**USD {per_1000:.6f} per 1,000 generations**")
        + f" (operating point: {cost.point.concurrency} concurrent streams per replica)"
    )
    return head + "\n\n" + cost.to_markdown()


def _write_summary(summary: Any, text: str) -> None:
    if summary is not None:
        write_text_atomic(summary.path, text)
