"""The one validated configuration model of a vxdeploy run.

A run is described by :class:`RunConfig`, loaded from YAML (``--config run.yaml``) or
built in code. It maps onto the pipeline's flat root parameters plus one override per section
(:meth:`RunConfig.to_pipeline_parameters`), and each component re-validates the section it
receives, so a bad value fails with the field named wherever it enters.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.common.vertex_resources import PROJECT_ID_RE, VERTEX_LOCATIONS, check_machine

CandidateKind = Literal[
    "onnxruntime_fp32",
    "onnxruntime_int8",
    "onnxruntime_int8_dynamic",
    "tensorrt_fp32",
    "tensorrt_fp16",
    "tensorrt_int8",
    "aoti",
]
CALIBRATION_METHODS = ("entropy", "max", "percentile")
GPU_ACCELERATORS = (
    "NVIDIA_TESLA_T4",
    "NVIDIA_L4",
    "NVIDIA_TESLA_V100",
    "NVIDIA_TESLA_A100",
    "NVIDIA_A100_80GB",
    "NVIDIA_H100_80GB",
    "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB",
)
# Triton keeps max_batch_size in an int32; far below that, no GPU holds the batch.
MAX_TRITON_BATCH = 65536
_IMAGE_RE = re.compile(
    r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9._-]+)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$"
)
_SERVICE_ACCOUNT_RE = re.compile(
    r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.:-]+\.iam\.gserviceaccount\.com$"
    r"|^[0-9]+-compute@developer\.gserviceaccount\.com$"
)
_ENDPOINT_RE = re.compile(r"^(projects/[^/]+/locations/[^/]+/endpoints/)?[^/\s][^/]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
_NETWORK_RE = re.compile(r"^projects/[^/]+/global/networks/[^/]+$")
_EMAIL_RE = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>.]+$")
_CHANNEL_RE = re.compile(r"^(projects/[^/]+/notificationChannels/)?[A-Za-z0-9_-]+$")


class _Section(BaseModel):
    # Infinity and NaN are never meaningful settings (`interval_s: .inf` would hold a canary step forever).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TensorOverride(_Section):
    """An input's signature, for models whose file does not carry one (TorchScript)."""

    name: str
    dtype: str = "float32"
    shape: list[int | str] = Field(description="Dims; a string (e.g. 'batch') marks a dynamic dim.")


GENERATION_ROLES = ("vision_encoder", "projector", "decoder_prefill", "decoder_step")
BUILTIN_VLM_URI = "builtin://digits-vlm"


class ModelPartConfig(_Section):
    """One part of a multi-part model (e.g. a vision encoder and a text head)."""

    name: str = Field(description="Triton model name of this part.")
    uri: str = Field(description="Path or gs:// URI of this part's .pt2, TorchScript or ONNX file.")
    inputs: list[TensorOverride] | None = None
    output_names: list[str] | None = None
    role: Literal["vision_encoder", "projector", "decoder_prefill", "decoder_step"] | None = Field(
        default=None,
        description=(
            "A generation model's part: vision_encoder, projector, decoder_prefill or decoder_step "
            "(docs: the role contract); default: the part's name when it is one of them."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _default_role(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("role") is None and data.get("name") in GENERATION_ROLES:
            return {**data, "role": data["name"]}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # A part's name becomes a folder of the Triton repository: '../../..' would escape it.
        return _check_name(v)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, "this part's .pt2, TorchScript or ONNX file")


def _check_name(v: str) -> str:
    if not _NAME_RE.match(v) or v in (".", ".."):
        raise ValueError(
            "use letters, digits, '_', '.', '-' (at most 63), starting with a letter or digit; "
            "the name becomes a folder of the Triton repository"
        )
    return v


def _check_uri(v: str, what: str) -> str:
    if not v.strip():
        raise ValueError(f"empty; give the path or gs:// URI of {what}")
    return v


class OutputMetricConfig(_Section):
    """How one output is judged: its task and the metric the accuracy budget applies to."""

    task: Literal["classification", "embedding", "regression", "generic"] | None = Field(
        default=None, description="What the output is for; default: model.task (or the metric's task)."
    )
    metric: (
        Literal[
            "top1_accuracy", "top1_agreement", "cosine", "retrieval_agreement", "mae", "rmse", "max_abs_diff"
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "The figure the accuracy budget applies to: classification top1_accuracy (vs labels) or "
            "top1_agreement (with FP32); embedding cosine or retrieval_agreement; regression mae or rmse "
            "(vs targets, else vs FP32); generic cosine or max_abs_diff. Default: the task's first."
        ),
    )


class GenerationConfig(_Section):
    """The tokens of a generation model (``model.task: generation``): how generated ids become text."""

    bos_token_id: int = Field(ge=0, description="The token the prefill starts from.")
    eos_token_id: int = Field(ge=0, description="The token that ends a caption.")
    pad_token_id: int = Field(ge=0, description="Fills output_ids after a sequence's eos.")
    max_new_tokens: int = Field(ge=1, le=4096, description="Upper bound of the tokens generated per image.")
    vocabulary: list[str] = Field(
        min_length=1, description="Token id -> text (every id the decoder's logits can pick), for captions."
    )
    metric: Literal["exact_match"] = Field(
        default="exact_match",
        description="What the accuracy budget applies to: points of exact caption match (like top-1).",
    )
    label_captions: list[str] = Field(
        default_factory=list,
        description=(
            "Reference caption of each integer label of the eval data ('labels'); leave empty when the "
            "eval data gives reference token ids as labels/output_ids."
        ),
    )

    @model_validator(mode="after")
    def _tokens(self) -> GenerationConfig:
        n = len(self.vocabulary)
        bad = {
            k: v
            for k, v in (
                ("bos_token_id", self.bos_token_id),
                ("eos_token_id", self.eos_token_id),
                ("pad_token_id", self.pad_token_id),
            )
            if v >= n
        }
        if bad:
            raise ValueError(
                f"{', '.join(f'model.generation.{k}={v}' for k, v in bad.items())} outside the vocabulary "
                f"(ids 0..{n - 1}); list every token in model.generation.vocabulary"
            )
        return self


def _builtin_vlm_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``model.uri: builtin://digits-vlm``: the embedded captioning model's parts, task and tokens."""
    from vxdeploy.components.common import builtin_vlm as vlm  # lazily: it imports numpy

    out = dict(data)
    task = out.setdefault("task", "generation")
    if task != "generation":
        raise ValueError(
            f"model.task={task!r}: {BUILTIN_VLM_URI} is a generation model; set model.task: generation "
            "or remove it"
        )
    if not out.get("parts"):
        out["parts"] = [
            {"name": p, "uri": f"{BUILTIN_VLM_URI}/{p}", "role": p, "output_names": vlm.OUTPUT_NAMES[p]}
            for p in vlm.PARTS
        ]
    if not out.get("generation"):
        out["generation"] = vlm.generation_spec().to_dict()
        del out["generation"]["parts"]
    if out.get("name") in (None, "model"):  # unset, or the flat model_name parameter's default
        out["name"] = vlm.MODEL
    return out


class ModelConfig(_Section):
    """Where the trained model comes from and what it is called."""

    uri: str = Field(
        default="builtin://digits-cnn",
        description=(
            "The trained model: a torch.export .pt2, TorchScript .pt or .onnx file (local path or "
            "gs:// URI), a Vertex Model Registry version ('projects/P/locations/L/models/M@alias'), "
            "or 'builtin://digits-cnn' for the embedded default."
        ),
    )
    format: Literal["auto", "torch_export", "torchscript", "onnx"] = "auto"
    name: str = Field(default="model", description="Model name in Triton and in Vertex AI.")
    inputs: list[TensorOverride] | None = Field(
        default=None, description="Input signature; required for TorchScript, read from the file otherwise."
    )
    output_names: list[str] | None = None
    task: Literal["classification", "regression", "embedding", "generic", "other", "generation"] = Field(
        default="classification",
        description=(
            "What the model's outputs are for, the default of every output ('other' = 'generic'); "
            "an output without a class axis is compared as numbers. 'generation': parts with roles "
            "(vision_encoder, projector, decoder_prefill, decoder_step) that generate text greedily, "
            "with model.generation; 'builtin://digits-vlm' is one."
        ),
    )
    metrics: dict[str, OutputMetricConfig] = Field(
        default_factory=dict,
        description=(
            "Per output name: {task, metric}, e.g. {logits: {task: classification}, "
            "value: {task: regression, metric: rmse}}. Targets come from data.eval_uri's "
            "'labels/<output name>' (or 'labels')."
        ),
    )
    parts: list[ModelPartConfig] = Field(
        default_factory=list, description="Parts of a multi-part model, served behind one ensemble."
    )
    generation: GenerationConfig | None = Field(
        default=None, description="Tokens and vocabulary of a generation model (model.task: generation)."
    )

    @model_validator(mode="before")
    @classmethod
    def _builtin_vlm(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("uri") == BUILTIN_VLM_URI:
            return _builtin_vlm_defaults(data)
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, "the trained model (.pt2, TorchScript, .onnx), or builtin://digits-cnn")

    @model_validator(mode="after")
    def _parts(self) -> ModelConfig:
        names = [p.name for p in self.parts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"parts {dupes}: each part needs its own name (a folder of the repository)")
        if self.task == "generation":
            _check_generation(self)
        elif self.generation is not None:
            raise ValueError(
                f"model.generation is set but model.task is {self.task!r}; set model.task: generation "
                "or remove model.generation"
            )
        return self


def _check_generation(model: ModelConfig) -> None:
    """A generation model names a part per role and its tokens (the messages name the field and the fix)."""
    roles = ", ".join(GENERATION_ROLES)
    if model.generation is None:
        raise ValueError(
            "model.generation: missing; a generation model needs model.generation.{vocabulary, "
            "bos_token_id, eos_token_id, pad_token_id, max_new_tokens}"
        )
    if not model.parts:
        raise ValueError(f"model.parts: empty; a generation model has one part per role ({roles})")
    seen: dict[str, str] = {}
    for i, part in enumerate(model.parts):
        if part.role is None:
            raise ValueError(
                f"model.parts[{i}] {part.name!r} has no role; set model.parts[{i}].role to one of {roles}"
            )
        if part.role in seen:
            raise ValueError(
                f"model.parts[{i}].role={part.role!r} is also part {seen[part.role]!r}'s; give each role "
                "one part"
            )
        seen[part.role] = part.name
    missing = [r for r in GENERATION_ROLES if r not in seen and r != "projector"]
    if missing:
        raise ValueError(
            f"model.parts: no part with role {missing}; a generation model needs vision_encoder, "
            "decoder_prefill and decoder_step (projector optional)"
        )


class DataConfig(_Section):
    """Calibration and evaluation data: .npz files with one array per model input name."""

    calibration_uri: str = Field(
        default="builtin://digits-calibration",
        description=".npz with one array per input (first axis = samples) for INT8 calibration.",
    )
    eval_uri: str = Field(
        default="builtin://digits-eval",
        description=".npz with one array per input, plus optional 'labels', held out from calibration.",
    )
    labels_key: str = "labels"
    min_calibration_samples: int = Field(
        default=64, ge=1, description="Fewer calibration samples than this is an error (no random scales)."
    )
    warn_calibration_samples: int = Field(default=500, ge=1, description="Fewer than this logs a warning.")
    max_calibration_samples: int = Field(
        default=1024, ge=1, description="Calibration uses at most this many samples."
    )

    @field_validator("calibration_uri", "eval_uri")
    @classmethod
    def _uris(cls, v: str) -> str:
        return _check_uri(v, "an .npz file with one array per model input")

    @field_validator("labels_key")
    @classmethod
    def _labels_key(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty; name the .npz array that holds the labels (default 'labels')")
        return v

    @model_validator(mode="after")
    def _sample_limits(self) -> DataConfig:
        if self.max_calibration_samples < self.min_calibration_samples:
            raise ValueError(
                f"max_calibration_samples {self.max_calibration_samples} < min_calibration_samples "
                f"{self.min_calibration_samples}: calibration could never have enough samples"
            )
        return self


class ExportConfig(_Section):
    """ONNX export and its parity check against PyTorch."""

    opset: int = Field(default=19, ge=17, le=23, description="ONNX opset; ModelOpt INT8 needs >= 19.")
    constant_folding: bool = True
    atol: float = Field(default=1e-4, gt=0)
    rtol: float = Field(default=1e-3, gt=0)
    min_cosine: float = Field(default=0.9999, gt=0, le=1)
    parity_samples: int = Field(default=64, ge=1)


class QuantizationConfig(_Section):
    """Explicit Q/DQ INT8 post-training quantization and its accuracy gate."""

    enabled: bool = True
    backend: Literal["auto", "onnxruntime", "modelopt"] = Field(
        default="auto", description="'auto': ModelOpt where it is installed, else ONNX Runtime."
    )
    method: Literal["entropy", "max", "percentile"] = "entropy"
    percentile: float = Field(default=99.999, gt=90, le=100)
    num_bins: int = Field(default=2048, ge=128)
    per_channel: bool = True
    reduce_range: bool | Literal["auto"] = Field(
        default="auto",
        description=(
            "7-bit weights: avoids saturation on CPUs without VNNI. 'auto': on where this CPU lacks VNNI, "
            "off where it has it (full 8-bit weights, more accurate)."
        ),
    )
    activation_type: Literal["uint8", "int8"] = Field(
        default="uint8",
        description="'int8' (S8S8) saturates in ONNX Runtime's integer kernels on CPUs without VNNI.",
    )
    max_excluded_layers: int = Field(
        default=8, ge=0, description="Most layers the accuracy gate may keep in FP32 to meet the budget."
    )
    sensitivity_candidates: int = Field(
        default=24,
        ge=1,
        description=(
            "Groups of quantized layers (same operator, weight shape and input kind) the fallback keeps in "
            "float one group at a time to measure what each recovers; groups are taken in order of their "
            "worst layer's quantization error."
        ),
    )
    gate_samples: int = Field(default=2000, ge=1, description="Evaluation samples the accuracy gate uses.")
    calibration_batch_size: int = Field(default=32, ge=1)
    operators: Literal["auto", "all", "matmul"] = Field(
        default="auto",
        description=(
            "Which operators get Q/DQ. 'matmul': MatMul, Gemm and Conv only (softmax, layer norm and mask "
            "arithmetic stay float); 'all': every operator ONNX Runtime quantizes; 'auto': 'matmul' on "
            "graphs with attention (Softmax), 'all' otherwise (CNNs)."
        ),
    )
    dynamic: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "Also write a dynamically quantized model (INT8 weights, activations quantized at run time; "
            "MatMul/Gemm with constant weights and fused attention's packed Q/K/V, as QAttention), "
            "gated like the static one, for the "
            "onnxruntime_int8_dynamic candidate. 'auto': on graphs with attention."
        ),
    )
    quantize_decoder: bool = Field(
        default=False,
        description=(
            "Generation models: also try Q/DQ INT8 for the decoder parts (prefill and step together), gated "
            "end to end on the captions like the vision parts. Off by default: the decoder's per-token "
            "matrix products are small and its error compounds over the steps (builtin://digits-vlm: "
            "-20 points of exact caption match), so it costs calibration time for little."
        ),
    )
    fuse_before_dynamic: bool = Field(
        default=True,
        description=(
            "Fuse attention, LayerNorm and GELU into ONNX Runtime's contrib operators (onnxscript's "
            "ort_fusions for torch.export graphs, onnxruntime.transformers.optimizer for TorchScript "
            "ones) before dynamic quantization; kept only when the fused FP32 graph answers like the "
            "unfused one. The static Q/DQ model stays unfused so that TensorRT can build it."
        ),
    )

    @model_validator(mode="after")
    def _entropy_bins(self) -> QuantizationConfig:
        # The entropy (KL) search picks among num_bins / 2 - 64 thresholds: with 128 bins there is
        # only one, the full range, and entropy calibration silently becomes min/max.
        if self.method == "entropy" and self.num_bins < 256:
            raise ValueError(f"num_bins={self.num_bins} leaves entropy calibration no choice; use >= 256")
        return self


class BuildProfile(_Section):
    """Min / opt / max of a dynamic dimension, for TensorRT optimization profiles."""

    min: int = Field(default=1, ge=1)
    opt: int = Field(default=8, ge=1)
    max: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> BuildProfile:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"needs min <= opt <= max, got {self.min}, {self.opt}, {self.max}")
        return self


class CompilationConfig(_Section):
    """Which serving candidates to build and how."""

    candidates: list[CandidateKind] = Field(
        default_factory=lambda: [  # type: ignore[arg-type]
            "onnxruntime_fp32",
            "onnxruntime_int8",
            "onnxruntime_int8_dynamic",
            "aoti",
            "tensorrt_fp16",
            "tensorrt_int8",
        ]
    )
    batch_profile: BuildProfile = Field(default_factory=BuildProfile)
    dim_profiles: dict[str, BuildProfile] = Field(
        default_factory=dict,
        description=(
            "Min/opt/max of the other dynamic dims, by the name the signature gives them: "
            "'<input>.<axis>' (e.g. 'input_ids.1'). Default: the range observed in the calibration "
            "and evaluation data."
        ),
    )
    timing_cache_uri: str = Field(
        default="",
        description=(
            "Folder (local path or gs:// URI) where TensorRT timing caches persist and are reused by later "
            "runs, one file per TensorRT version and GPU ('' = beside the candidates artifact only)."
        ),
    )
    workspace_gib: float = Field(default=4.0, gt=0)
    tensorrt_optimization_level: int = Field(
        default=3,
        ge=0,
        le=5,
        description="TensorRT builder optimization level (higher: slower build, faster engine).",
    )
    fp16_converter: Literal["auto", "modelopt", "onnxconverter"] = Field(
        default="auto",
        description=(
            "How the FP32 ONNX becomes FP16 for TensorRT: ModelOpt AutoCast where importable ('auto'), "
            "else onnxconverter-common."
        ),
    )
    aoti_devices: list[Literal["cpu", "cuda"]] = Field(
        default_factory=lambda: ["cpu", "cuda"],  # type: ignore[arg-type]
        description="Devices to build AOT Inductor packages for; 'cuda' is skipped without a GPU.",
    )
    aoti_max_autotune: bool = False
    aoti_freezing: bool = Field(
        default=True, description="Fold weights into the CPU package (inductor 'freezing'): faster on CPU."
    )
    ort_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        default="all",
        description="ONNX Runtime graph optimization level recorded with the ONNX Runtime candidates.",
    )
    ort_save_optimized_model: bool = Field(
        default=False,
        description="Also store ONNX Runtime's optimized graph (tied to this ONNX Runtime version).",
    )


class SelectionConfig(_Section):
    """How candidates are measured and which one wins."""

    policy: Literal["max_throughput", "min_latency", "max_throughput_within_latency_budget"] = (
        "max_throughput"
    )
    accuracy_budget: float = Field(
        default=0.5,
        ge=0,
        le=100,
        description=(
            "Largest drop allowed vs FP32, in percentage points of task accuracy (or of top-1 agreement)."
        ),
    )
    min_cosine: float = Field(default=0.99, gt=0, le=1)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    latency_percentile: Literal["p50", "p90", "p99"] = Field(
        default="p90", description="Latency figure used by min_latency and by the latency budget."
    )
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32])
    warmup_iterations: int = Field(default=5, ge=0)
    min_iterations: int = Field(default=20, ge=3)
    min_seconds: float = Field(default=0.5, ge=0)
    max_eval_samples: int = Field(
        default=1000, ge=1, description="Evaluation samples used for the accuracy figures."
    )
    measure_reference: bool = Field(
        default=True, description="Also time the PyTorch eager FP32 reference, for speed-up ratios."
    )
    spread_warning_pct: float = Field(
        default=25.0,
        gt=0,
        description="Warn when the reference's latency spread (IQR / median) is over this, in percent.",
    )

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("give one or more batch sizes, each >= 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _budget(self) -> SelectionConfig:
        if self.policy == "max_throughput_within_latency_budget" and self.latency_budget_ms is None:
            raise ValueError(
                "policy max_throughput_within_latency_budget needs selection.latency_budget_ms (e.g. 50)"
            )
        return self


class DynamicBatchingConfig(_Section):
    enabled: bool = True
    preferred_batch_sizes: list[int] = Field(default_factory=lambda: [8, 32])
    max_queue_delay_microseconds: int = Field(default=2000, ge=0)


class TritonConfig(_Section):
    """Triton model repository options."""

    max_batch_size: int = Field(
        default=32,
        ge=0,
        le=MAX_TRITON_BATCH,
        description="Largest batch Triton forms; 0 turns Triton's batching off.",
    )
    dynamic_batching: DynamicBatchingConfig = Field(default_factory=DynamicBatchingConfig)
    instance_count: int = Field(default=1, ge=1)
    instance_kind: Literal["auto", "KIND_GPU", "KIND_CPU"] = Field(
        default="auto", description="'auto': KIND_GPU when the deployment has an accelerator, else KIND_CPU."
    )
    warmup: bool = Field(default=True, description="Warm each model up with generated sample data at load.")
    version_policy: Literal["latest", "all"] = "latest"
    response_cache: bool = False
    response_cache_mb: int = Field(
        default=256, ge=1, description="Size of Triton's local response cache when response_cache is on."
    )
    serving_image: str = Field(
        default="",
        description=(
            "Image Vertex AI serves the Triton repository from. '' = the project's serving image (NGC "
            "Triton with torch and the optimizer's TensorRT, built by `make images`) in the registry the "
            "pipeline was compiled for (`vxdeploy compile --registry`, $VXDEPLOY_REGISTRY). Checked to "
            "exist before any heavy work."
        ),
    )
    shared_memory_mb: int = Field(default=1024, ge=64)
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Generation models: vLLM engine arguments (model.json, e.g. {model: Qwen/Qwen2-VL-2B-Instruct}) "
            "of a real LLM for Triton's vLLM backend, written configured only beside the generator and "
            "checked for wiring, not loaded (no vLLM backend in the bundled or the serving image). {} = none."
        ),
    )
    serve_check: Literal["required", "best_effort", "off"] = Field(
        default="required",
        description=(
            "Serve the repository with a real Triton before deploying: 'required' (deployment only "
            "after a passed check; a check that cannot run stops it too), 'best_effort' (a failed or "
            "impossible check is reported and deployment goes ahead), 'off'. true/false mean "
            "required/off."
        ),
    )
    serve_check_sweep: list[int] = Field(
        default_factory=lambda: [1, 4, 16, 64],
        description="Concurrent clients of the serving sweep (dynamic batching off and on); [] skips it.",
    )
    serve_check_sweep_window_s: float = Field(
        default=2.0, gt=0, le=60, description="Measurement window of each sweep point, after a warm-up."
    )
    serve_check_requests: int = Field(default=64, ge=1, description="Requests the serve check sends.")
    serve_check_concurrency: int = Field(default=16, ge=1, description="Requests in flight at once.")
    serve_check_atol: float = Field(
        default=1e-3, gt=0, description="Largest abs difference to the PyTorch reference for FP32 candidates."
    )
    serve_check_min_cosine: float = Field(
        default=0.99, gt=0, le=1, description="Smallest cosine similarity to the reference, any precision."
    )
    serve_check_startup_timeout_s: float = Field(default=120, gt=0)

    @field_validator("serve_check", mode="before")
    @classmethod
    def _serve_check_switch(cls, v: object) -> object:
        return {True: "required", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("serve_check_sweep")
    @classmethod
    def _sweep(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError(f"{v}: each concurrency must be >= 1, e.g. [1, 4, 16, 64]")
        return v

    @field_validator("serving_image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v and not _IMAGE_RE.match(v):
            raise ValueError(
                "not an image reference; give REGISTRY/REPOSITORY/IMAGE:TAG, e.g. "
                "us-docker.pkg.dev/my-project/vxdeploy/serving:0.1.0 ('' for the project's serving image)"
            )
        return v

    @model_validator(mode="after")
    def _batching(self) -> TritonConfig:
        sizes = self.dynamic_batching.preferred_batch_sizes
        if any(b < 1 for b in sizes):
            raise ValueError(f"dynamic_batching.preferred_batch_sizes {sizes}: each size must be >= 1")
        too_big = [b for b in sizes if b > self.max_batch_size]
        # Default sizes above a smaller max_batch_size are dropped when packaging; sizes the
        # user chose are checked here so a typo is not silently ignored.
        chosen = "preferred_batch_sizes" in self.dynamic_batching.model_fields_set
        if self.max_batch_size > 0 and too_big and chosen:
            raise ValueError(
                f"dynamic_batching.preferred_batch_sizes {too_big} exceed max_batch_size "
                f"{self.max_batch_size}; give sizes in [1, {self.max_batch_size}]"
            )
        return self


class DeploymentConfig(_Section):
    """Vertex AI model upload and endpoint deployment."""

    enabled: bool = Field(default=False, description="Deploy to Vertex AI (needs project and location).")
    project: str = Field(default="", description="Google Cloud project id (6-30 of a-z, 0-9, '-').")
    location: str = Field(
        default="us-central1",
        description="Vertex AI region (components/common/vertex_resources.py lists those that serve).",
    )
    api_endpoint: str = Field(default="", description="Override the Vertex AI API endpoint (tests, VPC-SC).")
    staging_bucket: str = Field(
        default="",
        description=(
            "gs:// prefix where the Triton repository is uploaded; '' uses the artifact's own gs:// URI "
            "(what Vertex AI Pipelines gives)."
        ),
    )
    endpoint: str = Field(default="vxdeploy-endpoint", description="Endpoint display name or numeric id.")
    parent_model: str = Field(default="", description="Existing model resource to add a version to.")
    machine_type: str = "g2-standard-8"
    accelerator_type: str = Field(default="NVIDIA_L4", description="Serving GPU; '' for CPU serving.")
    accelerator_count: int = Field(default=1, ge=0)
    min_replicas: int = Field(
        default=1,
        ge=0,
        description="0 enables Vertex AI scale-to-zero (Preview, v1beta1 API): replicas stop when idle.",
    )
    max_replicas: int = Field(default=2, ge=1)
    gpu_duty_cycle_target: int = Field(default=60, ge=1, le=100)
    cpu_utilization_target: int = Field(default=60, ge=1, le=100)
    scale_to_zero_idle_s: int = Field(
        default=900, ge=300, le=28800, description="With min_replicas=0: idle time before scaling to zero."
    )
    spot: bool = False
    accept_spot_preemption: bool = False
    network: str = Field(
        default="",
        description="VPC network of a peered private endpoint: projects/PROJECT_NUMBER/global/networks/NAME",
    )
    private_service_connect_projects: list[str] = Field(
        default_factory=list, description="Projects allowed to reach a Private Service Connect endpoint."
    )
    service_account: str = ""
    smoke_test_route: Literal["auto", "invoke", "private", "none"] = Field(
        default="auto",
        description=(
            "How the smoke test reaches the new deployed model before it takes traffic: 'invoke' "
            "(dedicated endpoint, deployedModels/ID/invoke), 'private' (the peered private endpoint's "
            "per-model URL), 'none'; 'auto' picks 'private' with a network, 'none' with Private Service "
            "Connect, else 'invoke'."
        ),
    )
    serving_tensorrt_version: str = Field(
        default="",
        description="TensorRT version of the serving image, when the packaging stage does not record it.",
    )
    operation_timeout_s: float = Field(
        default=3600, gt=0, description="Longest wait for one long-running operation (upload, deploy)."
    )
    max_poll_interval_s: float = Field(
        default=15, gt=0, description="Longest pause between polls of an operation (polls back off to it)."
    )
    retry_timeout_s: float = Field(
        default=60,
        gt=0,
        description="How long one call is retried after a 500, 502, 503, 504, 429 or a dropped connection.",
    )

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if v and not PROJECT_ID_RE.match(v):
            raise ValueError(
                "not a Google Cloud project id: 6-30 lowercase letters, digits and hyphens, starting with "
                "a letter, not ending with a hyphen (e.g. my-project-123); see `gcloud projects list`"
            )
        return v

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        if v not in VERTEX_LOCATIONS:
            close = [loc for loc in VERTEX_LOCATIONS if loc.split("-")[0] == v.split("-")[0]]
            raise ValueError(
                "not a Vertex AI region; use one of "
                + ", ".join(close or VERTEX_LOCATIONS)
                + (" (or another Vertex AI region)" if close else "")
            )
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.strip() or not _ENDPOINT_RE.match(v):
            raise ValueError(
                "give the endpoint's display name (at most 128 characters, no '/'), its numeric id, or "
                "projects/P/locations/L/endpoints/ID (default 'vxdeploy-endpoint')"
            )
        return v

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, v: str) -> str:
        if v and not _SERVICE_ACCOUNT_RE.match(v):
            raise ValueError(
                "not a service account e-mail; give NAME@PROJECT.iam.gserviceaccount.com ('' for the default)"
            )
        return v

    @field_validator("api_endpoint")
    @classmethod
    def _api_endpoint(cls, v: str) -> str:
        host = v.split("://", 1)[-1]
        if v and (not host or any(c.isspace() for c in v)):
            raise ValueError(
                "give host[:port] or http(s)://host:port, e.g. us-central1-aiplatform.googleapis.com"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> DeploymentConfig:
        if self.enabled and not self.project:
            raise ValueError("deployment.enabled needs deployment.project")
        machine_problem = check_machine(self.machine_type, self.accelerator_type, self.accelerator_count)
        if machine_problem and self.accelerator_type in ("", *GPU_ACCELERATORS):
            raise ValueError(machine_problem)
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.accelerator_type and self.accelerator_type not in GPU_ACCELERATORS:
            raise ValueError(
                f"accelerator_type {self.accelerator_type!r} is not one of "
                f"{', '.join(GPU_ACCELERATORS)} (or '')"
            )
        if self.spot and not self.accept_spot_preemption:
            raise ValueError(
                "spot=true can lose every replica at once: set accept_spot_preemption=true to accept it"
            )
        if self.staging_bucket and not self.staging_bucket.startswith("gs://"):
            raise ValueError(f"staging_bucket {self.staging_bucket!r} must be a gs:// prefix")
        if self.network and self.private_service_connect_projects:
            raise ValueError(
                "network (VPC peering) and private_service_connect_projects (PSC) exclude each other: "
                "choose one"
            )
        if self.network and not _NETWORK_RE.match(self.network):
            raise ValueError(
                f"network {self.network!r} must read projects/PROJECT_NUMBER/global/networks/NAME"
            )
        if self.smoke_test_route == "private" and not self.network:
            raise ValueError("smoke_test_route='private' needs network (a peered private endpoint)")
        return self

    @property
    def resolved_smoke_test_route(self) -> Literal["invoke", "private", "none"]:
        """The smoke test route after resolving 'auto'."""
        if self.smoke_test_route != "auto":
            return self.smoke_test_route
        if self.network:
            return "private"
        if self.private_service_connect_projects:
            return "none"
        return "invoke"


class CanaryConfig(_Section):
    """Progressive traffic shift with metric analysis."""

    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100])
    interval_s: float = Field(
        default=300, ge=0, description="How long each step is held before its analysis."
    )
    analysis_window_s: float | None = Field(
        default=None,
        gt=0,
        description="Metrics window each analysis reads, ending now; None: since the step's traffic shift.",
    )
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(default=500, gt=0)
    max_error_rate_increase: float = Field(default=0.005, ge=0)
    max_latency_ratio: float = Field(default=1.5, gt=0)
    failure_limit: int = Field(
        default=1,
        ge=0,
        description="Failed analyses tolerated (the step is held and re-analysed); one more rolls back.",
    )
    min_requests: int = Field(
        default=1, ge=0, description="Fewer requests than this in a window is 'no data'."
    )
    smoke_requests: int = Field(default=4, ge=0)
    smoke_timeout_s: float = Field(default=60, gt=0, description="Timeout of one smoke-test request.")
    undeploy_grace_s: float = Field(
        default=300,
        ge=0,
        description=(
            "Seconds between promotion and undeploying the versions that served before (each one is a "
            "billed replica)."
        ),
    )
    keep_previous: bool = Field(
        default=False,
        description="Keep the version that served before deployed at 0% after promotion (fast rollback).",
    )
    lease_ttl_s: float = Field(
        default=7200,
        gt=0,
        description=(
            "Time-to-live of the endpoint's rollout lease; every renewal (exit handler and vxdeploy rollback "
            "included) renews by this much, so a dead run's lease expires within it."
        ),
    )
    monitoring_endpoint: str = Field(
        default="", description="Override the Cloud Monitoring API endpoint (host:port) the analysis reads."
    )
    # Generation models (model.task: generation): checks on what the canary generates.
    min_output_agreement: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description=(
            "Generation models: fraction of eval images on which the canary must generate the same caption "
            "as the model that serves (or, on a first deployment, the reference caption); below it fails."
        ),
    )
    agreement_samples: int = Field(
        default=16, ge=1, description="Generation models: eval images generated for in each agreement check."
    )
    max_ttft_ms: float = Field(
        default=500, gt=0, description="Generation models: limit of the canary's p95 time to first token, ms."
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or v[-1] != 100 or any(b <= a for a, b in zip(v, v[1:], strict=False)) or v[0] <= 0:
            raise ValueError("give increasing percentages in (0, 100], ending at 100, e.g. [10, 25, 50, 100]")
        return v

    @model_validator(mode="after")
    def _grace_within_lease(self) -> CanaryConfig:
        if self.undeploy_grace_s >= self.lease_ttl_s:
            raise ValueError(
                f"undeploy_grace_s={self.undeploy_grace_s:g} must be shorter than lease_ttl_s="
                f"{self.lease_ttl_s:g}: the rollout lease must outlive the wait before old versions are "
                "undeployed"
            )
        return self


class MonitoringConfig(_Section):
    """Cloud Monitoring alert policies, notification channel and dashboard for the endpoint."""

    enabled: bool = True
    p99_latency_ms: float = Field(
        default=500,
        gt=0,
        description="Alert when a deployed model's p99 prediction latency exceeds this (ms).",
    )
    error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Alert when a deployed model's errors / responses exceed this fraction.",
    )
    gpu_duty_cycle: float = Field(
        default=90,
        gt=0,
        le=100,
        description="Alert when a deployed model's mean GPU duty cycle exceeds this percent (GPU serving).",
    )
    cpu_utilization: float = Field(
        default=90,
        gt=0,
        le=400,
        description=(
            "Alert when a deployed model's mean CPU utilization exceeds this percentage (CPU serving; "
            "above 100 on machines with several cores)."
        ),
    )
    replica_saturation: bool = Field(
        default=True,
        description="Alert when a deployed model runs at deployment.max_replicas (no room left to scale).",
    )
    alignment_period_s: int = Field(
        default=300,
        ge=60,
        le=3600,
        description="Window each alert condition aligns its data over (seconds, a multiple of 60).",
    )
    alert_duration_s: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="How long a condition must hold before the alert fires (seconds, a multiple of 60).",
    )
    notification_channels: list[str] = Field(
        default_factory=list,
        description=(
            "Existing notification channels to alert: 'projects/P/notificationChannels/ID' or the bare ID."
        ),
    )
    notification_emails: list[str] = Field(
        default_factory=list,
        description="E-mail addresses to alert; an 'email' channel is created for each (or reused).",
    )
    ttft_ms: float = Field(
        default=500,
        gt=0,
        description="Generation models: alert when a deployed model's p95 time to first token exceeds this.",
    )
    min_tokens_per_s: float = Field(
        default=10,
        gt=0,
        description="Generation models: alert when a deployed model's median decode speed falls below this.",
    )
    dashboard: bool = True
    monitoring_endpoint: str = Field(
        default="",
        description=(
            "Override the Cloud Monitoring gRPC endpoint (host:port); a loopback one (127.0.0.1:PORT) "
            "is reached without TLS."
        ),
    )
    dashboards_endpoint: str = Field(
        default="",
        description=(
            "Override the Cloud Monitoring dashboards REST endpoint (http://127.0.0.1:PORT for a fake); "
            "required with a loopback monitoring_endpoint."
        ),
    )

    @field_validator("alignment_period_s", "alert_duration_s")
    @classmethod
    def _whole_minutes(cls, v: int) -> int:
        # Cloud Monitoring rejects alert windows that are not whole minutes.
        if v % 60:
            raise ValueError(f"{v} s is not a whole number of minutes; give a multiple of 60")
        return v

    @field_validator("notification_emails")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        bad = [e for e in v if not _EMAIL_RE.match(e)]
        if bad:
            raise ValueError(f"{bad} are not e-mail addresses; give addresses like oncall@example.com")
        return v

    @field_validator("notification_channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not _CHANNEL_RE.match(c)]
        if bad:
            raise ValueError(
                f"{bad} are not notification channels; give 'projects/P/notificationChannels/ID' or the ID"
            )
        return v


_PRICE_OVERRIDE_RE = re.compile(r"^(machine|accelerator):([A-Za-z0-9_-]+)(:spot)?$")
_MACHINE_TYPE_RE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9-]+$")


class ServiceLevelConfig(_Section):
    """Latency and cost targets the selected candidate must meet, and how its cost is estimated."""

    p50_latency_ms: float | None = Field(
        default=None, gt=0, description="Target median latency of one inference call, in ms (None: none)."
    )
    p95_latency_ms: float | None = Field(
        default=None, gt=0, description="Target 95th-percentile latency of one inference call, in ms."
    )
    requests_per_second: float = Field(
        default=50,
        gt=0,
        description="Target load on the whole deployment, in predictions per second; sets the replica count.",
    )
    replica_requests_per_second: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Load each replica must carry within the latency targets (e.g. 50 for 'p95 < 500 ms at "
            "50 requests/s per replica'); None: whatever the fastest batch size within the targets carries."
        ),
    )
    max_cost_per_hour: float | None = Field(
        default=None,
        gt=0,
        description="Cost ceiling of the whole deployment, USD per hour (spot when deployment.spot).",
    )
    # Generation models (model.task: generation): the targets are per generation, not per call.
    ttft_p95_ms: float | None = Field(
        default=200, gt=0, description="Generation models: target p95 time to first token in ms (None: none)."
    )
    generation_p50_ms: float | None = Field(
        default=200, gt=0, description="Generation models: target median time of a whole generation, in ms."
    )
    generation_p95_ms: float | None = Field(
        default=500, gt=0, description="Generation models: target p95 time of a whole generation, in ms."
    )
    cpu_machine_type: str = Field(
        default="",
        description=(
            "Vertex AI machine type whose price figures measured on a CPU are costed at; '' = "
            "deployment.machine_type when the deployment has no accelerator, else n1-standard-4."
        ),
    )
    price_overrides: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "USD per node-hour in deployment.location, replacing the shipped price snapshot: keys "
            "'machine:TYPE', 'machine:TYPE:spot', 'accelerator:NAME', 'accelerator:NAME:spot'. A machine "
            "price covers the GPU that machine type comes with (g2, a2, a3)."
        ),
    )

    @field_validator("cpu_machine_type")
    @classmethod
    def _cpu_machine(cls, v: str) -> str:
        if v and not _MACHINE_TYPE_RE.match(v):
            raise ValueError(f"{v!r} is not a machine type; give e.g. 'n1-standard-4' ('' for the default)")
        return v

    @field_validator("price_overrides")
    @classmethod
    def _overrides(cls, v: dict[str, float]) -> dict[str, float]:
        for key, price in v.items():
            cls.parse_price_override_key(key)
            if not price > 0:
                raise ValueError(f"price_overrides[{key!r}]={price}: give a price > 0 in USD per node-hour")
        return v

    @staticmethod
    def parse_price_override_key(key: str) -> tuple[Literal["machine", "accelerator"], str, bool]:
        """Split a price override key into (kind, machine or accelerator name, is_spot).

        Raises:
            ValueError: The key does not read 'machine:TYPE[:spot]' or 'accelerator:NAME[:spot]', or
                names an accelerator Vertex AI does not have.
        """
        match = _PRICE_OVERRIDE_RE.match(key)
        if match is None:
            raise ValueError(
                f"price_overrides key {key!r} is not one of 'machine:TYPE', 'machine:TYPE:spot', "
                "'accelerator:NAME', 'accelerator:NAME:spot' (e.g. 'machine:g2-standard-8', "
                "'accelerator:NVIDIA_TESLA_T4:spot')"
            )
        kind: Literal["machine", "accelerator"] = "machine" if match.group(1) == "machine" else "accelerator"
        name, spot = match.group(2), match.group(3) is not None
        if kind == "machine" and not _MACHINE_TYPE_RE.match(name):
            raise ValueError(f"price_overrides key {key!r}: {name!r} is not a machine type (n1-standard-4)")
        if kind == "accelerator" and name not in GPU_ACCELERATORS:
            raise ValueError(
                f"price_overrides key {key!r}: accelerator {name!r} is not one of "
                f"{', '.join(GPU_ACCELERATORS)}"
            )
        return kind, name, spot


_Sec = TypeVar("_Sec", bound=BaseModel)

SECTIONS: tuple[str, ...] = (
    "model",
    "data",
    "export",
    "quantization",
    "compilation",
    "selection",
    "triton",
    "deployment",
    "canary",
    "monitoring",
    "service_levels",
)


class RunConfig(_Section):
    """Everything one vxdeploy run needs. Every field has a default that runs offline."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    compilation: CompilationConfig = Field(default_factory=CompilationConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    triton: TritonConfig = Field(default_factory=TritonConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    service_levels: ServiceLevelConfig = Field(default_factory=ServiceLevelConfig)

    @model_validator(mode="after")
    def _across_sections(self) -> RunConfig:
        problems = cross_section_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_pipeline_parameters(self, *, build_on_accelerator: bool = True) -> dict[str, Any]:
        """The pipeline's root parameter values (:mod:`vxdeploy.components.common.run_parameters`).

        ``build_on_accelerator=False`` compiles and measures on the CPU the task lands on, as a
        local run does.
        """
        from vxdeploy.components.common.run_parameters import to_pipeline_parameters

        return to_pipeline_parameters(self, build_on_accelerator=build_on_accelerator)


_TENSORRT_KINDS = ("tensorrt_fp32", "tensorrt_fp16", "tensorrt_int8")


def cross_section_problems(cfg: RunConfig) -> list[str]:
    """What one section's values make impossible in another (each message names both fields)."""
    problems = []
    batches, triton_max = cfg.selection.batch_sizes, cfg.triton.max_batch_size
    if triton_max > 0 and max(batches) > triton_max:
        problems.append(
            f"selection.batch_sizes {[b for b in batches if b > triton_max]} exceed triton.max_batch_size "
            f"{triton_max}: Triton never forms such batches; lower them or raise triton.max_batch_size"
        )
    if any(k in _TENSORRT_KINDS for k in cfg.compilation.candidates):
        profile = cfg.compilation.batch_profile
        if max(batches) > profile.max:
            problems.append(
                f"selection.batch_sizes {[b for b in batches if b > profile.max]} exceed "
                f"compilation.batch_profile.max {profile.max}: a TensorRT engine cannot run them; raise "
                "batch_profile.max or lower the batch sizes"
            )
        if triton_max > profile.max:
            problems.append(
                f"triton.max_batch_size {triton_max} exceeds compilation.batch_profile.max {profile.max}: "
                "Triton would send batches the TensorRT engine refuses; set them equal"
            )
    mon = cfg.monitoring
    loopback = mon.monitoring_endpoint.startswith(("127.0.0.1", "localhost"))
    if mon.enabled and mon.dashboard and loopback and not mon.dashboards_endpoint:
        problems.append(
            f"monitoring.monitoring_endpoint {mon.monitoring_endpoint!r} is a loopback fake: set "
            "monitoring.dashboards_endpoint (http://127.0.0.1:PORT) too, or dashboard: false"
        )
    return problems


def _format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling against docs/configuration.md"
        elif err["type"] == "finite_number":
            msg = "give a finite number (not inf or nan)"
        elif err["type"] == "literal_error":
            msg = f"allowed values: {err.get('ctx', {}).get('expected', '')}"
        elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
            msg = "give a mapping of this section's fields (see docs/configuration.md)"
        # A model-level check gets the whole section as its input: name the section, not its dump.
        lines.append(f"{field}: {msg}" if isinstance(value, dict) else f"{field}={value!r}: {msg}")
    return "; ".join(lines)


def parse_section(cls: type[_Sec], data: Mapping[str, Any] | None, section: str) -> _Sec:
    """Validate one section (as a component receives it), naming the field on error."""
    try:
        return cls.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(section, None, _format_validation_error(exc, f"{section}.")) from None


def parse_config(data: Mapping[str, Any] | None) -> RunConfig:
    """Validate a whole configuration mapping."""
    try:
        return RunConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        message = _format_validation_error(exc)
        err = ConfigError("config", None, message)
        err.args = (message,)
        raise err from None


def parse_set_override(item: str) -> tuple[str, Any]:
    """One ``--set section.field=value``: the dotted key and the value read as YAML.

    Raises:
        ConfigError: no ``=``, an empty part in the key, or a value that is not valid YAML.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError("--set", item, "use section.field=value, e.g. --set selection.policy=min_latency")
    if not key or any(not part.strip() for part in key.split(".")):
        raise ConfigError(
            "--set",
            item,
            "name the field as section.field (no empty parts), e.g. --set selection.policy=min_latency",
        )
    try:
        return key, yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            "--set",
            item,
            f"the value {text!r} is not valid YAML ({problem}); quote it in the shell and close every "
            "bracket, e.g. --set 'canary.steps=[10, 50, 100]'",
        ) from None


def _read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError("--config", str(path), "is a directory; pass the path of a YAML run config file")
    if not p.is_file():
        raise ConfigError("--config", str(path), "no such file; pass the path of a YAML run config")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "--config",
            str(path),
            f"is not a text file (byte {exc.object[exc.start]:#04x} at offset {exc.start} is not UTF-8); "
            "pass a YAML run config (see docs/configuration.md)",
        ) from None
    except OSError as exc:
        raise ConfigError("--config", str(path), f"cannot be read ({exc.strerror or exc})") from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--config", str(path), f"not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError("--config", str(path), "the top level must be a mapping of sections")
    return loaded


def _check_override_path(dotted: str, value: Any) -> None:
    """An override must not reach below a plain field (``model.uri.sub``): that field holds a value."""
    model: type[BaseModel] = RunConfig
    parts = dotted.split(".")
    for depth, key in enumerate(parts[:-1]):
        info = model.model_fields.get(key)
        if info is None:
            return  # an unknown name: validation names it
        annotation = info.annotation
        options = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, UnionType) else ()
        sections = [a for a in (annotation, *options) if isinstance(a, type) and issubclass(a, BaseModel)]
        if sections:
            model = sections[0]
            continue
        if any(typing.get_origin(a) is dict or a is dict or a is Any for a in (annotation, *options)):
            return  # a free-form mapping: any key may be set
        field = ".".join(parts[: depth + 1])
        raise ConfigError(
            "--set",
            f"{dotted}={value}",
            f"{field} is a value, not a section, so it has no field {parts[depth + 1]!r}; "
            f"set it with --set {field}=VALUE",
        )


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults), then apply dotted ``overrides`` like ``{'model.uri': ...}``."""
    data: dict[str, Any] = _read_config_file(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        _check_override_path(dotted, value)
        node = data
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                field = ".".join(parents[: depth + 1])
                raise ConfigError(
                    "--set",
                    f"{dotted}={value}",
                    f"{field} is {child!r} in the config, not a section; set it with --set {field}=VALUE",
                )
            node = child
        node[leaf] = value
    return parse_config(data)
