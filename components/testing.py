"""Build valid input artifacts for a component test: ``component.python_func(...)`` on hand-made inputs.

Each builder writes real files (a model, an .npz) into a folder and returns a ``kfp.dsl`` artifact whose
metadata follows its contract in :mod:`vxdeploy.components.common.artifacts`, exactly as the stage upstream
would have written it; :func:`output` makes an empty output artifact. See docs/testing-components.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from kfp import dsl

from vxdeploy.components.common.artifacts import DatasetSamples, SourceModel
from vxdeploy.components.common.config import RunConfig

_A = TypeVar("_A", bound=dsl.Artifact)


def output(cls: type[_A], folder: str | Path, name: str) -> _A:
    """An empty output artifact at ``folder/name`` (a component writes its file or folder there)."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    artifact: _A = cls(name=name, uri=str(path), metadata={})
    return artifact


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_model(
    folder: str | Path,
    model: Any,
    example_inputs: Mapping[str, np.ndarray],
    *,
    name: str = "model",
    dynamic_batch: bool = True,
) -> dsl.Model:
    """A ``source_model`` artifact holding ``model`` (a ``torch.nn.Module``) as a torch.export ``.pt2``.

    Args:
        folder: Where the artifact's folder is made.
        model: The PyTorch module; it is exported with ``torch.export`` on ``example_inputs``.
        example_inputs: One array per input, in call order (first axis = batch).
        name: ``model.name`` (the Triton / Vertex AI model name).
        dynamic_batch: Export the first axis as a dynamic batch dimension.
    """
    import torch

    from vxdeploy.components.common.signature import signature_from_exported_program

    root = Path(folder) / "source_model"
    root.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example_inputs.values())
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        shapes = tuple({0: batch} for _ in args)
    exported = torch.export.export(model.eval(), args, dynamic_shapes=shapes)
    file = root / "model.pt2"
    torch.export.save(exported, str(file))
    signature = signature_from_exported_program(exported, None)
    artifact = dsl.Model(name="source_model", uri=str(root), metadata={})
    SourceModel(
        format="torch_export",
        file=file.name,
        signature=signature.to_dict(),
        sha256=_sha256(file),
        uri=str(file),
        name=name,
    ).write(artifact)
    return artifact


def dataset(
    folder: str | Path,
    inputs: Mapping[str, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    name: str = "eval_data",
) -> dsl.Dataset:
    """A ``calibration_data`` / ``eval_data`` artifact: an .npz with one array per input (and labels)."""
    path = Path(folder) / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    if labels is not None:
        arrays[RunConfig().data.labels_key] = np.asarray(labels)
    with path.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    samples = len(next(iter(arrays.values())))
    artifact = dsl.Dataset(name=name, uri=str(path), metadata={})
    DatasetSamples(samples=samples, labelled=labels is not None).write(artifact)
    return artifact
