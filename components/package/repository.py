"""Write a Triton model repository for one serving candidate.

Layout: ``<root>/model_repository/<model>/config.pbtxt`` and ``<model>/<version>/<file>``
(``model.onnx`` for ONNX Runtime, ``model.plan`` for TensorRT, ``model.pt2`` plus a
Python-backend ``model.py`` for AOT Inductor, which Triton has no native backend for), a
``warmup/`` folder of generated samples, and ``<root>/manifest.json`` with every file's sha256.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from vxdeploy.components.common.config import DeploymentConfig, TritonConfig
from vxdeploy.components.common.errors import ConfigError, ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.package.manifest import manifest_digest, write_manifest
from vxdeploy.components.package.model_config import (
    build_model_config,
    warmable,
    write_model_config,
    write_warmup_data,
)

MODEL_REPOSITORY_DIR = "model_repository"
PYTHON_MODEL_FILE = "model.py"


@dataclass(frozen=True)
class Layout:
    """How one model format sits in a Triton repository."""

    platform: str
    backend: str
    file_name: str
    runtime: str = ""
    """For Python-backend models run by vxdeploy's model.py: which runtime it uses."""


LAYOUTS: dict[str, Layout] = {
    "onnx": Layout(platform="onnxruntime_onnx", backend="", file_name="model.onnx"),
    "plan": Layout(platform="tensorrt_plan", backend="", file_name="model.plan"),
    "aoti": Layout(platform="", backend="python", file_name="model.pt2", runtime="aoti"),
}
KIND_FORMATS: dict[str, str] = {
    "onnxruntime_fp32": "onnx",
    "onnxruntime_int8": "onnx",
    "onnxruntime_int8_dynamic": "onnx",
    "tensorrt_fp32": "plan",
    "tensorrt_fp16": "plan",
    "tensorrt_int8": "plan",
    "aoti": "aoti",
}


def model_format(kind: str) -> str:
    """``onnx``, ``plan`` or ``aoti`` for a candidate kind.

    Raises:
        ModelIntakeError: for a kind vxdeploy cannot package, listing the ones it can.
    """
    try:
        return KIND_FORMATS[kind]
    except KeyError:
        raise ModelIntakeError(
            f"selected_model kind={kind!r} cannot be packaged for Triton; "
            f"known kinds: {', '.join(KIND_FORMATS)}"
        ) from None


@dataclass(frozen=True)
class TritonRepository:
    """A packaged repository: ``root/model_repository`` plus ``root/manifest.json``."""

    root: Path
    models: tuple[str, ...]
    default_model: str
    kinds: dict[str, str]
    configs: dict[str, mc.ModelConfig] = field(compare=False, repr=False)
    manifest: dict[str, Any] = field(compare=False, repr=False)
    manifest_sha256: str = ""

    @property
    def model_repository(self) -> Path:
        return self.root / MODEL_REPOSITORY_DIR

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"].values())

    @property
    def needs_project_image(self) -> bool:
        """True when a model needs torch or a TensorRT matching the optimizer's (AOTI, engines)."""
        return any(k in ("aoti",) or k.startswith("tensorrt") for k in self.kinds.values())


def resolve_instance_kind(triton: TritonConfig, deployment: DeploymentConfig) -> str:
    """``KIND_GPU`` or ``KIND_CPU``; ``auto`` follows whether the deployment has an accelerator."""
    if triton.instance_kind != "auto":
        return triton.instance_kind
    has_gpu = bool(deployment.accelerator_type) and deployment.accelerator_count > 0
    return "KIND_GPU" if has_gpu else "KIND_CPU"


def check_engine_batch(engine: Mapping[str, Any], triton: TritonConfig) -> None:
    """Refuse a ``max_batch_size`` larger than a TensorRT engine's optimization profile allows.

    Triton would fail to load the engine on the serving GPU; this says so while packaging.

    Raises:
        ConfigError: naming ``triton.max_batch_size`` and the engine's largest batch.
    """
    largest = (engine.get("build_options") or {}).get("max_batch")
    if largest is None or triton.max_batch_size <= int(largest):
        return
    raise ConfigError(
        "triton.max_batch_size",
        triton.max_batch_size,
        f"the TensorRT engine's optimization profile takes batches up to {int(largest)}; set "
        f"triton.max_batch_size <= {int(largest)} or raise compilation.batch_profile.max",
    )


def python_model_source() -> str:
    """The text of the Python-backend ``model.py`` vxdeploy ships (AOTI, and ONNX in the serve check)."""
    return (resources.files("vxdeploy.components.package.triton_models") / "python_model.py").read_text()


def write_python_model(version_dir: Path) -> Path:
    target = version_dir / PYTHON_MODEL_FILE
    target.write_text(python_model_source())
    return target


def onnx_external_files(path: Path) -> list[str]:
    """Files an ONNX model keeps its weights in (external data), relative to its folder."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(locations)


def write_model(
    model_repository: Path,
    name: str,
    kind: str,
    model_file: Path,
    signature: ModelSignature,
    triton: TritonConfig,
    *,
    instance_kind: str,
    version: int = 1,
    device: str = "",
) -> mc.ModelConfig:
    """Write one candidate's model folder (config, version folder, warm-up data) and return its config.

    ``device`` (``cpu``/``cuda``) is the device an AOTI package was compiled for, if known.
    """
    layout = LAYOUTS[model_format(kind)]
    model_dir = model_repository / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, version_dir / layout.file_name)
    if layout.platform == "onnxruntime_onnx":
        for extra in onnx_external_files(model_file):
            shutil.copyfile(model_file.parent / extra, version_dir / extra)
    parameters: dict[str, str] = {}
    if layout.runtime:
        write_python_model(version_dir)
        parameters = {"runtime": layout.runtime, "model_file": layout.file_name}
        if device:
            parameters["device"] = device
    warmup = None
    if triton.warmup and warmable(signature):
        warmup = write_warmup_data(model_dir, signature, batched=triton.max_batch_size > 0)
    config = build_model_config(
        name,
        signature,
        triton,
        platform=layout.platform,
        backend=layout.backend,
        instance_kind=instance_kind,
        parameters=parameters,
        warmup_files=warmup,
    )
    write_model_config(config, model_dir)
    return config


def staging_dir(out_dir: Path) -> Path:
    """A fresh sibling of ``out_dir`` to build in before the rename that publishes it."""
    staging = out_dir.with_name(out_dir.name + ".part")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, out_dir: Path) -> None:
    """Move a finished repository into place, so ``out_dir`` is either absent or complete."""
    if out_dir.exists():
        if any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} exists and is not empty; package into a new directory")
        out_dir.rmdir()
    staging.replace(out_dir)


def finish(
    staging: Path,
    out_dir: Path,
    *,
    configs: Mapping[str, mc.ModelConfig],
    kinds: Mapping[str, str],
    default_model: str,
) -> TritonRepository:
    """Write the manifest, publish the repository and describe it."""
    manifest = write_manifest(staging)
    digest = manifest_digest(staging)
    publish(staging, out_dir)
    return TritonRepository(
        root=out_dir,
        models=tuple(sorted(configs)),
        default_model=default_model,
        kinds=dict(kinds),
        configs=dict(configs),
        manifest=manifest,
        manifest_sha256=digest,
    )


def package_triton_repository(
    model_file: str | Path,
    kind: str,
    signature: ModelSignature,
    *,
    model_name: str,
    triton: TritonConfig,
    instance_kind: str,
    out_dir: str | Path,
    version: int = 1,
    device: str = "",
) -> TritonRepository:
    """Package one serving candidate as a Triton model repository with a sha256 manifest.

    Args:
        model_file: The candidate's file (``.onnx``, TensorRT engine, or AOTI ``.pt2``).
        kind: The candidate kind (``onnxruntime_fp32``, ``tensorrt_fp16``, ``aoti``, ...).
        signature: The model's signature; the config's I/O come from it alone.
        model_name: The Triton model name.
        triton: The Triton section.
        instance_kind: ``KIND_GPU`` or ``KIND_CPU`` (see :func:`resolve_instance_kind`).
        out_dir: Where the repository goes; absent or empty. Written elsewhere, then renamed.
        version: The model version folder.
        device: ``cpu`` or ``cuda``: the device an AOTI package was compiled for ('' = unknown).

    Returns:
        The repository, its configs and manifest.
    """
    out = Path(out_dir)
    staging = staging_dir(out)
    try:
        config = write_model(
            staging / MODEL_REPOSITORY_DIR,
            model_name,
            kind,
            Path(model_file),
            signature,
            triton,
            instance_kind=instance_kind,
            version=version,
            device=device,
        )
        return finish(
            staging, out, configs={model_name: config}, kinds={model_name: kind}, default_model=model_name
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
