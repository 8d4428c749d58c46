"""What the cost model and the service-level checks read: one candidate's figures at one batch size."""

from __future__ import annotations

import math
import os
import platform
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vxdeploy.components.common.config import GPU_ACCELERATORS
from vxdeploy.components.common.errors import InternalError

CPU_PREFIX = "cpu:"

# CUDA device names (torch.cuda.get_device_name) by the Vertex AI accelerator they are; the
# first pattern found in the lower-cased device name wins, so the specific ones come first.
_CUDA_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    ("h200", "NVIDIA_H200_141GB"),
    ("h100", "NVIDIA_H100_80GB"),
    ("a100-sxm4-80gb", "NVIDIA_A100_80GB"),
    ("a100 80gb", "NVIDIA_A100_80GB"),
    ("a100", "NVIDIA_TESLA_A100"),
    ("l4", "NVIDIA_L4"),
    ("t4", "NVIDIA_TESLA_T4"),
    ("v100", "NVIDIA_TESLA_V100"),
)


@dataclass(frozen=True)
class MeasuredCandidate:
    """One serving candidate measured at one batch size, on one device.

    The selection stage gives one of these per candidate per measured batch size; the points
    that share a ``name`` are that candidate's figures. Latencies are of one inference call of
    ``batch_size`` samples, measured back to back after warm-up (no queueing under load).

    Attributes:
        name: Candidate name, unique per candidate (e.g. ``"onnxruntime_int8"``).
        kind: Candidate kind (a ``CandidateKind``, e.g. ``"tensorrt_fp16"``).
        measured_on: Where the figures were measured: ``"cpu:<machine description>"`` (see
            :func:`local_cpu_description`) or a Vertex AI accelerator name such as ``"NVIDIA_L4"``.
        batch_size: Samples per inference call.
        p50_ms: Median latency of one call, in milliseconds.
        p95_ms: 95th-percentile latency of one call.
        p99_ms: 99th-percentile latency of one call.
        throughput_rps: Predictions (samples) per second one replica serves at this batch size.
    """

    name: str
    kind: str
    measured_on: str
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float

    def __post_init__(self) -> None:
        figures = {"p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms}
        bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v >= 0)}
        if not self.name or not self.measured_on:
            raise InternalError(f"measured candidate needs a name and measured_on, got {self!r}")
        if self.batch_size < 1:
            raise InternalError(f"{self.name}: batch_size {self.batch_size} must be >= 1")
        if bad:
            raise InternalError(
                f"{self.name} batch {self.batch_size}: latencies must be finite and >= 0, got {bad}"
            )
        if not (is_cpu(self.measured_on) or self.measured_on in GPU_ACCELERATORS):
            raise InternalError(
                f"{self.name}: measured_on {self.measured_on!r} is neither 'cpu:<description>' nor one of "
                f"{', '.join(GPU_ACCELERATORS)} (see vertex_accelerator_name)"
            )
        if not (math.isfinite(self.throughput_rps) and self.throughput_rps > 0):
            raise InternalError(
                f"{self.name} batch {self.batch_size}: throughput_rps must be > 0, got {self.throughput_rps}"
            )

    @property
    def on_cpu(self) -> bool:
        """Whether the figures were measured on a CPU rather than a GPU."""
        return is_cpu(self.measured_on)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_cpu(measured_on: str) -> bool:
    """Whether a ``measured_on`` value names a CPU (``"cpu"`` or ``"cpu:<description>"``)."""
    return measured_on == CPU_PREFIX.rstrip(":") or measured_on.startswith(CPU_PREFIX)


def vertex_accelerator_name(cuda_device_name: str, deployment_accelerator: str = "") -> str | None:
    """The Vertex AI accelerator name of a CUDA device, for ``MeasuredCandidate.measured_on``.

    Args:
        cuda_device_name: What ``torch.cuda.get_device_name()`` returns, e.g. ``"NVIDIA L4"``,
            ``"Tesla T4"``, ``"NVIDIA A100-SXM4-80GB"``, ``"NVIDIA H100 80GB HBM3"``.
        deployment_accelerator: ``deployment.accelerator_type``; returned instead when it is the
            same GPU under another Vertex AI name (an H100 measured for an ``NVIDIA_H100_MEGA_80GB``
            deployment: the device name does not tell the two apart).

    Returns:
        A name from ``GPU_ACCELERATORS``, or None for a GPU Vertex AI does not serve on.
    """
    lowered = cuda_device_name.lower()
    # Whole tokens only: "NVIDIA L40S" is not an L4.
    name = next(
        (
            vertex
            for pattern, vertex in _CUDA_NAME_PATTERNS
            if re.search(rf"\b{re.escape(pattern)}\b", lowered)
        ),
        None,
    )
    if name == "NVIDIA_H100_80GB" and deployment_accelerator == "NVIDIA_H100_MEGA_80GB":
        return deployment_accelerator
    return name


def group_by_candidate(points: Iterable[MeasuredCandidate]) -> dict[str, list[MeasuredCandidate]]:
    """Each candidate's points by name, in first-seen order, each list sorted by batch size.

    Raises:
        InternalError: Two points of one candidate share a batch size, or disagree on its kind or
            on the device it was measured on (a candidate measured on two devices is two candidates).
    """
    grouped: dict[str, list[MeasuredCandidate]] = {}
    for point in points:
        same = grouped.setdefault(point.name, [])
        if same and (same[0].kind, same[0].measured_on) != (point.kind, point.measured_on):
            raise InternalError(
                f"candidate {point.name!r} has points of kind/device {same[0].kind}/{same[0].measured_on} "
                f"and {point.kind}/{point.measured_on}: give each device its own candidate name"
            )
        if any(p.batch_size == point.batch_size for p in same):
            raise InternalError(f"candidate {point.name!r} has two points at batch size {point.batch_size}")
        same.append(point)
    return {name: sorted(same, key=lambda p: p.batch_size) for name, same in grouped.items()}


def local_cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """A ``measured_on`` value for figures measured on this machine's CPU.

    Args:
        cpuinfo: Where the CPU model name is read on Linux.

    Returns:
        ``"cpu:<model name> (<n> cores)"``, e.g. ``"cpu:AMD EPYC 7B13 (2 cores)"``.
    """
    model = ""
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    model = model or platform.processor() or platform.machine() or "unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return f"{CPU_PREFIX}{model} ({cores} cores)"


def candidate_names(points: Sequence[MeasuredCandidate]) -> list[str]:
    """The distinct candidate names, in first-seen order."""
    return list(dict.fromkeys(p.name for p in points))
