"""Intake of a generation model: each part resolved and read, the role contract checked, the data loaded.

The ``source_model`` artifact holds one folder per part (``<part>/model.pt2``, ``.pt`` or ``.onnx``);
its metadata carries each part's signature under ``parts`` and the whole model's signature: the
vision encoder's inputs -> ``output_ids`` int64 [batch, max_new_tokens] (what the served generator
returns). Calibration and eval data are checked against that whole-model signature; built-in datasets
are written under the encoder's first input name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vxdeploy.components.common import builtin
from vxdeploy.components.common.artifacts import DatasetSamples, SourceModel
from vxdeploy.components.common.config import DataConfig, DeploymentConfig, ModelConfig, ModelPartConfig
from vxdeploy.components.common.data import Dataset, load_dataset
from vxdeploy.components.common.errors import ConfigError, ModelIntakeError, UserError
from vxdeploy.components.common.signature import BATCH_DIM, ModelSignature, TensorSpec
from vxdeploy.components.common.stage import StageReport, timed
from vxdeploy.components.common.uris import copy_atomic
from vxdeploy.components.generation.spec import (
    INPUT_IDS,
    LOGITS,
    OUTPUT_IDS,
    PAST_PREFIX,
    PRESENT_PREFIX,
    GenerationSpec,
)
from vxdeploy.components.intake.intake import detect_format, read_signature, resolve, sha256_file

SUFFIX = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".pt"}


@dataclass(frozen=True)
class PartIntake:
    """One part as intake resolved it."""

    name: str
    role: str
    path: Path
    format: str
    signature: ModelSignature
    sha256: str

    def to_metadata(self) -> dict[str, Any]:
        """``SourceModel.parts[name]``."""
        return {
            "role": self.role,
            "format": self.format,
            "file": f"{self.name}/model{SUFFIX[self.format]}",
            "signature": self.signature.to_dict(),
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class GenerationIntake:
    """The parts, the whole model's signature and the checked data."""

    spec: GenerationSpec
    parts: dict[str, PartIntake]
    signature: ModelSignature
    sha256: str
    calibration: Dataset
    evaluation: Dataset


def whole_signature(encoder: ModelSignature, spec: GenerationSpec) -> ModelSignature:
    """The generation model as one model: the encoder's inputs -> ``output_ids`` [batch, max_new_tokens]."""
    out = TensorSpec(OUTPUT_IDS, "int64", (BATCH_DIM, spec.max_new_tokens))
    return ModelSignature(inputs=encoder.inputs, outputs=(out,), dim_ranges=dict(encoder.dim_ranges))


def _part_config(part: ModelPartConfig) -> ModelConfig:
    return ModelConfig(uri=part.uri, inputs=part.inputs, output_names=part.output_names)


def resolve_part(part: ModelPartConfig, index: int, dest: Path) -> Path:
    """A local file for one part: ``builtin://digits-vlm/<part>``, a path, ``gs://`` or a registry version."""
    return resolve(part.uri, dest, what=f"model.parts[{index}].uri")


def read_part(part: ModelPartConfig, index: int, path: Path) -> tuple[str, ModelSignature]:
    """The part's format and signature (the shared intake code), errors naming the part."""
    try:
        fmt = detect_format(path, "auto")
        sig = read_signature(path, fmt, _part_config(part))
    except ModelIntakeError as exc:
        text = str(exc).replace("model.", f"model.parts[{index}].", 1)
        raise ModelIntakeError(f"part {part.name!r} ({part.role}): {text}") from exc
    return fmt, sig


def check_contract(spec: GenerationSpec, sigs: dict[str, ModelSignature]) -> None:
    """The parts' tensors follow the role contract, and the vocabulary covers the decoder's logits.

    Args:
        spec: The resolved generation facts.
        sigs: Role -> the part's signature.

    Raises:
        ModelIntakeError: a part's inputs or outputs are not those of its role.
        ConfigError: ``model.generation.vocabulary`` is shorter than the decoder's logits.
    """

    def fail(role: str, what: str) -> None:
        raise ModelIntakeError(
            f"part {spec.part(role)!r} (role {role}) {what}; see the role contract in "
            "docs (components/generation/spec.py): set model.parts[].output_names or fix the export"
        )

    enc = sigs["vision_encoder"]
    if not enc.outputs:
        fail("vision_encoder", "has no outputs")
    if "projector" in sigs and (len(sigs["projector"].inputs) != 1 or not sigs["projector"].outputs):
        fail("projector", f"has inputs {sigs['projector'].input_names}; it takes one tensor (the features)")
    pre, step = sigs["decoder_prefill"], sigs["decoder_step"]
    if INPUT_IDS not in pre.input_names or len(pre.inputs) != 2:
        fail("decoder_prefill", f"has inputs {pre.input_names}; it takes the image tokens and {INPUT_IDS!r}")
    present = [n for n in pre.output_names if n.startswith(PRESENT_PREFIX)]
    if LOGITS not in pre.output_names or not present:
        fail("decoder_prefill", f"has outputs {pre.output_names}; it returns {LOGITS!r} and present_<x>")
    past = [PAST_PREFIX + n[len(PRESENT_PREFIX) :] for n in present]
    if set(step.input_names) != {INPUT_IDS, *past}:
        fail("decoder_step", f"has inputs {step.input_names}; it takes {[INPUT_IDS, *past]}")
    if LOGITS not in step.output_names or set(present) - set(step.output_names):
        fail("decoder_step", f"has outputs {step.output_names}; it returns {[LOGITS, *present]}")
    for role, sig in (("decoder_prefill", pre), ("decoder_step", step)):
        logits = next(o for o in sig.outputs if o.name == LOGITS)
        vocab = logits.shape[-1] if logits.shape else None
        if isinstance(vocab, int) and vocab > len(spec.vocabulary):
            raise ConfigError(
                "model.generation.vocabulary",
                f"{len(spec.vocabulary)} tokens",
                f"part {spec.part(role)!r}'s logits pick among {vocab} token ids; list the text of each of "
                f"the {vocab} ids (token id -> text) so every generated id decodes",
            )


def builtin_data(uri: str, dest: Path, input_name: str, what: str) -> Path:
    """A data URI as a local file; built-in digits are written under ``input_name``."""
    if builtin.is_builtin(uri):
        return builtin.write_builtin(uri, dest, input_name=input_name)
    return resolve(uri, dest, what=what)


def intake_generation(
    model_cfg: ModelConfig, data_cfg: DataConfig, workdir: str | Path, *, api_endpoint: str | None = None
) -> GenerationIntake:
    """Resolve and read every part, check the role contract, load the data against the whole model.

    Raises:
        UserError: a part cannot be read, breaks the role contract, or the data does not fit.
    """
    spec = GenerationSpec.from_config(model_cfg)
    work = Path(workdir)
    parts: dict[str, PartIntake] = {}
    for i, part in enumerate(model_cfg.parts):
        role = spec.role_of(part.name)  # == part.role (validated by the config)
        path = resolve_part(part, i, work / "model" / part.name)
        fmt, sig = read_part(part, i, path)
        parts[part.name] = PartIntake(part.name, role, path, fmt, sig, sha256_file(path))
    by_role = {p.role: p.signature for p in parts.values()}
    check_contract(spec, by_role)
    signature = whole_signature(by_role["vision_encoder"], spec)
    first = signature.inputs[0].name
    calib_path = builtin_data(data_cfg.calibration_uri, work / "data", first, "data.calibration_uri")
    eval_path = builtin_data(data_cfg.eval_uri, work / "data", first, "data.eval_uri")
    if calib_path.resolve() == eval_path.resolve():
        raise UserError("data.calibration_uri and data.eval_uri are the same file; evaluate on held-out data")
    calibration = load_dataset(
        calib_path, signature, what="data.calibration_uri", labels_key=data_cfg.labels_key, min_samples=1
    )
    evaluation = load_dataset(
        eval_path, signature, what="data.eval_uri", labels_key=data_cfg.labels_key, min_samples=1
    )
    refs = reference_labels(evaluation)
    if refs is not None:
        spec.references(refs)  # labels outside label_captions fail here, before any export
    combined = hashlib.sha256("".join(parts[n].sha256 for n in spec.part_names).encode()).hexdigest()
    return GenerationIntake(spec, parts, signature, combined, calibration, evaluation)


def reference_labels(evaluation: Dataset) -> Any:
    """The references of captions: ``labels/output_ids`` (token ids), else ``labels``; None if neither."""
    if OUTPUT_IDS in evaluation.targets:
        return evaluation.targets[OUTPUT_IDS]
    return evaluation.labels


def store_parts(result: GenerationIntake, dest: str | Path) -> None:
    """Copy each part into ``dest/<part>/model<suffix>``."""
    for name, part in result.parts.items():
        copy_atomic(part.path, Path(dest) / name / f"model{SUFFIX[part.format]}")


def run(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    deploy_cfg: DeploymentConfig,
    source_model: Any,
    calibration_data: Any,
    eval_data: Any,
    report: Any,
    rep: StageReport,
    workdir: str | Path,
) -> tuple[bool, bool]:
    """The intake stage for a generation model (called from ``components/intake/stage.py``).

    Returns:
        ``(proceed, deploy)``.
    """
    with timed(rep):
        result = intake_generation(model_cfg, data_cfg, workdir, api_endpoint=deploy_cfg.api_endpoint or None)
        Path(source_model.path).mkdir(parents=True, exist_ok=True)
        store_parts(result, source_model.path)
        result.calibration.save(calibration_data.path)
        result.evaluation.save(eval_data.path)
    encoder = result.parts[result.spec.part("vision_encoder")]
    SourceModel(
        format=encoder.format,  # type: ignore[arg-type]  # detect_format returns one of them
        file="",
        signature=result.signature.to_dict(),
        sha256=result.sha256,
        uri=model_cfg.uri,
        name=model_cfg.name,
        parts={n: p.to_metadata() for n, p in result.parts.items()},
        generation=result.spec.to_dict(),
    ).write(source_model)
    DatasetSamples(samples=len(result.calibration)).write(calibration_data)
    labelled = reference_labels(result.evaluation) is not None
    DatasetSamples(samples=len(result.evaluation), labelled=labelled).write(eval_data)
    rep.summary = {
        "model_uri": model_cfg.uri,
        "task": "generation",
        "format": encoder.format,
        "sha256": result.sha256,
        "parts": len(result.parts),
        "calibration_samples": len(result.calibration),
        "eval_samples": len(result.evaluation),
        "deploy": deploy_cfg.enabled,
    }
    rep.details = {
        "signature": result.signature.to_dict(),
        "generation": result.spec.to_dict(),
        "parts": {n: p.to_metadata() for n, p in result.parts.items()},
    }
    rep.write(report.path)
    return True, deploy_cfg.enabled
