"""Export of a generation model: each part to ONNX with parity on real activations, then end to end.

Every part goes through the single-model path
(:func:`~vxdeploy.components.export.onnx_export.export_onnx`: dynamo exporter, dims named after the
signature, ``onnx.checker``, parity with its source at batch 1 and 32). The parity inputs are real:
the eval images run through the earlier parts' sources (features into the projector, image tokens and
``bos`` into the prefill, the first greedy token and the prefill's cache into the step). Then the ONNX
parts generate captions for the eval images in ONNX Runtime and the source parts in PyTorch: the
token sequences must agree (:data:`MIN_AGREEMENT`), and the agreement and both caption accuracies are
recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.common.artifacts import OnnxModel, SourceModel
from vxdeploy.components.common.config import ExportConfig, ModelConfig
from vxdeploy.components.common.data import Dataset, load_dataset
from vxdeploy.components.common.errors import ParityError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.common.stage import StageReport, log_metrics, timed
from vxdeploy.components.export.onnx_export import ONNX_FILE, ExportResult, export_onnx
from vxdeploy.components.generation.intake import reference_labels
from vxdeploy.components.generation.loop import (
    Generation,
    OnnxParts,
    RunnerParts,
    agreement,
    exact_match,
    generate_batched,
)
from vxdeploy.components.generation.spec import GenerationSpec

MIN_AGREEMENT = 0.99
"""Fraction of eval images whose ONNX Runtime tokens must equal PyTorch's (FP32 export, same greedy loop)."""
GENERATION_BATCH = 64
END_TO_END_SAMPLES = 500
"""Eval images the end-to-end check generates for (the first ones; PyTorch eager is the slow side)."""


@dataclass(frozen=True)
class EndToEnd:
    """Generation with one set of parts against a reference set, on the same images."""

    samples: int
    agreement: float
    exact: float | None
    reference_exact: float | None
    mismatches: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "agreement": round(self.agreement, 6),
            "exact": None if self.exact is None else round(self.exact, 6),
            "reference_exact": None if self.reference_exact is None else round(self.reference_exact, 6),
            "mismatches": self.mismatches[:20],
        }


def compare_generations(
    got: Generation, reference: Generation, spec: GenerationSpec, labels: Any
) -> EndToEnd:
    """Agreement of token sequences and, with labels, exact caption match of both."""
    refs = spec.references(labels) if labels is not None else None
    same = (got.tokens == reference.tokens).all(axis=1)
    return EndToEnd(
        samples=len(got.tokens),
        agreement=agreement(got.tokens, reference.tokens),
        exact=None if refs is None else exact_match(got.texts, refs),
        reference_exact=None if refs is None else exact_match(reference.texts, refs),
        mismatches=[int(i) for i in np.flatnonzero(~same)],
    )


def source_runners(meta: SourceModel, root: Path) -> tuple[dict[str, Any], dict[str, ModelSignature]]:
    """Role -> a runner of each part's source file (PyTorch, or ONNX Runtime for an ONNX source)."""
    from vxdeploy.components.verify.runners import OnnxRuntimeRunner, TorchRunner, load_torch_module

    runners: dict[str, Any] = {}
    sigs: dict[str, ModelSignature] = {}
    for name, part in meta.parts.items():
        sig = ModelSignature.from_dict(part["signature"])
        path = root / part["file"]
        if part["format"] == "onnx":
            runners[part["role"]] = OnnxRuntimeRunner(name, path, output_names=sig.output_names)
        else:
            runners[part["role"]] = TorchRunner(name, load_torch_module(path, part["format"]), sig)
        sigs[part["role"]] = sig
    return runners, sigs


def export_generation(
    meta: SourceModel, root: Path, evaluation: Dataset, out_dir: Path, cfg: ExportConfig
) -> tuple[dict[str, ExportResult], EndToEnd, dict[str, float]]:
    """Export each part (real-activation parity), then compare ONNX Runtime and PyTorch generation.

    Returns:
        Part name -> its export result, the end-to-end comparison, seconds per phase.

    Raises:
        ParityError: a part's parity fails, or the ONNX parts generate other tokens than the sources
            on more than ``1 - MIN_AGREEMENT`` of the eval images.
    """
    import time

    spec = GenerationSpec.from_metadata(meta)
    runners, sigs = source_runners(meta, root)
    reference = RunnerParts(runners, sigs, spec)
    images = evaluation.inputs
    parity_images = {k: v[: max(cfg.parity_samples, 32)] for k, v in images.items()}
    inputs = reference.part_inputs(parity_images)
    results: dict[str, ExportResult] = {}
    seconds: dict[str, float] = {}
    for role in spec.roles:
        name = spec.part(role)
        part = meta.parts[name]
        results[name] = export_onnx(
            root / part["file"],
            part["format"],
            sigs[role],
            out_dir / name / ONNX_FILE,
            cfg,
            inputs[role],
        )
        seconds[name] = round(results[name].duration_s, 3)
    start = time.perf_counter()
    checked = evaluation.take(END_TO_END_SAMPLES)
    onnx_parts = OnnxParts({n: r.onnx_path for n, r in results.items()}, spec)
    got = generate_batched(onnx_parts.generate, checked.inputs, spec, GENERATION_BATCH)
    ref = generate_batched(reference.generate, checked.inputs, spec, GENERATION_BATCH)
    e2e = compare_generations(got, ref, spec, reference_labels(checked))
    seconds["end_to_end"] = round(time.perf_counter() - start, 3)
    if e2e.agreement < MIN_AGREEMENT:
        raise ParityError(
            f"the exported ONNX parts generate other tokens than the source parts on "
            f"{len(e2e.mismatches)} of {e2e.samples} eval images (agreement {e2e.agreement:.3f} < "
            f"{MIN_AGREEMENT}; first {e2e.mismatches[:5]}): check each part's parity in the export report, "
            "or tighten export.atol/rtol to find the part that drifts"
        )
    return results, e2e, seconds


def run(
    source_model: Any,
    eval_data: Any,
    model_cfg: ModelConfig,
    export_cfg: ExportConfig,
    onnx_model: Any,
    metrics: Any,
    report: Any,
    meta: SourceModel,
) -> None:
    """The export stage for a generation model (called from ``components/export/stage.py``)."""
    signature = meta.model_signature()
    out_dir = Path(onnx_model.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = StageReport("export")
    with timed(rep):
        evaluation = load_dataset(eval_data.path, signature, what="data.eval_uri", min_samples=1)
        results, e2e, seconds = export_generation(
            meta, Path(source_model.path), evaluation, out_dir, export_cfg
        )
    spec = GenerationSpec.from_metadata(meta)
    parts = {
        name: {**r.to_metadata(), "role": spec.role_of(name), "file": f"{name}/{ONNX_FILE}"}
        for name, r in results.items()
    }
    worst = max((r.parity_summary().get("max_abs_diff", 0.0) for r in results.values()), default=0.0)
    opset = max(r.opset for r in results.values())
    combined = hashlib.sha256("".join(results[n].sha256 for n in spec.part_names).encode()).hexdigest()
    OnnxModel(
        file="",
        signature=signature.to_dict(),
        opset=opset,
        sha256=combined,
        source_format=meta.format,
        exported=any(r.exported for r in results.values()),
        parity_reference="pytorch",
        parity_samples=min(r.parity_samples for r in results.values()),
        parity={"max_abs_diff": worst, "e2e_agreement": e2e.agreement, "e2e_samples": e2e.samples},
        name=model_cfg.name,
        task="generation",
        parts=parts,
        generation=spec.to_dict(),
    ).write(onnx_model)
    figures: dict[str, Any] = {
        "opset": opset,
        "parts": len(parts),
        "parity_max_abs_diff": worst,
        "e2e_agreement": e2e.agreement,
        "export_seconds": round(rep.duration_s, 3),
    }
    if e2e.exact is not None:
        figures["fp32_onnx_exact_match"] = e2e.exact
        figures["pytorch_exact_match"] = e2e.reference_exact
    log_metrics(metrics, figures)
    rep.summary = {"file": "", "sha256": combined, "task": "generation", **figures}
    rep.details = {
        "signature": signature.to_dict(),
        "generation": spec.to_dict(),
        "parts": {
            name: {**parts[name], "parity_outputs": [c.to_dict() for c in r.parity]}
            for name, r in results.items()
        },
        "end_to_end": {"reference": "pytorch", "candidate": "onnxruntime_fp32", **e2e.to_dict()},
        "seconds": seconds,
    }
    rep.write(report.path)
