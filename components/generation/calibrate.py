"""INT8 calibration of a generation model: Q/DQ part by part, gated on the generated text.

Each group of :data:`CALIBRATION_GROUPS` gets explicit Q/DQ INT8 through the single-model backends
(:mod:`vxdeploy.components.calibrate.backends`: ONNX Runtime calibration and ``quantize_static``, or
ModelOpt where installed), calibrated on the calibration images run through the earlier FP32 parts
(the encoder on the images, the projector on the encoder's features, the prefill on the image tokens
and ``bos``, the step on the first greedy token and the prefill's cache). The gate is END TO END:
captions generated with the INT8 part(s) and FP32 for the rest, against captions of FP32 everywhere,
on the eval images. A group is accepted when the exact-caption-match drop stays within
``selection.accuracy_budget`` points (without reference captions: the share of token sequences that
differ from FP32). Groups are tried in run order and cumulatively (the projector with the accepted
INT8 encoder, the decoder with the accepted vision side), so what is accepted may be served together.
The vision encoder is where INT8 pays; the decoder is tried only with ``quantization.quantize_decoder``
(prefill and step together: they share weights) and kept INT8 only if it passes; otherwise it stays
FP32 with the reason recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.calibrate.backends import (
    compute_ranges,
    effective_reduce_range,
    quantize_modelopt,
    quantize_onnxruntime,
    resolve_backend,
)
from vxdeploy.components.calibrate.int8 import MATMUL_OP_TYPES, has_attention
from vxdeploy.components.calibrate.samples import check_calibration_samples
from vxdeploy.components.common.artifacts import CalibratedModel, OnnxModel
from vxdeploy.components.common.config import DataConfig, QuantizationConfig, SelectionConfig
from vxdeploy.components.common.data import Dataset, load_dataset
from vxdeploy.components.common.stage import (
    StageReport,
    log_metrics,
    markdown_table,
    timed,
    write_json,
    write_text_atomic,
)
from vxdeploy.components.export.onnx_export import ONNX_FILE, sha256_file
from vxdeploy.components.generation.intake import reference_labels
from vxdeploy.components.generation.loop import (
    Generation,
    OnnxParts,
    agreement,
    exact_match,
    generate_batched,
)
from vxdeploy.components.generation.spec import INPUT_IDS, GenerationSpec

VISION_ROLES = ("vision_encoder", "projector")
CALIBRATION_GROUPS = (("vision_encoder",), ("projector",), ("decoder_prefill", "decoder_step"))
"""Quantized and gated in this order, cumulatively; the decoder's prefill and step share their weights,
so they are tried together."""
DECODER_REASON = (
    "kept FP32 (quantization.quantize_decoder is false): the decoder runs once per token on one position, "
    "so INT8 saves little, while its error compounds through the logits and key/value cache over every "
    "step; set quantization.quantize_decoder: true to try it, gated end to end"
)
DECODER_NOTE = (
    "the decoder runs once per token on one position (small matrix products, little INT8 saves) and its "
    "quantization error compounds through the logits and key/value cache over every step, so it is kept "
    "INT8 only if generation stays within the budget"
)

TABLE_MD = "accuracy.md"
TABLE_JSON = "accuracy.json"
RANGES_FILE = "calibration_ranges.json"


@dataclass
class PartVerdict:
    """One part's INT8 outcome, as ``CalibratedModel.parts[part]``."""

    role: str
    produced: bool = False
    accepted: bool = False
    reason: str = ""
    file: str | None = None
    method: str | None = None
    backend: str | None = None
    fp32_exact: float | None = None
    int8_exact: float | None = None
    drop_points: float | None = None
    agreement: float | None = None
    sha256: str | None = None
    operators: str | None = None
    calibration_samples: int = 0
    seconds: float = 0.0
    ranges: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "ranges"}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class GenerationCalibration:
    """Every part's verdict and the end-to-end figures of the accepted combination."""

    spec: GenerationSpec
    parts: dict[str, PartVerdict]
    backend: str
    fp32_exact: float | None
    final_exact: float | None
    final_agreement: float
    gate_samples: int
    calibration_samples: int
    budget: float
    notes: list[str]

    @property
    def accepted_parts(self) -> list[str]:
        return [n for n, v in self.parts.items() if v.accepted]

    @property
    def reason(self) -> str:
        accepted = self.accepted_parts
        if accepted:
            return f"INT8 accepted for {accepted}; " + "; ".join(
                f"{n}: {v.reason}" for n, v in self.parts.items() if not v.accepted
            )
        return "no part's INT8 model passed the end-to-end gate: " + "; ".join(
            f"{n}: {v.reason}" for n, v in self.parts.items()
        )


def _drop(fp32: Generation, cand: Generation, refs: list[str] | None) -> tuple[float | None, float, float]:
    """(candidate exact or None, agreement with FP32, drop in points the budget applies to)."""
    agree = agreement(cand.tokens, fp32.tokens)
    # Rounded: one caption of 200 is 0.5 points exactly, not 0.50000000000000x.
    if refs is None:
        return None, agree, round((1.0 - agree) * 100.0, 6)
    exact = exact_match(cand.texts, refs)
    return exact, agree, round((exact_match(fp32.texts, refs) - exact) * 100.0, 6)


def _quantize(
    fp32_path: Path,
    out_path: Path,
    inputs: dict[str, np.ndarray],
    cfg: QuantizationConfig,
    backend: str,
) -> tuple[dict[str, Any], str]:
    """Write ``out_path`` (Q/DQ INT8) with the configured backend; return the ranges and the operators."""
    attention = has_attention(fp32_path)
    op_types = (
        list(MATMUL_OP_TYPES)
        if cfg.operators == "matmul" or (cfg.operators == "auto" and attention)
        else None
    )
    if backend == "modelopt":
        quantize_modelopt(fp32_path, out_path, inputs, cfg)
        return {}, "modelopt"
    ranges = compute_ranges(fp32_path, inputs, cfg, out_path.with_name("calibration.cache"), op_types)
    quantize_onnxruntime(fp32_path, out_path, ranges, cfg, op_types=op_types)
    return ranges.to_json(), "all" if op_types is None else ",".join(op_types)


def calibrate_generation(
    meta: OnnxModel,
    root: Path,
    calibration: Dataset,
    evaluation: Dataset,
    out_dir: Path,
    cfg: QuantizationConfig,
    data_cfg: DataConfig,
    budget: float,
) -> GenerationCalibration:
    """Quantize the parts group by group and gate each on the generated captions (module docstring).

    Raises:
        DataError: too few calibration samples, or data that does not fit the model.
        ConfigError: a backend that cannot run here.
    """
    spec = GenerationSpec.from_metadata(meta)
    signature = meta.model_signature()
    backend = resolve_backend(cfg)
    calib, notes = check_calibration_samples(
        calibration,
        signature,
        min_samples=data_cfg.min_calibration_samples,
        warn_samples=data_cfg.warn_calibration_samples,
        max_samples=data_cfg.max_calibration_samples,
    )
    gate = evaluation.take(cfg.gate_samples)
    labels = reference_labels(gate)
    refs = spec.references(labels) if labels is not None else None
    fp32_paths = {spec.role_of(n): root / p["file"] for n, p in meta.parts.items()}
    fp32_runner = OnnxParts(fp32_paths, spec)
    fp32 = generate_batched(fp32_runner.generate, gate.inputs, spec)
    fp32_exact = None if refs is None else exact_match(fp32.texts, refs)
    calib_inputs = calibration_inputs(fp32_runner, calib.inputs, cfg.calibration_batch_size)
    current = dict(fp32_paths)
    final_exact, final_agree = fp32_exact, 1.0
    verdicts = {spec.part(r): PartVerdict(role=r, fp32_exact=fp32_exact) for r in spec.roles}
    what = "exact caption match" if refs is not None else "token sequences differing from FP32"
    for group in CALIBRATION_GROUPS:
        roles = [r for r in group if r in spec.parts]
        if not roles:
            continue
        if group[0] not in VISION_ROLES and not cfg.quantize_decoder:
            for role in roles:
                verdicts[spec.part(role)].reason = DECODER_REASON
            continue
        start = time.perf_counter()
        trial = dict(current)
        try:
            for role in roles:
                name = spec.part(role)
                verdict = verdicts[name]
                out = out_dir / name / ONNX_FILE
                out.parent.mkdir(parents=True, exist_ok=True)
                verdict.ranges, verdict.operators = _quantize(
                    fp32_paths[role], out, calib_inputs[role], cfg, backend
                )
                verdict.produced, verdict.file = True, f"{name}/{ONNX_FILE}"
                verdict.method, verdict.backend, verdict.sha256 = cfg.method, backend, sha256_file(out)
                verdict.calibration_samples = len(next(iter(calib_inputs[role].values())))
                trial[role] = out
            cand = generate_batched(OnnxParts(trial, spec).generate, gate.inputs, spec)
        except Exception as exc:  # the quantizer's or ONNX Runtime's own error types
            if group[0] in VISION_ROLES:
                raise
            # The decoder is tried only because it might pass: a graph the quantizer cannot handle
            # (or whose INT8 model ONNX Runtime refuses) keeps it FP32, with the cause recorded.
            for role in roles:
                v = verdicts[spec.part(role)]
                v.produced, v.file, v.sha256 = False, None, None
                v.reason = f"{DECODER_NOTE}; INT8 could not be made ({type(exc).__name__}: {exc}); kept FP32"
            continue
        exact, agree, drop = _drop(fp32, cand, refs)
        with_parts = [spec.part(r) for r, p in trial.items() if p != fp32_paths[r]]
        accepted = drop <= budget
        verb = "<=" if accepted else ">"
        reason = (
            f"end to end with INT8 {with_parts}: {what} drop {drop:.2f} points {verb} budget {budget:g} "
            f"(agreement with FP32 {agree:.3f})" + ("" if accepted else "; kept FP32")
        )
        if group[0] not in VISION_ROLES:
            reason = f"{DECODER_NOTE}; {reason}"
        for role in roles:
            v = verdicts[spec.part(role)]
            v.int8_exact, v.agreement, v.drop_points = exact, agree, round(drop, 4)
            v.accepted, v.reason = accepted, reason
            v.seconds = round(time.perf_counter() - start, 3)
        if accepted:
            current = trial
            final_exact, final_agree = exact, agree
    return GenerationCalibration(
        spec=spec,
        parts=verdicts,
        backend=backend,
        fp32_exact=fp32_exact,
        final_exact=final_exact,
        final_agreement=final_agree,
        gate_samples=len(gate),
        calibration_samples=len(calib),
        budget=budget,
        notes=notes,
    )


def calibration_inputs(
    runner: OnnxParts, images: dict[str, np.ndarray], batch: int
) -> dict[str, dict[str, np.ndarray]]:
    """Each part's calibration inputs: the calibration images through the earlier FP32 parts.

    The encoder gets the images; the projector the encoder's features; the prefill the image tokens
    and ``bos``; the step the first greedy token and the prefill's key/value cache.
    """
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    n = len(next(iter(images.values())))
    for i in range(0, n, batch):
        chunk = {k: v[i : i + batch] for k, v in images.items()}
        feats = runner.sessions["vision_encoder"].run([runner.features], chunk)[0]
        out.setdefault("vision_encoder", []).append(chunk)
        if runner.projector_io is not None:
            out.setdefault("projector", []).append({runner.projector_io[0]: feats})
        tokens = runner.encode(chunk)
        ids = np.full((len(tokens), 1), runner.spec.bos_token_id, dtype=np.int64)
        out.setdefault("decoder_prefill", []).append({runner.prefill_tokens: tokens, INPUT_IDS: ids})
        logits, cache = runner.prefill(tokens, ids)
        first = np.asarray(logits).argmax(-1).astype(np.int64)[:, None]
        out.setdefault("decoder_step", []).append(
            {INPUT_IDS: first, **dict(zip(runner.past, cache, strict=True))}
        )
    return {
        role: {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        for role, batches in out.items()
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table_rows(result: GenerationCalibration) -> list[dict[str, Any]]:
    """One row per part, then the end-to-end row of the accepted combination."""
    rows = []
    for name, v in result.parts.items():
        rows.append(
            {
                "part": name,
                "role": v.role,
                "INT8": "produced" if v.produced else "no (FP32)",
                "accepted": "yes" if v.accepted else "no",
                "FP32 exact": _pct(v.fp32_exact),
                "INT8 exact (e2e)": _pct(v.int8_exact),
                "drop (points)": "-" if v.drop_points is None else f"{v.drop_points:.2f}",
                "agreement vs FP32": _pct(v.agreement),
                "reason": v.reason,
            }
        )
    rows.append(
        {
            "part": "end to end",
            "role": "accepted INT8 parts + FP32 rest",
            "INT8": ", ".join(result.accepted_parts) or "none",
            "accepted": "yes" if result.accepted_parts else "no",
            "FP32 exact": _pct(result.fp32_exact),
            "INT8 exact (e2e)": _pct(result.final_exact),
            "drop (points)": "-"
            if result.fp32_exact is None or result.final_exact is None
            else f"{100 * (result.fp32_exact - result.final_exact):.2f}",
            "agreement vs FP32": _pct(result.final_agreement),
            "reason": f"budget {result.budget:g} points on {result.gate_samples} eval images",
        }
    )
    return rows


def accuracy_markdown(result: GenerationCalibration) -> str:
    """The per-part and end-to-end accuracy table (exact caption match), with the verdicts."""
    return (
        f"# INT8 end-to-end gate ({result.backend}, generation)\n\n"
        f"Captions generated with each part's INT8 model (and the INT8 parts accepted before it) vs FP32 "
        f"everywhere, on {result.gate_samples} eval images; budget {result.budget:g} points of exact caption "
        f"match.\n\n{markdown_table(table_rows(result))}"
    )


def run(
    onnx_model: Any,
    calibration_data: Any,
    eval_data: Any,
    data_cfg: DataConfig,
    quant_cfg: QuantizationConfig,
    selection_cfg: SelectionConfig,
    qdq_model: Any,
    metrics: Any,
    table: Any,
    report: Any,
    meta: OnnxModel,
) -> None:
    """The calibration stage for a generation model (called from ``components/calibrate/stage.py``)."""
    signature = meta.model_signature()
    spec = GenerationSpec.from_metadata(meta)
    out_dir = Path(qdq_model.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = StageReport("calibrate")
    if not quant_cfg.enabled:
        reason = "quantization.enabled is false"
        parts = {
            n: {"role": r, "produced": False, "accepted": False, "reason": reason}
            for r, n in spec.parts.items()
        }
        CalibratedModel(
            accepted=False, reason=reason, produced=False, parts=parts, generation=spec.to_dict()
        ).write(qdq_model)
        rep.status, rep.reason = "skipped", reason
        write_text_atomic(table.path, f"INT8 calibration skipped: {reason}.\n")
        rep.write(report.path)
        return
    with timed(rep):
        calibration = load_dataset(
            calibration_data.path, signature, what="data.calibration_uri", min_samples=1
        )
        evaluation = load_dataset(eval_data.path, signature, what="data.eval_uri", min_samples=1)
        result = calibrate_generation(
            meta,
            Path(onnx_model.path),
            calibration,
            evaluation,
            out_dir,
            quant_cfg,
            data_cfg,
            selection_cfg.accuracy_budget,
        )
        write_json(out_dir / RANGES_FILE, {n: v.ranges for n, v in result.parts.items() if v.produced})
        write_json(out_dir / TABLE_JSON, {"rows": table_rows(result), "parts": _parts_meta(result)})
        write_text_atomic(out_dir / TABLE_MD, accuracy_markdown(result))
    drop = (
        None
        if result.fp32_exact is None or result.final_exact is None
        else round(100 * (result.fp32_exact - result.final_exact), 4)
    )
    CalibratedModel(
        produced=any(v.produced for v in result.parts.values()),
        accepted=bool(result.accepted_parts),
        reason=result.reason,
        file="",
        signature=signature.to_dict(),
        source_sha256=meta.sha256,
        opset=meta.opset,
        backend=result.backend,
        method=quant_cfg.method,
        accuracy_budget=result.budget,
        fp32_accuracy=result.fp32_exact,
        int8_accuracy=result.final_exact,
        top1_agreement=result.final_agreement,
        accuracy_drop_points=drop,
        calibration_samples=result.calibration_samples,
        eval_samples=result.gate_samples,
        activation_type=quant_cfg.activation_type,
        per_channel=quant_cfg.per_channel,
        reduce_range=effective_reduce_range(quant_cfg),
        ranges_file=RANGES_FILE,
        table_file=TABLE_MD,
        parts=_parts_meta(result),
        generation=spec.to_dict(),
    ).write(qdq_model)
    figures: dict[str, Any] = {
        "accepted": bool(result.accepted_parts),
        "int8_parts": len(result.accepted_parts),
        "e2e_agreement": result.final_agreement,
        "calibration_samples": result.calibration_samples,
        "calibration_seconds": round(rep.duration_s, 3),
    }
    if result.fp32_exact is not None:
        figures.update(
            fp32_exact_match=result.fp32_exact, int8_exact_match=result.final_exact, drop_points=drop
        )
    log_metrics(metrics, figures)
    write_text_atomic(table.path, accuracy_markdown(result))
    rep.reason = result.reason
    rep.summary = {"task": "generation", "accepted_parts": result.accepted_parts, **figures}
    rep.details = {
        "parts": _parts_meta(result),
        "end_to_end": {
            "fp32_exact": result.fp32_exact,
            "int8_exact": result.final_exact,
            "agreement": result.final_agreement,
            "drop_points": drop,
            "budget": result.budget,
            "samples": result.gate_samples,
        },
        "table": table_rows(result),
        "notes": result.notes,
        "files": [RANGES_FILE, TABLE_JSON, TABLE_MD, *(v.file for v in result.parts.values() if v.file)],
    }
    rep.write(report.path)


def _parts_meta(result: GenerationCalibration) -> dict[str, dict[str, Any]]:
    return {n: v.to_metadata() for n, v in result.parts.items()}
