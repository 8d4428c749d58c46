"""TensorRT engines from ONNX, written against the TensorRT 11 Python API.

TensorRT 11 networks are always strongly typed: there are no precision builder flags and no
calibrators. An FP32 engine comes from the FP32 ONNX, an FP16 engine from the ONNX converted to
FP16 first (:mod:`vxdeploy.components.compile.fp16`), an INT8 engine from the explicit Q/DQ ONNX.

``tensorrt`` is imported only when an engine is built or run; without it (or without a GPU) the
candidate is skipped with :class:`CandidateUnavailable`. Everything that can be decided without a
GPU (build options and optimization profiles, engine metadata, timing-cache locations and the
compatibility check the deploy step calls) is a plain function of this module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vxdeploy.components.common.config import CompilationConfig
from vxdeploy.components.common.errors import CandidateUnavailable, ConfigError, InternalError, UserError
from vxdeploy.components.common.signature import BATCH_DIM, ModelSignature, resolve_dim_profiles
from vxdeploy.components.compile.gpus import gpu_family, resolve_gpu

ENGINE_FILE = "model.plan"
ENGINE_METADATA_FILE = "engine.json"
TIMING_CACHE_DIR = "timing_cache"

Shape = tuple[int, ...]


class EngineCompatibilityError(UserError):
    """A TensorRT engine was built for a different GPU or TensorRT version than it would serve on."""


@dataclass(frozen=True)
class ShapeRange:
    """Min / opt / max shapes of one input in an optimization profile."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class TensorRTBuildOptions:
    """Everything the builder is told, decided from the config and the model's signature."""

    precision: str
    profile: dict[str, ShapeRange]
    workspace_bytes: int
    optimization_level: int
    max_batch: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "profile": {name: r.to_dict() for name, r in self.profile.items()},
            "workspace_bytes": self.workspace_bytes,
            "optimization_level": self.optimization_level,
            "max_batch": self.max_batch,
            "strongly_typed": True,
        }


def optimization_profile(cfg: CompilationConfig, signature: ModelSignature) -> dict[str, ShapeRange]:
    """Min/opt/max shapes of every input, from ``batch_profile`` and ``dim_profiles``.

    Static dims are fixed; the batch dim takes ``compilation.batch_profile``; every other dynamic
    dim takes ``compilation.dim_profiles[<input>.<axis>]``, by default the range the data showed
    at intake (:func:`~vxdeploy.components.common.signature.resolve_dim_profiles`).

    Raises:
        ConfigError: when a dynamic dim has no profile, or ``dim_profiles`` names a dim the
            model does not have.
    """
    dim_profiles = resolve_dim_profiles(signature, cfg.dim_profiles)
    profile: dict[str, ShapeRange] = {}
    for spec in signature.inputs:
        ranges: list[tuple[int, int, int]] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                ranges.append((dim, dim, dim))
                continue
            p = cfg.batch_profile if dim == BATCH_DIM and axis == 0 else dim_profiles[dim]
            ranges.append((p.min, p.opt, p.max))
        profile[spec.name] = ShapeRange(
            tuple(r[0] for r in ranges), tuple(r[1] for r in ranges), tuple(r[2] for r in ranges)
        )
    return profile


def build_options(cfg: CompilationConfig, signature: ModelSignature, precision: str) -> TensorRTBuildOptions:
    """The builder options of one engine: profile, workspace, optimization level and precision."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision {precision!r} is not one of fp32, fp16, int8")
    batched = any(spec.shape and spec.shape[0] == BATCH_DIM for spec in signature.inputs)
    return TensorRTBuildOptions(
        precision=precision,
        profile=optimization_profile(cfg, signature),
        workspace_bytes=int(cfg.workspace_gib * (1 << 30)),
        optimization_level=cfg.tensorrt_optimization_level,
        max_batch=cfg.batch_profile.max if batched else None,
    )


@dataclass
class EngineMetadata:
    """What an engine was built with and for: recorded on the artifact, checked before serving."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    gpu_family: str = ""
    build_options: dict[str, Any] = field(default_factory=dict)
    timing_cache: dict[str, Any] = field(default_factory=dict)
    build_time_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.gpu_family:
            self.gpu_family = gpu_family(self.gpu_name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineMetadata:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def engine_metadata(
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int] | str,
    options: TensorRTBuildOptions,
    *,
    timing_cache: Mapping[str, Any] | None = None,
    build_time_s: float = 0.0,
) -> EngineMetadata:
    """The metadata of an engine built with ``options`` on ``gpu_name`` by TensorRT ``tensorrt_version``."""
    cc = (
        compute_capability
        if isinstance(compute_capability, str)
        else f"{compute_capability[0]}.{compute_capability[1]}"
    )
    return EngineMetadata(
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=options.precision,
        build_options=options.to_dict(),
        timing_cache=dict(timing_cache or {}),
        build_time_s=round(build_time_s, 3),
    )


def _version_triple(version: str, what: str) -> tuple[int, int, int]:
    parts = re.findall(r"\d+", version)
    if len(parts) < 3:
        raise ConfigError(
            what,
            version,
            "give the full TensorRT version, major.minor.patch (e.g. 10.4.0), as the image reports it",
        )
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_engine_compatibility(
    engine_metadata: EngineMetadata | Mapping[str, Any], serving_gpu: str, serving_tensorrt_version: str
) -> None:
    """Refuse to serve an engine on a GPU type or TensorRT version other than the one it was built with.

    TensorRT engines hold kernels chosen and compiled for one GPU model by one TensorRT release;
    they fail to deserialize, or run wrongly, anywhere else.

    Args:
        engine_metadata: The engine's metadata (``EngineMetadata`` or its dict from the artifact).
        serving_gpu: The serving accelerator: a Vertex name (``NVIDIA_L4``) or a CUDA device name.
        serving_tensorrt_version: The TensorRT version of the serving image (``10.4.0``).

    Raises:
        EngineCompatibilityError: naming both GPUs or both versions and how to fix it.
        ConfigError: when ``serving_gpu`` is empty or a version is not major.minor.patch.
    """
    meta = (
        engine_metadata
        if isinstance(engine_metadata, EngineMetadata)
        else EngineMetadata.from_dict(engine_metadata)
    )
    known = resolve_gpu(serving_gpu)
    serving_family = known.family if known else gpu_family(serving_gpu)
    if serving_family != meta.gpu_family or (
        known is not None and known.compute_capability != meta.compute_capability
    ):
        serving_desc = (
            f"{serving_gpu} ({known.device_name}, compute capability {known.compute_capability})"
            if known
            else serving_gpu
        )
        raise EngineCompatibilityError(
            f"the TensorRT engine was built on {meta.gpu_name} "
            f"(compute capability {meta.compute_capability}) and cannot serve on {serving_desc}: "
            "an engine runs only on the GPU model it was built on. "
            "Run the compile step on the serving accelerator (deployment.accelerator_type sets it), "
            "or select a CPU candidate"
        )
    built = _version_triple(meta.tensorrt_version, "engine tensorrt_version")
    serving = _version_triple(serving_tensorrt_version, "serving_tensorrt_version")
    if built != serving:
        raise EngineCompatibilityError(
            f"the TensorRT engine was built with TensorRT {meta.tensorrt_version} but the serving image has "
            f"TensorRT {serving_tensorrt_version}: engines load only in the TensorRT release that built "
            "them. "
            "Build in an optimizer image with the serving image's TensorRT, or pick the serving image "
            f"(triton.serving_image) whose TensorRT is {'.'.join(map(str, built))}"
        )


# --- timing cache -------------------------------------------------------------------------------


def timing_cache_location(cfg: CompilationConfig, candidates_dir: str | Path) -> Path:
    """The folder where timing caches are read and written.

    ``compilation.timing_cache_uri`` when set (a ``gs://`` URI maps to Vertex AI's ``/gcs/`` mount,
    so later runs reuse it); otherwise a ``timing_cache`` folder beside the candidates.
    """
    uri = cfg.timing_cache_uri.strip()
    if not uri:
        return Path(candidates_dir) / TIMING_CACHE_DIR
    if uri.startswith("gs://"):
        return Path("/gcs") / uri.removeprefix("gs://").rstrip("/")
    if "://" in uri:
        raise ConfigError(
            "compilation.timing_cache_uri", uri, "use a local folder or a gs://bucket/prefix URI"
        )
    return Path(uri).expanduser()


def timing_cache_file(
    location: str | Path, tensorrt_version: str, gpu_name: str, compute_capability: str
) -> Path:
    """One cache file per TensorRT version and GPU: a cache from other hardware would mislead the builder."""
    family = re.sub(r"[^A-Za-z0-9.-]+", "_", gpu_family(gpu_name))
    return Path(location) / f"trt-{tensorrt_version}-{family}-sm{compute_capability.replace('.', '')}.cache"


def load_timing_cache(path: str | Path) -> bytes:
    """The cached bytes, or ``b""`` when there is no cache yet (the builder then starts an empty one)."""
    p = Path(path)
    return p.read_bytes() if p.is_file() else b""


def save_timing_cache(path: str | Path, data: bytes) -> None:
    """Write the cache atomically, so a concurrent build never reads half a cache."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(p)


# --- building and running (need tensorrt and a GPU) --------------------------------------------


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`CandidateUnavailable` saying why it cannot be used here."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise CandidateUnavailable(
            f"TensorRT is not installed here ({exc}); TensorRT engines are built in the optimizer image "
            "on the serving GPU"
        ) from exc
    return trt


def cuda_device() -> tuple[str, tuple[int, int]]:
    """The current CUDA device's name and compute capability, or :class:`CandidateUnavailable`."""
    import torch

    if not torch.cuda.is_available():
        raise CandidateUnavailable(
            "no CUDA GPU on this machine; TensorRT engines are built on the serving GPU"
        )
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), (int(major), int(minor))


def check_qdq_for_tensorrt(onnx_path: str | Path) -> None:
    """Refuse Q/DQ graphs TensorRT cannot build: it takes symmetric INT8 (zero point 0) only.

    ONNX Runtime's U8S8 quantization (uint8 activations with zero points) serves well on CPU
    but is not a TensorRT INT8 graph.

    Raises:
        CandidateUnavailable: naming the first offending QuantizeLinear and the fix.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        if len(node.input) < 3 or not node.input[2]:
            continue  # no zero point: int8, zero
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        arr = numpy_helper.to_array(zp)
        if arr.dtype != np.int8 or np.any(arr != 0):
            raise CandidateUnavailable(
                f"the Q/DQ model quantizes {node.input[0]!r} to {arr.dtype} with zero point "
                f"{arr.ravel()[:4].tolist()}; TensorRT needs symmetric int8 Q/DQ (zero point 0). "
                "Set quantization.backend=modelopt (or activation_type=int8) for a TensorRT INT8 engine"
            )


def build_tensorrt_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    options: TensorRTBuildOptions,
    timing_cache_path: str | Path | None = None,
) -> EngineMetadata:
    """Build and serialize a strongly typed engine from an ONNX model.

    Args:
        onnx_path: The FP32, FP16 or Q/DQ ONNX model; its types decide the engine's precision.
        engine_path: Where the serialized engine (``.plan``) goes.
        options: From :func:`build_options`.
        timing_cache_path: A timing cache to reuse and update (None: no cache).

    Returns:
        The engine's metadata (TensorRT version, GPU, compute capability, options, cache use).

    Raises:
        CandidateUnavailable: without TensorRT or a GPU, or when TensorRT rejects the model.
    """
    trt = import_tensorrt()
    gpu_name, capability = cuda_device()
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    # TensorRT 10 needs the flag for strong typing; in 11 it is deprecated, ignored and may go away.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CandidateUnavailable(f"TensorRT's ONNX parser rejected {Path(onnx_path).name}: {errors}")
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if network_inputs != set(options.profile):
        raise InternalError(
            f"the ONNX graph's inputs {sorted(network_inputs)} differ from the signature's "
            f"{sorted(options.profile)}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.optimization_level
    profile = builder.create_optimization_profile()
    for name, shapes in options.profile.items():
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)

    cache_info: dict[str, Any] = {}
    if timing_cache_path is not None:
        cached = load_timing_cache(timing_cache_path)
        cache = config.create_timing_cache(cached)
        # ignore_mismatch=False: a cache from another device is refused rather than trusted.
        config.set_timing_cache(cache, False)
        cache_info = {"file": str(timing_cache_path), "reused": bool(cached), "bytes_before": len(cached)}

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CandidateUnavailable(
            f"TensorRT could not build an engine from {Path(onnx_path).name} (see the builder log above)"
        )
    out = Path(engine_path)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)
    if timing_cache_path is not None:
        updated = bytes(config.get_timing_cache().serialize())
        try:
            save_timing_cache(timing_cache_path, updated)
            cache_info["bytes_after"] = len(updated)
        except OSError as exc:
            # The engine is good without it; the next build only loses the head start.
            cache_info["save_error"] = f"{type(exc).__name__}: {exc}"
    return engine_metadata(
        trt.__version__,
        gpu_name,
        capability,
        options,
        timing_cache=cache_info,
        build_time_s=time.perf_counter() - start,
    )
