"""Serving candidates: the record of each one and the manifest of a candidates directory.

A candidates directory holds one folder per candidate (named after it) and a ``manifest.json``
listing every candidate asked for, built or not, with the reason when not. Selection reads
only the manifest and the files it names.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from vxdeploy.components.common.errors import InternalError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.common.stage import write_json

MANIFEST = "manifest.json"
CandidateStatus = Literal["built", "skipped", "failed"]


@dataclass
class Candidate:
    """One serving candidate, built or not.

    Attributes:
        name: Unique folder name (``aoti_cpu``; equal to ``kind`` for single-device kinds).
        kind: The configured kind (``onnxruntime_fp32``, ``tensorrt_int8``, ``aoti``...).
        status: ``built``; ``skipped`` when it cannot be built here (``reason`` says why);
            ``failed`` when building was attempted and broke.
        reason: Why it was skipped or failed; empty when built.
        file: The model file, relative to the candidates directory (``tensorrt_fp16/model.plan``).
        precision: ``fp32``, ``fp16`` or ``int8``.
        runtime: ``onnxruntime``, ``tensorrt`` or ``aoti``.
        device: ``cpu`` or ``cuda``.
        versions: Versions of the libraries the file was built with and needs to run.
        gpu_name: The CUDA device it was built on (empty for CPU builds).
        compute_capability: That device's compute capability (``8.9``).
        build_time_s: Wall time of the build.
        sha256: Checksum of ``file``.
        options: How to run it (ONNX Runtime session options, TensorRT build options...).
        engine: TensorRT engine metadata (see ``EngineMetadata``); empty for other runtimes.
    """

    name: str
    kind: str
    status: CandidateStatus
    reason: str = ""
    file: str = ""
    precision: str = ""
    runtime: str = ""
    device: str = "cpu"
    versions: dict[str, str] = field(default_factory=dict)
    gpu_name: str = ""
    compute_capability: str = ""
    build_time_s: float = 0.0
    sha256: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def built(self) -> bool:
        return self.status == "built"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class CandidateManifest:
    """What ``manifest.json`` holds: the candidates and the model they were built from."""

    candidates: list[Candidate]
    signature: dict[str, Any]
    host: dict[str, str] = field(default_factory=dict)

    @property
    def built(self) -> list[Candidate]:
        return [c for c in self.candidates if c.built]

    def model_signature(self) -> ModelSignature:
        return ModelSignature.from_dict(self.signature)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "signature": self.signature,
            "host": self.host,
        }


def write_manifest(directory: str | Path, manifest: CandidateManifest) -> Path:
    """Write ``manifest.json`` atomically into ``directory``."""
    path = Path(directory) / MANIFEST
    write_json(path, manifest.to_dict())
    return path


def read_manifest(directory: str | Path) -> CandidateManifest:
    """Read a candidates directory's manifest.

    Raises:
        InternalError: when the directory has no readable manifest (not written by compilation).
    """
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InternalError(
            f"{str(path)!r} is not a readable candidates manifest ({exc}); "
            "it is written by the compile_candidates step"
        ) from exc
    return CandidateManifest(
        candidates=[Candidate.from_dict(c) for c in data["candidates"]],
        signature=data["signature"],
        host=data.get("host", {}),
    )


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def host_info() -> dict[str, str]:
    """The build host, recorded so a figure or file can be traced to the machine it came from."""
    return {"machine": platform.machine(), "python": platform.python_version(), "node": platform.node()}


def copy_folder_atomically(src: str | Path, dest: str | Path) -> None:
    """Copy a folder's files into ``dest`` one by one, each written aside and renamed.

    File renames are what every artifact store behind a KFP path supports (Vertex AI's
    Cloud Storage FUSE mount renames files, not directories), so a reader never sees half a file.
    """
    src, dest = Path(src), Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(target)


@contextmanager
def candidate_folder(directory: str | Path, name: str) -> Iterator[Path]:
    """A local scratch folder to build one candidate in, copied to ``directory/name`` only on success.

    A build that raises leaves nothing in the candidates directory, so it never holds half a candidate.
    """
    with tempfile.TemporaryDirectory(prefix=f"vx-{name}-") as tmp:
        yield Path(tmp)
        copy_folder_atomically(tmp, Path(directory) / name)
