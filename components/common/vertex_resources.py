"""Vertex AI resource names and serving hardware: the one list of locations, machine families and GPUs.

Used by the config validators so a project id, a location or a machine type / GPU pair that Vertex AI
would refuse is refused when the config is read, not at deploy time after the heavy stages ran.
Sources: Vertex AI "Locations" and "Configure compute resources for inference" pages (2026-11);
refresh the tables here when Google adds regions or machine series.
"""

from __future__ import annotations

import re

VERTEX_LOCATIONS: tuple[str, ...] = (
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-southwest1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "europe-west12",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
)
"""Regions where Vertex AI serves online predictions."""

# Project ids: 6-30 chars, lowercase letters, digits and hyphens, starting with a letter and not
# ending with a hyphen; a domain-scoped project carries 'example.com:' in front.
PROJECT_ID_RE = re.compile(r"^(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
MACHINE_TYPE_RE = re.compile(r"^(?P<family>[a-z][a-z0-9]*)-(?P<shape>[a-z]+)-(?P<size>[0-9]+g?)$")

CPU_FAMILIES: tuple[str, ...] = ("n1", "n2", "n2d", "e2", "c2", "c2d", "c3", "n4", "m1")
"""Machine series Vertex AI serves on without a built-in GPU (n1 takes T4 / V100 attached)."""

# GPU series: machine-type prefix -> the GPU it comes with. The count is fixed by the machine type.
_GPU_MACHINES: dict[str, str] = {
    "g2-standard": "NVIDIA_L4",
    "a2-highgpu": "NVIDIA_TESLA_A100",
    "a2-megagpu": "NVIDIA_TESLA_A100",
    "a2-ultragpu": "NVIDIA_A100_80GB",
    "a3-highgpu": "NVIDIA_H100_80GB",
    "a3-megagpu": "NVIDIA_H100_MEGA_80GB",
    "a3-ultragpu": "NVIDIA_H200_141GB",
}
_G2_COUNTS = {"4": 1, "8": 1, "12": 1, "16": 1, "32": 1, "24": 2, "48": 4, "96": 8}
_GPU_SIZES = {
    "a2-highgpu": ("1g", "2g", "4g", "8g"),
    "a2-megagpu": ("16g",),
    "a2-ultragpu": ("1g", "2g", "4g", "8g"),
    "a3-highgpu": ("1g", "2g", "4g", "8g"),
    "a3-megagpu": ("8g",),
    "a3-ultragpu": ("8g",),
}
N1_ACCELERATOR_COUNTS: dict[str, tuple[int, ...]] = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
}
"""GPUs that attach to N1 machines, with the counts Vertex AI allows."""


def gpu_of_machine(machine_type: str) -> tuple[str, int] | None:
    """The GPU and count a machine type comes with (``g2-standard-8`` -> ``('NVIDIA_L4', 1)``), or None."""
    m = MACHINE_TYPE_RE.match(machine_type)
    if m is None:
        return None
    series, size = f"{m['family']}-{m['shape']}", m["size"]
    if series == "g2-standard":
        return ("NVIDIA_L4", _G2_COUNTS[size]) if size in _G2_COUNTS else None
    if series in _GPU_SIZES:
        return (_GPU_MACHINES[series], int(size[:-1])) if size in _GPU_SIZES[series] else None
    return None


def machines_for(accelerator: str) -> str:
    """Where an accelerator can go, for error messages (``'a3-highgpu-1g/2g/4g/8g'``)."""
    if accelerator in N1_ACCELERATOR_COUNTS:
        counts = ", ".join(map(str, N1_ACCELERATOR_COUNTS[accelerator]))
        return f"an n1-* machine type (e.g. n1-standard-8) with accelerator_count {counts}"
    series = [s for s, gpu in _GPU_MACHINES.items() if gpu == accelerator]
    names = []
    for s in series:
        sizes = list(_G2_COUNTS) if s == "g2-standard" else list(_GPU_SIZES[s])
        names.append(f"{s}-{'/'.join(sizes)}")
    return " or ".join(names)


def check_machine(machine_type: str, accelerator_type: str, accelerator_count: int) -> str | None:
    """Why Vertex AI would refuse this machine type / GPU pair, or None when it fits.

    Returns:
        A message naming the fields, the values and a combination that works.
    """
    m = MACHINE_TYPE_RE.match(machine_type)
    if m is None:
        return (
            f"machine_type {machine_type!r} is not a machine type; give SERIES-SHAPE-SIZE, "
            "e.g. n1-standard-4, g2-standard-8, a3-highgpu-1g"
        )
    family, series = m["family"], f"{m['family']}-{m['shape']}"
    if accelerator_count and not accelerator_type:
        return f"accelerator_count {accelerator_count} without an accelerator_type: set both, or count 0"
    if accelerator_type and accelerator_count < 1:
        return (
            f"accelerator_type {accelerator_type!r} with accelerator_count {accelerator_count}: "
            "give a count >= 1, or accelerator_type '' to serve on CPU"
        )
    built_in = gpu_of_machine(machine_type)
    if series in _GPU_MACHINES:
        if built_in is None:
            return (
                f"machine_type {machine_type!r} does not exist; the {series} series has "
                f"{machines_for(_GPU_MACHINES[series])}"
            )
        gpu, count = built_in
        if accelerator_type != gpu or accelerator_count != count:
            return (
                f"machine_type {machine_type!r} comes with {count} x {gpu}: set accelerator_type {gpu!r} "
                f"and accelerator_count {count}"
                + (
                    f" (for {accelerator_type} use {machines_for(accelerator_type)})"
                    if accelerator_type and accelerator_type != gpu
                    else ""
                )
            )
        return None
    if family not in CPU_FAMILIES:
        return (
            f"machine_type {machine_type!r}: Vertex AI does not serve on the {family!r} series; use one of "
            f"{', '.join(CPU_FAMILIES)} (CPU) or g2, a2, a3 (GPU)"
        )
    if not accelerator_type:
        return None
    if family != "n1" or accelerator_type not in N1_ACCELERATOR_COUNTS:
        return (
            f"accelerator_type {accelerator_type!r} does not fit machine_type {machine_type!r}: "
            f"use {machines_for(accelerator_type)}"
        )
    allowed = N1_ACCELERATOR_COUNTS[accelerator_type]
    if accelerator_count not in allowed:
        return (
            f"accelerator_count {accelerator_count} of {accelerator_type} on {machine_type}: "
            f"Vertex AI allows {', '.join(map(str, allowed))}"
        )
    return None
