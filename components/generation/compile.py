"""Compilation of a generation model: every configured serving candidate, built part by part.

Each part (vision encoder, projector, decoder prefill, decoder step) goes through the single-model
builder (:func:`vxdeploy.components.compile.build.build_candidates`) with its own signature and
sources, so a part's candidates are exactly what a single model of that part would get:

- ``onnxruntime_fp32`` from the part's FP32 export;
- ``onnxruntime_int8`` from the part's Q/DQ model when calibration produced and accepted one (the
  decoder parts usually stay FP32: calibration's reason is shown on the skipped candidate);
- ``tensorrt_fp32`` / ``tensorrt_fp16`` / ``tensorrt_int8``: strongly typed engines built on the
  serving GPU from the FP32, FP16-converted or Q/DQ ONNX; skipped without TensorRT or a GPU with the
  same reason the single-model path gives;
- ``aoti`` is not built per part (the served generator calls its parts on the ONNX Runtime and
  TensorRT backends), and says so.

The candidates artifact holds ``<part>/<candidate>/...`` and ``<part>/manifest.json`` per part. The
decode step's cache length is a dynamic dim with no data to observe at intake; its range follows
from the generation (the prefill's cache length up to ``max_new_tokens - 2`` steps later) and is
recorded on the step's signature, so TensorRT's optimization profile covers every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vxdeploy.components.common.artifacts import CalibratedModel, Candidates, OnnxModel, SourceModel
from vxdeploy.components.common.config import CompilationConfig, parse_section
from vxdeploy.components.common.errors import ConfigError, ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature, signature_from_onnx
from vxdeploy.components.common.stage import StageReport, log_metrics, timed
from vxdeploy.components.compile.build import CompileSources, build_candidates
from vxdeploy.components.compile.candidates import Candidate, CandidateManifest, write_manifest
from vxdeploy.components.compile.gpus import check_build_hardware
from vxdeploy.components.generation.spec import GenerationSpec

AOTI_REASON = (
    "AOT Inductor is not built per part of a generation model: the served generator (a Triton BLS "
    "model) calls its parts on the ONNX Runtime and TensorRT backends, so an AOTI package per part "
    "would not be served (and costs a g++ build per part)"
)
"""Why a generation model's parts have no ``aoti`` candidate."""


@dataclass(frozen=True)
class PartSources:
    """What one part is compiled from.

    Attributes:
        part: The part's name (its folder in every artifact).
        role: Its role (:data:`vxdeploy.components.generation.spec.ROLES`).
        sources: The part's FP32 / Q/DQ ONNX and source program, as the single-model builder takes them.
    """

    part: str
    role: str
    sources: CompileSources


def _parts_meta(artifact: Any, model: Any) -> dict[str, dict[str, Any]]:
    """``parts`` of an artifact: from its typed view, else from the raw metadata."""
    parts = getattr(model, "parts", None)
    if not parts:
        parts = (getattr(artifact, "metadata", None) or {}).get("parts") or {}
    return {str(k): dict(v) for k, v in dict(parts).items()}


def _file(root: Path, rel: str | None) -> Path | None:
    if not rel:
        return None
    path = root / rel
    return path if path.is_file() else None


def part_signature(onnx_root: Path, part: str, meta: Mapping[str, Any]) -> ModelSignature:
    """A part's signature: from the export's metadata, else read from its ONNX file."""
    if meta.get("signature"):
        return ModelSignature.from_dict(meta["signature"])
    path = _file(onnx_root, meta.get("file"))
    if path is None:
        raise ModelIntakeError(
            f"part {part!r} of the onnx_model artifact names no ONNX file ({meta.get('file')!r}); it must "
            "come from the export stage (export_onnx)"
        )
    return signature_from_onnx(path)


def cache_length_range(
    onnx_paths: Mapping[str, Path], spec: GenerationSpec, model_signature: ModelSignature
) -> tuple[int, int]:
    """The sizes the decode step's cache length takes during a generation: (first step, last step).

    The prefill's cache length comes from running the FP32 encoder, projector and prefill once on
    sample inputs; the last step sees ``max_new_tokens - 2`` more positions.
    """
    import numpy as np

    from vxdeploy.components.generation.loop import OnnxParts

    parts = OnnxParts({r: onnx_paths[spec.part(r)] for r in spec.roles}, spec)
    images = model_signature.sample_inputs(batch=1)
    tokens = parts.encode({k: v for k, v in images.items() if k in parts.image_inputs})
    _, present = parts.prefill(tokens, np.full((1, 1), spec.bos_token_id, dtype=np.int64))
    step_inputs = {i.name: i for i in parts.sessions["decoder_step"].get_inputs()}
    first = parts.past[0]
    axes = [a for a, d in enumerate(step_inputs[first].shape) if not isinstance(d, int) and a != 0]
    if not axes:
        length = int(present[0].shape[2]) if present[0].ndim > 2 else 1
    else:
        length = int(present[0].shape[axes[0]])
    return length, length + max(spec.max_new_tokens - 2, 0)


def with_cache_ranges(signature: ModelSignature, cache: tuple[int, int]) -> ModelSignature:
    """The step's signature with the cache range on every dynamic dim the data could not show."""
    ranges = dict(signature.dim_ranges)
    for dim in signature.dynamic_dims():
        ranges.setdefault(dim, cache)
    return signature.with_dim_ranges(ranges)


def read_part_sources(
    source_model: Any, onnx_model: Any, qdq_model: Any
) -> tuple[GenerationSpec, ModelSignature, list[PartSources]]:
    """Each part's compile sources from the intake, export and calibration artifacts.

    Raises:
        ModelIntakeError: a part of the spec is missing from the export.
    """
    onnx = OnnxModel.read(onnx_model)
    source = SourceModel.read(source_model)
    qdq = CalibratedModel.read(qdq_model)
    spec = GenerationSpec.from_metadata(onnx_model)
    model_signature = onnx.model_signature()
    onnx_root, source_root, qdq_root = Path(onnx_model.path), Path(source_model.path), Path(qdq_model.path)
    onnx_parts = _parts_meta(onnx_model, onnx)
    source_parts = _parts_meta(source_model, source)
    qdq_parts = _parts_meta(qdq_model, qdq)
    missing = [p for p in spec.part_names if p not in onnx_parts]
    if missing:
        raise ModelIntakeError(
            f"the onnx_model artifact has no part(s) {missing} of the generation model "
            f"(it has {sorted(onnx_parts)}); it must come from the export stage (export_onnx)"
        )
    paths = {p: _file(onnx_root, onnx_parts[p].get("file")) for p in spec.part_names}
    absent = [p for p, path in paths.items() if path is None]
    if absent:
        raise ModelIntakeError(f"the onnx_model artifact has no ONNX file for part(s) {absent}")
    out: list[PartSources] = []
    cache: tuple[int, int] | None = None
    for role in spec.roles:
        part = spec.part(role)
        signature = part_signature(onnx_root, part, onnx_parts[part])
        if role == "decoder_step" and set(signature.dynamic_dims()) - set(signature.dim_ranges):
            cache = cache or cache_length_range(
                {p: path for p, path in paths.items() if path is not None}, spec, model_signature
            )
            signature = with_cache_ranges(signature, cache)
        q = qdq_parts.get(part, {})
        qdq_path = _file(qdq_root, q.get("file")) if q.get("produced") and q.get("accepted") else None
        if q and not q.get("produced", False):
            qdq_reason = q.get("reason") or "calibration did not quantize this part"
        elif q and not q.get("accepted", False):
            qdq_reason = q.get("reason") or "this part's INT8 model was rejected by the end-to-end gate"
        elif not q:
            qdq_reason = qdq.reason or "calibration wrote nothing for this part"
        else:
            qdq_reason = "" if qdq_path is not None else f"calibration named no file for part {part!r}"
        dynamic_path = _file(qdq_root, q.get("dynamic_file")) if q.get("dynamic_accepted") else None
        src = source_parts.get(part, {})
        out.append(
            PartSources(
                part=part,
                role=role,
                sources=CompileSources(
                    signature=signature,
                    onnx_path=paths[part],
                    qdq_path=qdq_path,
                    qdq_unavailable_reason=qdq_reason,
                    dynamic_path=dynamic_path,
                    dynamic_unavailable_reason=(
                        ""
                        if dynamic_path
                        else q.get("dynamic_reason")
                        or "calibration wrote no dynamic INT8 model for this part"
                    ),
                    source_path=_file(source_root, src.get("file")),
                    source_format=str(src.get("format") or source.format or ""),
                ),
            )
        )
    return spec, model_signature, out


def part_config(cfg: CompilationConfig, signature: ModelSignature) -> CompilationConfig:
    """The compilation section as it applies to one part: no AOTI, only that part's dim profiles."""
    alias = {f"{name}.{axis}" for places in signature.dynamic_dims().values() for name, axis in places}
    alias |= set(signature.dynamic_dims())
    return cfg.model_copy(
        update={
            "candidates": [k for k in cfg.candidates if k != "aoti"],
            "dim_profiles": {k: v for k, v in cfg.dim_profiles.items() if k in alias},
        }
    )


def check_dim_profiles(cfg: CompilationConfig, parts: list[PartSources]) -> None:
    """Every ``compilation.dim_profiles`` key names a dynamic dim of some part.

    Raises:
        ConfigError: naming the key and the dims the parts have.
    """
    known: dict[str, str] = {}
    for p in parts:
        for dim, places in p.sources.signature.dynamic_dims().items():
            known[dim] = p.part
            known.update({f"{name}.{axis}": p.part for name, axis in places})
    for key in cfg.dim_profiles:
        if key not in known:
            raise ConfigError(
                f"compilation.dim_profiles.{key}",
                cfg.dim_profiles[key].model_dump(),
                f"{key!r} is no dynamic dim of any part; the parts' dims are {sorted(known) or 'batch only'}",
            )


def build_part_candidates(
    out_dir: str | Path, cfg: CompilationConfig, parts: list[PartSources]
) -> dict[str, CandidateManifest]:
    """Build each part's candidates into ``out_dir/<part>`` (with its ``manifest.json``).

    Returns:
        Part name -> its manifest (AOTI listed as skipped, with :data:`AOTI_REASON`).
    """
    check_dim_profiles(cfg, parts)
    out: dict[str, CandidateManifest] = {}
    for p in parts:
        folder = Path(out_dir) / p.part
        manifest = build_candidates(folder, part_config(cfg, p.sources.signature), p.sources)
        if "aoti" in cfg.candidates:
            manifest.candidates.append(
                Candidate(
                    name="aoti",
                    kind="aoti",
                    status="skipped",
                    reason=AOTI_REASON,
                    precision="fp32",
                    runtime="aoti",
                )
            )
            write_manifest(folder, manifest)
        out[p.part] = manifest
    return out


def candidates_metadata(
    spec: GenerationSpec,
    model_signature: ModelSignature,
    parts: list[PartSources],
    manifests: Mapping[str, CandidateManifest],
) -> Candidates:
    """The candidates artifact's metadata: names qualified ``<part>/<candidate>``, and per part."""
    per_part: dict[str, dict[str, Any]] = {}
    for p in parts:
        m = manifests[p.part]
        per_part[p.part] = {
            "role": p.role,
            "built": [c.name for c in m.built],
            "not_built": {c.name: c.reason for c in m.candidates if not c.built},
            "manifest": f"{p.part}/manifest.json",
            "signature": p.sources.signature.to_dict(),
        }
    return Candidates(
        built=[f"{p}/{n}" for p, d in per_part.items() for n in d["built"]],
        not_built={f"{p}/{n}": r for p, d in per_part.items() for n, r in d["not_built"].items()},
        signature=model_signature.to_dict(),
        parts=per_part,
        generation=spec.to_dict(),
    )


def run(
    source_model: Any,
    onnx_model: Any,
    qdq_model: Any,
    compilation: dict[str, Any],
    build_accelerator_type: str,
    build_accelerator_count: int,
    candidates: Any,
    metrics: Any,
    report: Any,
) -> None:
    """The compile stage for a generation model (same artifacts as the single-model stage).

    Called by :func:`vxdeploy.components.compile.stage.run`, whose ``reports_failure`` covers it.

    Raises:
        ConfigError: when some part has no candidate that could be built here.
    """
    cfg = parse_section(CompilationConfig, compilation, "compilation")
    if "onnxruntime_fp32" not in cfg.candidates:
        raise ConfigError(
            "compilation.candidates",
            list(cfg.candidates),
            "a generation model's selection compares every part with its FP32 export (and falls back to it); "
            "include onnxruntime_fp32",
        )
    rep = StageReport("compile")
    with timed(rep):
        device = check_build_hardware(build_accelerator_type, int(build_accelerator_count))
        spec, model_signature, parts = read_part_sources(source_model, onnx_model, qdq_model)
        manifests = build_part_candidates(candidates.path, cfg, parts)
    meta = candidates_metadata(spec, model_signature, parts, manifests)
    meta.write(candidates)
    status: dict[str, list[str]] = {"built": [], "skipped": [], "failed": []}
    for part, m in manifests.items():
        for c in m.candidates:
            status[c.status].append(f"{part}/{c.name}")
    rep.summary = {
        "device": device,
        "generation": True,
        "parts": {p: meta.parts[p]["built"] for p in meta.parts},
        **status,
        "build_time_s": {f"{p}/{c.name}": c.build_time_s for p, m in manifests.items() for c in m.built},
    }
    rep.details = {
        "parts": {
            p.part: {
                "role": p.role,
                "candidates": [c.to_dict() for c in manifests[p.part].candidates],
                "signature": p.sources.signature.to_dict(),
            }
            for p in parts
        },
        "candidates": [
            {**c.to_dict(), "name": f"{p}/{c.name}", "part": p}
            for p, m in manifests.items()
            for c in m.candidates
        ],
        "skipped": [
            {"name": f"{p}/{c.name}", "part": p, "kind": c.kind, "status": c.status, "reason": c.reason}
            for p, m in manifests.items()
            for c in m.candidates
            if not c.built
        ],
        "host": next(iter(manifests.values())).host if manifests else {},
    }
    log_metrics(
        metrics,
        {
            "candidates_built": len(status["built"]),
            "candidates_skipped": len(status["skipped"]),
            "candidates_failed": len(status["failed"]),
            **{f"build_time_s_{p}_{c.name}": c.build_time_s for p, m in manifests.items() for c in m.built},
        },
    )
    empty = [p for p, m in manifests.items() if not m.built]
    if empty:
        rep.status, rep.reason = "failed", f"no candidate could be built for part(s) {empty}"
        rep.write(report.path)
        reasons = "; ".join(f"{p}/{c.name}: {c.reason}" for p in empty for c in manifests[p].candidates)
        raise ConfigError(
            "compilation.candidates",
            list(cfg.candidates),
            f"no candidate of part(s) {empty} could be built here ({reasons}); include onnxruntime_fp32, "
            "or run on a GPU",
        )
    rep.write(report.path)
