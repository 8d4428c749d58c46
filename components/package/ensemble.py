"""Multi-part models: one Triton model per part, wired together by an ``ensemble`` model.

A part is a compiled candidate (ONNX, TensorRT, AOTI), a Python-backend pre- or
post-processing model, or a vLLM-backend language model (``model.json``). The ensemble's
``ensemble_scheduling`` maps tensors between them, and :func:`check_ensemble_wiring` proves
every tensor a step consumes is produced upstream (or is an ensemble input) with the same
dtype and shape before the repository is published.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.errors import UserError
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package.model_config import (
    build_model_config,
    numpy_dtype,
    tensor_shape,
    warmable,
    write_model_config,
    write_warmup_data,
)
from vxdeploy.components.package.repository import (
    KIND_FORMATS,
    MODEL_REPOSITORY_DIR,
    PYTHON_MODEL_FILE,
    TritonRepository,
    finish,
    staging_dir,
    write_model,
)

ENSEMBLE_PLATFORM = "ensemble"
# Object stores have no folders: an empty version folder vanishes on upload, and Triton needs
# the ensemble's one; this file keeps it.
KEEP_FILE = ".keep"

VLLM_SIGNATURE = ModelSignature(
    inputs=(
        TensorSpec("text_input", "object", (1,)),
        TensorSpec("stream", "bool", (1,)),
        TensorSpec("sampling_parameters", "object", (1,)),
        TensorSpec("exclude_input_in_output", "bool", (1,)),
    ),
    outputs=(TensorSpec("text_output", "object", ("text",)),),
)
"""The tensors of Triton's vLLM backend (``backend: "vllm"``)."""
VLLM_OPTIONAL_INPUTS = ("sampling_parameters", "exclude_input_in_output")
PART_KINDS = (*KIND_FORMATS, "python", "vllm")


class EnsembleWiringError(UserError):
    """An ensemble step consumes a tensor nobody produces, or one of another dtype or shape."""


@dataclass(frozen=True)
class ModelPart:
    """One model of a multi-part repository.

    Attributes:
        name: Triton model name.
        kind: A candidate kind (``onnxruntime_fp32``, ``tensorrt_fp16``, ``aoti``, ...),
            ``python`` (``file`` is the part's model.py) or ``vllm`` (``engine_args`` is model.json).
        signature: The part's tensors; ignored for ``vllm``, whose tensors are the backend's.
        file: The model file, or the model.py of a ``python`` part (which should pass numeric
            tensors through DLPack, as ``triton_models/python_model.py`` explains).
        engine_args: vLLM engine arguments for ``model.json`` (``model``, ``gpu_memory_utilization``...).
        max_batch_size: Overrides ``triton.max_batch_size`` for this part (0: no batching).
    """

    name: str
    kind: str
    signature: ModelSignature | None = None
    file: Path | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    max_batch_size: int | None = None


@dataclass(frozen=True)
class EnsembleStep:
    """One step: a part and the ensemble tensors its inputs read and its outputs write.

    Attributes:
        model: The part's name.
        inputs: Part input name to ensemble tensor name.
        outputs: Part output name to ensemble tensor name.
    """

    model: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]


def _part_config(
    model_repository: Path, part: ModelPart, triton: TritonConfig, *, instance_kind: str, version: int
) -> mc.ModelConfig:
    if part.kind not in PART_KINDS:
        raise UserError(f"model part {part.name!r}: kind={part.kind!r} is not one of {', '.join(PART_KINDS)}")
    model_dir = model_repository / part.name
    version_dir = model_dir / str(version)
    if part.kind == "vllm":
        if "model" not in part.engine_args:
            raise UserError(
                f"model part {part.name!r}: engine_args needs 'model' "
                "(a Hugging Face id or a path in the serving image)"
            )
        version_dir.mkdir(parents=True, exist_ok=True)
        (version_dir / "model.json").write_text(
            json.dumps(dict(part.engine_args), indent=2, sort_keys=True) + "\n"
        )
        # vLLM batches inside its engine and streams responses, so Triton neither batches nor places it.
        config = build_model_config(
            part.name,
            VLLM_SIGNATURE,
            triton,
            backend="vllm",
            instance_kind="KIND_MODEL",
            max_batch_size=0,
            optional_inputs=VLLM_OPTIONAL_INPUTS,
            decoupled=True,
        )
        write_model_config(config, model_dir)
        return config
    if part.signature is None or part.file is None:
        raise UserError(f"model part {part.name!r} of kind {part.kind!r} needs a signature and a file")
    if part.kind != "python":
        triton_for_part = triton
        if part.max_batch_size is not None:
            triton_for_part = triton.model_copy(update={"max_batch_size": part.max_batch_size})
        return write_model(
            model_repository,
            part.name,
            part.kind,
            part.file,
            part.signature,
            triton_for_part,
            instance_kind=instance_kind,
            version=version,
        )
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(part.file, version_dir / PYTHON_MODEL_FILE)
    mbs = triton.max_batch_size if part.max_batch_size is None else part.max_batch_size
    warmup = None
    if triton.warmup and warmable(part.signature):
        warmup = write_warmup_data(model_dir, part.signature, batched=mbs > 0)
    config = build_model_config(
        part.name,
        part.signature,
        triton,
        backend="python",
        instance_kind=instance_kind,
        max_batch_size=mbs,
        warmup_files=warmup,
    )
    write_model_config(config, model_dir)
    return config


def build_ensemble_config(
    name: str,
    steps: Sequence[EnsembleStep],
    parts: Mapping[str, mc.ModelConfig],
    *,
    outputs: Sequence[str] | None = None,
) -> mc.ModelConfig:
    """The ensemble model's config; its inputs and outputs follow from the steps.

    Ensemble inputs are the tensors some step consumes and no step produces; ensemble outputs
    are ``outputs`` (default: the tensors produced and consumed by no step). The ensemble
    batches when every part does, up to the smallest part's ``max_batch_size``.

    Raises:
        EnsembleWiringError: when a step names a part or a tensor its part does not have.
    """
    for step in steps:
        _check_step_names(step, parts)
    sizes = [parts[s.model].max_batch_size for s in steps]
    mbs = min(sizes) if sizes and all(b > 0 for b in sizes) else 0
    produced: dict[str, tuple[mc.ModelConfig, mc.ModelOutput]] = {}
    consumed: dict[str, tuple[mc.ModelConfig, mc.ModelInput]] = {}
    for step in steps:
        model = parts[step.model]
        outs = {t.name: t for t in model.output}
        ins = {t.name: t for t in model.input}
        for model_output, tensor in step.outputs.items():
            produced.setdefault(tensor, (model, outs[model_output]))
        for model_input, tensor in step.inputs.items():
            consumed.setdefault(tensor, (model, ins[model_input]))
    config = mc.ModelConfig(name=name, platform=ENSEMBLE_PLATFORM, max_batch_size=mbs)
    for tensor, (model, spec) in consumed.items():
        if tensor not in produced:
            config.input.add(
                name=tensor, data_type=spec.data_type, dims=_ensemble_dims(spec, model.max_batch_size, mbs)
            )
    wanted = list(outputs) if outputs is not None else [t for t in produced if t not in consumed]
    for tensor in wanted:
        if tensor not in produced:
            raise EnsembleWiringError(
                f"ensemble output {tensor!r} is produced by no step; produced tensors: {sorted(produced)}"
            )
        model, out = produced[tensor]
        config.output.add(
            name=tensor, data_type=out.data_type, dims=_ensemble_dims(out, model.max_batch_size, mbs)
        )
    for step in steps:
        entry = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        for key, value in step.inputs.items():
            entry.input_map[key] = value
        for key, value in step.outputs.items():
            entry.output_map[key] = value
    return config


def _ensemble_dims(spec: mc.ModelInput | mc.ModelOutput, part_mbs: int, ensemble_mbs: int) -> list[int]:
    full = tensor_shape(spec, part_mbs)
    return list(full[1:] if ensemble_mbs > 0 else full)


def _check_step_names(step: EnsembleStep, parts: Mapping[str, mc.ModelConfig]) -> None:
    if step.model not in parts:
        raise EnsembleWiringError(
            f"ensemble step names model {step.model!r}, which is not a part; parts: {sorted(parts)}"
        )
    model = parts[step.model]
    inputs = {t.name for t in model.input}
    outputs = {t.name for t in model.output}
    for model_input, tensor in step.inputs.items():
        if model_input not in inputs:
            raise EnsembleWiringError(
                f"step {step.model!r} maps tensor {tensor!r} to input {model_input!r}, which {step.model!r} "
                f"does not have; its inputs: {sorted(inputs)}"
            )
    for model_output, tensor in step.outputs.items():
        if model_output not in outputs:
            raise EnsembleWiringError(
                f"step {step.model!r} maps output {model_output!r} to tensor {tensor!r}, but {step.model!r} "
                f"has no such output; its outputs: {sorted(outputs)}"
            )


def _shapes_agree(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _describe(data_type: int, shape: tuple[int, ...]) -> str:
    return f"{numpy_dtype(data_type)} {list(shape)}"


def check_ensemble_wiring(ensemble: mc.ModelConfig, models: Mapping[str, mc.ModelConfig]) -> None:
    """Check an ensemble's ``ensemble_scheduling`` against its parts' configs.

    Every tensor a step consumes must be an ensemble input or produced by another step
    upstream (no cycles), with the same dtype and a shape that agrees (-1 matches any size);
    every required input of a part must be fed; each tensor is produced once; every ensemble
    output is produced with its declared dtype and shape.

    Raises:
        EnsembleWiringError: naming the tensor, the step and what does not match.
    """
    mbs = ensemble.max_batch_size
    steps = [
        EnsembleStep(s.model_name, dict(s.input_map), dict(s.output_map))
        for s in ensemble.ensemble_scheduling.step
    ]
    if not steps:
        raise EnsembleWiringError(f"ensemble {ensemble.name!r} has no steps")
    sources: dict[str, tuple[str, int, tuple[int, ...]]] = {
        t.name: ("the ensemble input", t.data_type, tensor_shape(t, mbs)) for t in ensemble.input
    }
    producer_step: dict[str, int] = {}
    for index, step in enumerate(steps):
        _check_step_names(step, models)
        model = models[step.model]
        outs = {t.name: t for t in model.output}
        for model_output, tensor in step.outputs.items():
            if tensor in sources:
                raise EnsembleWiringError(
                    f"tensor {tensor!r} is produced twice: by {sources[tensor][0]} and by step "
                    f"{step.model!r} (output {model_output!r}); give each produced tensor its own name"
                )
            spec = outs[model_output]
            sources[tensor] = (
                f"step {step.model!r} (output {model_output!r})",
                spec.data_type,
                tensor_shape(spec, model.max_batch_size),
            )
            producer_step[tensor] = index
    for step in steps:
        model = models[step.model]
        ins = {t.name: t for t in model.input}
        for model_input, tensor in step.inputs.items():
            if tensor not in sources:
                raise EnsembleWiringError(
                    f"tensor {tensor!r} consumed by step {step.model!r} (input {model_input!r}) is "
                    f"produced by no step and is not an ensemble input; produced: {sorted(sources)}"
                )
            origin, data_type, shape = sources[tensor]
            spec = ins[model_input]
            want = tensor_shape(spec, model.max_batch_size)
            if data_type != spec.data_type or not _shapes_agree(shape, want):
                raise EnsembleWiringError(
                    f"tensor {tensor!r}: {origin} gives {_describe(data_type, shape)}, but step "
                    f"{step.model!r} input {model_input!r} takes {_describe(spec.data_type, want)}"
                )
        missing = [t.name for t in model.input if not t.optional and t.name not in step.inputs]
        if missing:
            raise EnsembleWiringError(
                f"step {step.model!r} leaves its required input(s) {missing} unfed; "
                "map each to an ensemble tensor"
            )
    _check_acyclic(steps, producer_step)
    for out in ensemble.output:
        if out.name not in producer_step:
            raise EnsembleWiringError(f"ensemble output {out.name!r} is produced by no step")
        origin, data_type, shape = sources[out.name]
        want = tensor_shape(out, mbs)
        if data_type != out.data_type or not _shapes_agree(shape, want):
            raise EnsembleWiringError(
                f"tensor {out.name!r}: {origin} gives {_describe(data_type, shape)}, but the ensemble output "
                f"declares {_describe(out.data_type, want)}"
            )


def _check_acyclic(steps: Sequence[EnsembleStep], producer_step: Mapping[str, int]) -> None:
    """Kahn's algorithm over step dependencies; a leftover step sits on a cycle."""
    needs = {
        i: {producer_step[t] for t in s.inputs.values() if t in producer_step} for i, s in enumerate(steps)
    }
    done: set[int] = set()
    progress = True
    while progress:
        ready = [i for i, deps in needs.items() if i not in done and deps <= done]
        progress = bool(ready)
        done.update(ready)
    stuck = sorted(set(needs) - done)
    if stuck:
        step = steps[stuck[0]]
        tensor = next(t for t in step.inputs.values() if t in producer_step and producer_step[t] in stuck)
        raise EnsembleWiringError(
            f"tensor {tensor!r} consumed by step {step.model!r} is produced downstream of it (a cycle "
            f"through steps {[steps[i].model for i in stuck]}); ensemble steps must form a pipeline"
        )


def package_ensemble(
    parts: Sequence[ModelPart],
    steps: Sequence[EnsembleStep],
    *,
    triton: TritonConfig,
    instance_kind: str,
    out_dir: str | Path,
    name: str = "ensemble",
    outputs: Sequence[str] | None = None,
    version: int = 1,
) -> TritonRepository:
    """Package a multi-part model: one model per part and an ensemble wiring them.

    Args:
        parts: The models; names must be unique and differ from ``name``.
        steps: How tensors flow between parts.
        triton: The Triton section (applies to every part; a part may override max_batch_size).
        instance_kind: ``KIND_GPU`` or ``KIND_CPU`` for the parts Triton places.
        out_dir: Where the repository goes (absent or empty).
        name: The ensemble model's name, Vertex AI's default model.
        outputs: Ensemble outputs (default: tensors produced and consumed by no step).
        version: Version folder of every model.

    Raises:
        EnsembleWiringError: naming the tensor whose wiring is broken; nothing is published then.
    """
    names = [p.name for p in parts]
    if len(set(names)) != len(names) or name in names:
        raise UserError(f"model part names {names} and the ensemble name {name!r} must all differ")
    out = Path(out_dir)
    staging = staging_dir(out)
    try:
        model_repository = staging / MODEL_REPOSITORY_DIR
        configs = {
            p.name: _part_config(model_repository, p, triton, instance_kind=instance_kind, version=version)
            for p in parts
        }
        ensemble = build_ensemble_config(name, steps, configs, outputs=outputs)
        check_ensemble_wiring(ensemble, configs)
        write_model_config(ensemble, model_repository / name)
        keep = model_repository / name / str(version) / KEEP_FILE
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text("The ensemble's version folder; Triton reads nothing here.\n")
        kinds = {p.name: p.kind for p in parts} | {name: ENSEMBLE_PLATFORM}
        return finish(staging, out, configs={**configs, name: ensemble}, kinds=kinds, default_model=name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
