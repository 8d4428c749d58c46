"""Vertex AI accelerator names and the GPUs behind them, for matching engines to serving hardware.

A TensorRT engine runs only on the GPU model it was built on. The build task reports the GPU
by its CUDA device name (``torch.cuda.get_device_name``), the deployment names it by Vertex
accelerator type (``NVIDIA_L4``); both are reduced to one GPU family here so they compare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vxdeploy.components.common.errors import ConfigError, InternalError


@dataclass(frozen=True)
class GpuType:
    """One GPU model as Vertex AI offers it."""

    accelerator: str
    family: str
    device_name: str
    compute_capability: str


# Device names as CUDA reports them on the Vertex machine types that carry each accelerator.
VERTEX_GPUS: dict[str, GpuType] = {
    g.accelerator: g
    for g in (
        GpuType("NVIDIA_TESLA_T4", "T4", "Tesla T4", "7.5"),
        GpuType("NVIDIA_L4", "L4", "NVIDIA L4", "8.9"),
        GpuType("NVIDIA_TESLA_V100", "V100", "Tesla V100-SXM2-16GB", "7.0"),
        GpuType("NVIDIA_TESLA_A100", "A100-40GB", "NVIDIA A100-SXM4-40GB", "8.0"),
        GpuType("NVIDIA_A100_80GB", "A100-80GB", "NVIDIA A100-SXM4-80GB", "8.0"),
        GpuType("NVIDIA_H100_80GB", "H100-80GB", "NVIDIA H100 80GB HBM3", "9.0"),
        GpuType("NVIDIA_H100_MEGA_80GB", "H100-80GB", "NVIDIA H100 80GB HBM3", "9.0"),
        GpuType("NVIDIA_H200_141GB", "H200", "NVIDIA H200", "9.0"),
    )
}


def gpu_family(device_name: str) -> str:
    """Reduce a CUDA device name (or a Vertex accelerator name) to its GPU family.

    ``"NVIDIA A100-SXM4-80GB"`` and ``"NVIDIA_A100_80GB"`` both give ``"A100-80GB"``; names this
    table does not know come back normalized (upper case, single spaces) so equal names still match.
    """
    if device_name in VERTEX_GPUS:
        return VERTEX_GPUS[device_name].family
    name = re.sub(r"[\s_]+", " ", device_name.upper()).strip()
    tokens = set(re.split(r"[\s\-]+", name))
    if "H200" in tokens:
        return "H200"
    if "H100" in tokens:
        # Vertex offers the 80 GB SXM part only; a PCIe or NVL H100 is a different device.
        return "H100-80GB" if "HBM3" in tokens or "SXM" in name else name
    if "A100" in tokens:
        return "A100-80GB" if "80GB" in tokens else "A100-40GB"
    for family in ("V100", "T4", "L4", "P4", "P100", "A10G", "L40S"):
        if family in tokens:
            return family
    return name


def resolve_gpu(serving_gpu: str) -> GpuType | None:
    """The known GPU for a Vertex accelerator name or a CUDA device name, or None if unknown.

    Raises:
        ConfigError: when ``serving_gpu`` is empty (CPU serving cannot run a TensorRT engine).
    """
    if not serving_gpu:
        raise ConfigError(
            "deployment.accelerator_type",
            serving_gpu,
            "a TensorRT engine needs a GPU to serve on; set an accelerator such as NVIDIA_L4 "
            "or select a CPU candidate (ONNX Runtime, AOT Inductor)",
        )
    if serving_gpu in VERTEX_GPUS:
        return VERTEX_GPUS[serving_gpu]
    family = gpu_family(serving_gpu)
    for gpu in VERTEX_GPUS.values():
        if gpu.family == family:
            return gpu
    return None


def check_build_hardware(
    accelerator_type: str, accelerator_count: int, device_names: list[str] | None = None
) -> str:
    """Check that the build task landed on the GPU it was asked for; return what it runs on.

    Engines built on one GPU only serve on that GPU, so a task scheduled on the wrong accelerator
    (or none) must stop rather than build candidates for the wrong target.

    Args:
        accelerator_type: The Vertex accelerator the task asked for (``""`` builds on CPU).
        accelerator_count: GPUs asked for: at least 1 with an accelerator, 0 without.
        device_names: CUDA device names visible to the task (default: read through torch).

    Raises:
        ConfigError: the type and count disagree.
        InternalError: the task sees no GPU, or a different one, than it asked for.
    """
    if bool(accelerator_type) != (accelerator_count > 0):
        raise ConfigError(
            "build_accelerator_count",
            accelerator_count,
            f"use 1 or more with build_accelerator_type={accelerator_type!r}, 0 without one",
        )
    if not accelerator_type:
        return "cpu"
    if device_names is None:
        import torch

        device_names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if not device_names:
        raise InternalError(
            f"the build task asked for {accelerator_type} but sees no GPU; check the pipeline's "
            "accelerator settings and the optimizer image's CUDA runtime"
        )
    want = gpu_family(accelerator_type)
    if gpu_family(device_names[0]) != want:
        raise InternalError(
            f"the build task asked for {accelerator_type} but runs on {device_names[0]!r}; "
            "engines built there would not serve on the endpoint's GPU"
        )
    return device_names[0]
