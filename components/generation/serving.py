"""The served Triton repository of a generation model: one model per part, and a streaming generator.

``<root>/model_repository/`` holds

- one model per part with that part's selected artifact (``onnxruntime_onnx`` or ``tensorrt_plan``,
  configs built through Triton's protobuf by :mod:`vxdeploy.components.package.model_config`), the
  vision encoder with dynamic batching and ``response_cache { enable: true }`` (a repeated image skips
  encoding: caching vision features is the standard VLM saving; the server needs ``--cache-config``);
- ``<model name>``: the BLS Python ``generator`` (``triton_models/generator.py``), decoupled, which
  runs vision encoder -> projector -> decoder prefill -> decoder step loop through
  ``pb_utils.InferenceRequest`` and streams one response per token (``output_ids``, ``text``).

A vLLM-backend language model (``triton.vllm_engine_args``) is written *configured only* under
``<root>/configured_only/`` -- outside the folder Triton loads, because neither the bundled server nor
the project's serving image has the vLLM backend, and a model that fails to load keeps Triton from
becoming ready. Its config and ``model.json`` are checked (backend, decoupled, the tensors a client
sends); to serve a real LLM, move it into ``model_repository/`` on NGC's
``tritonserver:<yy.mm>-vllm-python-py3`` image.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.errors import ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature, TensorSpec, signature_from_onnx
from vxdeploy.components.generation.spec import (
    IMAGE_TOKENS,
    INPUT_IDS,
    LOGITS,
    OUTPUT_IDS,
    PAST_PREFIX,
    PRESENT_PREFIX,
    GenerationSpec,
)
from vxdeploy.components.package.ensemble import (
    VLLM_SIGNATURE,
    EnsembleWiringError,
    ModelPart,
    _part_config,
)
from vxdeploy.components.package.model_config import (
    build_model_config,
    numpy_dtype,
    read_model_config,
    tensor_shape,
    write_model_config,
)
from vxdeploy.components.package.repository import (
    MODEL_REPOSITORY_DIR,
    PYTHON_MODEL_FILE,
    TritonRepository,
    finish,
    model_format,
    staging_dir,
    write_model,
)

GENERATOR_KIND = "generator"
"""The generator's kind in ``TritonRepository.kinds``."""
VLLM_KIND = "vllm"
CONFIGURED_ONLY_DIR = "configured_only"
"""Models written and checked but not loaded (the vLLM part): a sibling of ``model_repository/``."""
TEXT = "text"
ENCODE_MS = "encode_ms"
STREAM_OUTPUTS = (OUTPUT_IDS, TEXT, ENCODE_MS)
"""What each streamed response carries: the new token per image, its text, (first response) encode ms."""
GENERATOR_HISTOGRAMS = {
    "ttft_ms": "vxdeploy_generation_time_to_first_token_ms",
    "tokens_per_s": "vxdeploy_generation_tokens_per_second",
    "total_ms": "vxdeploy_generation_latency_ms",
}
"""The generator's Triton custom metrics (Prometheus histograms, labels ``model`` and ``version``),
spelled out again in ``triton_models/generator.py``, which is copied verbatim and imports nothing of
vxdeploy; counters ``vxdeploy_generation_{tokens,failures,metrics_export_errors}_total`` beside them."""


def generator_source() -> str:
    """The text of the BLS generator ``model.py`` vxdeploy ships."""
    return (resources.files("vxdeploy.components.package.triton_models") / "generator.py").read_text()


@dataclass(frozen=True)
class PartArtifact:
    """One part's selected artifact: its candidate kind, file and tensors."""

    role: str
    name: str
    kind: str
    file: Path
    signature: ModelSignature
    precision: str = ""


def part_artifacts(
    selected_dir: Path, parts: Mapping[str, Mapping[str, Any]], spec: GenerationSpec
) -> dict[str, PartArtifact]:
    """Role -> the selected artifact of each part (``SelectedModel.parts``).

    A part's signature comes from its facts (``signature``) or, for an ONNX file, from the file.

    Raises:
        ModelIntakeError: a part is missing from the selection, its file is absent, or its tensors
            are unknown (a TensorRT engine without ``signature``).
    """
    out: dict[str, PartArtifact] = {}
    for role in spec.roles:
        name = spec.part(role)
        facts = parts.get(name) or parts.get(role)
        if facts is None:
            raise ModelIntakeError(
                f"selected_model has no part {name!r} (role {role}); its parts: {sorted(parts)}; "
                "the selection stage selects one candidate per part"
            )
        file = selected_dir / str(facts.get("file", ""))
        if not file.is_file():
            raise ModelIntakeError(f"selected_model part {name!r}: file {str(file)!r} does not exist")
        kind = str(facts.get("kind", ""))
        model_format(kind)  # a kind the repository can hold, or a clear error
        if facts.get("signature"):
            signature = ModelSignature.from_dict(facts["signature"])
        elif file.suffix == ".onnx":
            signature = signature_from_onnx(file)
        else:
            raise ModelIntakeError(
                f"selected_model part {name!r} ({kind}) has no signature; the selection stage records each "
                "part's signature (parts[<part>].signature)"
            )
        out[role] = PartArtifact(role, name, kind, file, signature, str(facts.get("precision", "")))
    return out


FLAT_SUFFIX = "_flat"
"""``<input>_flat``: an encoder input as one flat list, the form Triton's generate extension can send."""


def flat_inputs(encoder: ModelSignature) -> dict[str, list[int]]:
    """``<input>_flat`` -> the element shape it is reshaped to, for each encoder input of static shape.

    Triton's generate extension (``/v2/models/<m>/generate[_stream]``, the route a decoupled model is
    served by through Vertex AI's invoke route) turns a JSON list into a 1-D tensor only, so an image
    ``[1, 8, 8]`` arrives as its 64 values; the generator reshapes it.
    """
    out: dict[str, list[int]] = {}
    for t in encoder.inputs:
        dims = t.shape[1:]
        if all(isinstance(d, int) for d in dims):
            out[t.name + FLAT_SUFFIX] = [int(d) for d in dims]
    return out


def generator_signature(encoder: ModelSignature) -> ModelSignature:
    """The generator's tensors: the encoder's inputs (or their flat form) in; per response, the token out."""
    flat = [
        TensorSpec(name, encoder.input(name[: -len(FLAT_SUFFIX)]).dtype, ("batch", "flat"))
        for name in flat_inputs(encoder)
    ]
    return ModelSignature(
        inputs=(*encoder.inputs, *flat),
        outputs=(
            TensorSpec(OUTPUT_IDS, "int64", ("batch", 1)),
            TensorSpec(TEXT, "object", ("batch", 1)),
            TensorSpec(ENCODE_MS, "float32", ("batch", 1)),
        ),
    )


def _by_name(tensors: Any) -> dict[str, Any]:
    return {t.name: t for t in tensors}


def _fail(message: str) -> EnsembleWiringError:
    return EnsembleWiringError(f"generator wiring: {message}")


def _same(what: str, given: Any, given_mbs: int, taken: Any, taken_mbs: int) -> None:
    a, b = tensor_shape(given, given_mbs), tensor_shape(taken, taken_mbs)
    agree = len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))
    if given.data_type != taken.data_type or not agree:
        raise _fail(
            f"{what}: {numpy_dtype(given.data_type)} {list(a)} is fed to an input of "
            f"{numpy_dtype(taken.data_type)} {list(b)}"
        )


def generator_wiring(configs: Mapping[str, mc.ModelConfig], spec: GenerationSpec) -> dict[str, Any]:
    """The tensor names the generator passes between the parts, checked against their configs.

    Args:
        configs: Role -> the part's model config.
        spec: The generation facts (which roles exist, the vocabulary size).

    Returns:
        The generator's ``wiring`` parameter: part model per role and the tensor names.

    Raises:
        EnsembleWiringError: a tensor one part gives does not fit the input of the next (dtype or
            shape), or a decoder part does not follow the cache contract.
    """
    enc = configs["vision_encoder"]
    if not enc.output:
        raise _fail(f"vision encoder {enc.name!r} has no output")
    features = enc.output[0]
    wiring: dict[str, Any] = {
        "parts": {role: configs[role].name for role in spec.roles},
        "features": features.name,
    }
    given, given_mbs = features, enc.max_batch_size
    if "projector" in configs:
        proj = configs["projector"]
        if len(proj.input) != 1 or not proj.output:
            raise _fail(f"projector {proj.name!r} must take one input and give image tokens")
        _same(
            f"{enc.name}.{features.name} -> {proj.name}.{proj.input[0].name}",
            given,
            given_mbs,
            proj.input[0],
            proj.max_batch_size,
        )
        wiring["projector_input"], wiring["projector_output"] = proj.input[0].name, proj.output[0].name
        given, given_mbs = proj.output[0], proj.max_batch_size
    pre, step = configs["decoder_prefill"], configs["decoder_step"]
    pre_in, pre_out = _by_name(pre.input), _by_name(pre.output)
    step_in, step_out = _by_name(step.input), _by_name(step.output)
    if INPUT_IDS not in pre_in or len(pre_in) != 2:
        raise _fail(
            f"decoder prefill {pre.name!r} takes {sorted(pre_in)}; it needs {[IMAGE_TOKENS, INPUT_IDS]}"
        )
    tokens_name = next(n for n in pre_in if n != INPUT_IDS)
    _same(
        f"image tokens -> {pre.name}.{tokens_name}", given, given_mbs, pre_in[tokens_name], pre.max_batch_size
    )
    present = [n for n in pre_out if n.startswith(PRESENT_PREFIX)]
    past = [PAST_PREFIX + n[len(PRESENT_PREFIX) :] for n in present]
    if LOGITS not in pre_out or LOGITS not in step_out or set(step_in) != {INPUT_IDS, *past}:
        raise _fail(
            f"the decoder parts do not follow the cache contract: {pre.name} outputs {sorted(pre_out)}, "
            f"{step.name} inputs {sorted(step_in)} and outputs {sorted(step_out)}; both give {LOGITS!r} and "
            f"present_<x>, the step takes {INPUT_IDS!r} and past_<x> for each present_<x>"
        )
    for config in (pre, step):
        ids = _by_name(config.input)[INPUT_IDS]
        if ids.data_type != mc.TYPE_INT64:
            raise _fail(f"{config.name}.{INPUT_IDS} is {numpy_dtype(ids.data_type)}; token ids are int64")
        vocab = int(tensor_shape(_by_name(config.output)[LOGITS], config.max_batch_size)[-1])
        if vocab not in (-1, len(spec.vocabulary)):
            raise _fail(
                f"{config.name}.{LOGITS} scores {vocab} tokens but model.generation.vocabulary has "
                f"{len(spec.vocabulary)}"
            )
    for p_out, s_in in zip(present, past, strict=True):
        for source in (pre, step):
            outs = _by_name(source.output)
            if p_out not in outs:
                raise _fail(f"{source.name} does not output {p_out!r} for the next step's {s_in!r}")
            _same(
                f"{source.name}.{p_out} -> {step.name}.{s_in}",
                outs[p_out],
                source.max_batch_size,
                step_in[s_in],
                step.max_batch_size,
            )
    sizes = {c.max_batch_size > 0 for c in configs.values()}
    if len(sizes) != 1:
        raise _fail("either every part batches (max_batch_size > 0) or none does")
    wiring.update(image_tokens=tokens_name, input_ids=INPUT_IDS, logits=LOGITS, present=present, past=past)
    return wiring


def check_vllm_part(model_dir: Path) -> list[str]:
    """Check a configured-only vLLM model: backend, decoupled, the tensors a client sends, model.json.

    Returns:
        What was checked, one line each.

    Raises:
        EnsembleWiringError: naming what does not fit Triton's vLLM backend.
    """
    config = read_model_config(model_dir)
    checks = []
    if config.backend != "vllm":
        raise EnsembleWiringError(f"vLLM part {config.name!r}: backend {config.backend!r}, not 'vllm'")
    if not config.model_transaction_policy.decoupled:
        raise EnsembleWiringError(f"vLLM part {config.name!r} must be decoupled (it streams text)")
    checks.append(f"{config.name}: backend vllm, decoupled, KIND_MODEL, max_batch_size 0 (vLLM batches)")
    ins, outs = _by_name(config.input), _by_name(config.output)
    for spec in (*VLLM_SIGNATURE.inputs, *VLLM_SIGNATURE.outputs):
        got = ins.get(spec.name) or outs.get(spec.name)
        if got is None or numpy_dtype(got.data_type) != spec.dtype:
            raise EnsembleWiringError(
                f"vLLM part {config.name!r}: tensor {spec.name!r} should be {spec.dtype}; config has "
                f"{numpy_dtype(got.data_type) if got is not None else 'none'}"
            )
    checks.append(f"{config.name}: tensors {sorted(ins)} -> {sorted(outs)} match Triton's vLLM backend")
    engine = json.loads((model_dir / "1" / "model.json").read_text())
    if not engine.get("model"):
        raise EnsembleWiringError(f"vLLM part {config.name!r}: model.json names no 'model'")
    checks.append(f"{config.name}: model.json serves {engine['model']!r}")
    return checks


@dataclass(frozen=True)
class GenerationRepository:
    """The packaged repository and what the report says about it."""

    repository: TritonRepository
    parts: dict[str, PartArtifact]
    wiring: dict[str, Any]
    vllm_checks: list[str]
    notes: list[str]


def package_generation_repository(
    selected_dir: str | Path,
    parts: Mapping[str, Mapping[str, Any]],
    spec: GenerationSpec,
    *,
    model_name: str,
    triton: TritonConfig,
    instance_kind: str,
    out_dir: str | Path,
    version: int = 1,
) -> GenerationRepository:
    """Write the generation model's Triton repository (see the module docstring).

    Args:
        selected_dir: The ``selected_model`` artifact's folder (``<part>/<file>`` inside).
        parts: ``SelectedModel.parts``: per part its kind, file and (optionally) signature.
        spec: The generation facts (roles, special tokens, vocabulary).
        model_name: The generator's Triton name: the model requests go to (Vertex AI's default).
        triton: The Triton section (batching, instances, warm-up, response cache size, vLLM args).
        instance_kind: ``KIND_GPU`` or ``KIND_CPU`` for the parts.
        out_dir: Where the repository goes (absent or empty); built beside it, then renamed.
        version: The version folder of every model.

    Raises:
        EnsembleWiringError: the parts' tensors do not chain (named); nothing is published then.
        ModelIntakeError: a part's artifact is missing or cannot be served.
    """
    artifacts = part_artifacts(Path(selected_dir), parts, spec)
    clash = [a.name for a in artifacts.values() if a.name == model_name]
    if clash:
        raise ModelIntakeError(
            f"part {clash[0]!r} has the model's name; the generator is served as model.name={model_name!r}: "
            "rename the part or the model"
        )
    out = Path(out_dir)
    staging = staging_dir(out)
    try:
        repo_dir = staging / MODEL_REPOSITORY_DIR
        configs: dict[str, mc.ModelConfig] = {}
        for role, art in artifacts.items():
            # The encoder caches its answers and batches; the rest follow the Triton section.
            part_triton = triton
            if role == "vision_encoder":
                batching = triton.dynamic_batching.model_copy(update={"enabled": True})
                part_triton = triton.model_copy(update={"response_cache": True, "dynamic_batching": batching})
            else:
                part_triton = triton.model_copy(update={"response_cache": False})
            configs[role] = write_model(
                repo_dir,
                art.name,
                art.kind,
                art.file,
                art.signature,
                part_triton,
                instance_kind=instance_kind,
                version=version,
            )
        wiring = generator_wiring(configs, spec)
        encoder = artifacts["vision_encoder"].signature
        flat = flat_inputs(encoder)
        generator = build_model_config(
            model_name,
            generator_signature(encoder),
            triton.model_copy(update={"response_cache": False}),
            backend="python",
            instance_kind="KIND_CPU",
            max_batch_size=configs["vision_encoder"].max_batch_size,
            # Either form of each image input: the tensor (gRPC, HTTP infer) or its flat list (generate).
            optional_inputs=[t.name for t in encoder.inputs] + list(flat) if flat else (),
            parameters={
                "wiring": json.dumps({**wiring, "flat_inputs": flat}, sort_keys=True),
                "generation": json.dumps(
                    {k: v for k, v in spec.to_dict().items() if k != "label_captions"}, sort_keys=True
                ),
            },
            decoupled=True,
        )
        gen_dir = repo_dir / model_name
        (gen_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (gen_dir / str(version) / PYTHON_MODEL_FILE).write_text(generator_source())
        write_model_config(generator, gen_dir)
        vllm_checks, notes = _vllm_part(staging, model_name, triton, version)
        kinds = {a.name: a.kind for a in artifacts.values()} | {model_name: GENERATOR_KIND}
        all_configs = {configs[r].name: configs[r] for r in configs} | {model_name: generator}
        repository = finish(staging, out, configs=all_configs, kinds=kinds, default_model=model_name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return GenerationRepository(repository, artifacts, wiring, vllm_checks, notes)


def _vllm_part(
    staging: Path, model_name: str, triton: TritonConfig, version: int
) -> tuple[list[str], list[str]]:
    args = dict(triton.vllm_engine_args)
    if not args:
        return [], [
            "no vLLM-backend part: triton.vllm_engine_args is empty (a real LLM's vLLM engine arguments, "
            "e.g. {model: Qwen/Qwen2-VL-2B-Instruct}, write one, configured only); this model's decoder "
            "runs as ONNX/TensorRT parts under the generator"
        ]
    name = f"{model_name}_vllm"
    folder = staging / CONFIGURED_ONLY_DIR
    _part_config(
        folder,
        ModelPart(name, VLLM_KIND, engine_args=args),
        triton,
        instance_kind="KIND_MODEL",
        version=version,
    )
    checks = check_vllm_part(folder / name)
    return checks, [
        f"vLLM-backend part {name!r} is configured only ({CONFIGURED_ONLY_DIR}/{name}): checked for wiring, "
        "not loaded: neither the bundled tritonserver nor the project's serving image has the vLLM backend; "
        f"move it into {MODEL_REPOSITORY_DIR}/ on NGC's vLLM Triton image to serve a real LLM"
    ]
