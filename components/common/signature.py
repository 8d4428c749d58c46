"""Tensor signatures: the names, dtypes and shapes of a model's inputs and outputs.

The signature is read once from the model (a ``torch.export`` program or an ONNX graph)
and travels with the artifacts, so Triton configs, data checks and benchmarks never
rely on a second, hand-written list of tensors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.common.errors import ModelIntakeError

Dim = int | str
"""A dimension: an int when static, a symbol name (e.g. ``"batch"``) when dynamic."""

BATCH_DIM = "batch"

_ONNX_TO_NUMPY = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "bfloat16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index to symbol name for every dynamic dimension."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @property
    def batched(self) -> bool:
        """True when the first dimension is the dynamic batch dimension."""
        return bool(self.shape) and self.shape[0] == BATCH_DIM

    def concrete_shape(self, batch: int, dims: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The shape with the batch set to ``batch`` and other symbols from ``dims`` (default 1...)."""
        dims = dims or {}
        out: list[int] = []
        for d in self.shape:
            if isinstance(d, int):
                out.append(d)
            elif d == BATCH_DIM:
                out.append(batch)
            else:
                out.append(int(dims.get(d, 8)))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        shape = tuple(int(x) if isinstance(x, (int, float)) else str(x) for x in d["shape"])
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=shape)


@dataclass(frozen=True)
class ModelSignature:
    """The inputs and outputs of a model, in call order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def batched(self) -> bool:
        """True when every input and output has the dynamic batch dimension first."""
        return all(t.batched for t in (*self.inputs, *self.outputs))

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSignature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSignature:
        return cls.from_dict(json.loads(text))

    def sample_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right names, dtypes and shapes (for warm-up, not accuracy)."""
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for t in self.inputs:
            shape = t.concrete_shape(batch)
            dt = np.dtype(t.dtype)
            if dt.kind == "f":
                feeds[t.name] = rng.standard_normal(shape).astype(dt)
            elif dt.kind == "b":
                feeds[t.name] = np.ones(shape, dtype=dt)
            else:
                feeds[t.name] = rng.integers(0, 2, size=shape).astype(dt)
        return feeds


def signature_from_onnx(path: str | Path) -> ModelSignature:
    """Read the signature of an ONNX model without loading its weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelIntakeError(
            f"model {str(path)!r} is not a readable ONNX file ({exc}); "
            "pass a .onnx file written by onnx.save or torch.onnx.export"
        ) from exc
    init_names = {i.name for i in model.graph.initializer}

    def spec(vi: Any) -> TensorSpec:
        tt = vi.type.tensor_type
        dims: list[Dim] = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(BATCH_DIM)
            else:
                dims.append(d.dim_param or f"dim{i}")
        dtype = _ONNX_TO_NUMPY.get(tt.elem_type)
        if dtype is None:
            raise ModelIntakeError(
                f"tensor {vi.name!r} has ONNX element type {tt.elem_type}, which vxdeploy does not "
                f"serve; supported: {sorted(set(_ONNX_TO_NUMPY.values()))}"
            )
        return TensorSpec(vi.name, dtype, tuple(dims))

    inputs = tuple(spec(i) for i in model.graph.input if i.name not in init_names)
    outputs = tuple(spec(o) for o in model.graph.output)
    return ModelSignature(inputs=inputs, outputs=outputs)


def signature_from_exported_program(ep: Any, output_names: Sequence[str] | None = None) -> ModelSignature:
    """Read the signature of a ``torch.export.ExportedProgram``.

    Dynamic dimensions become symbols; a dynamic first dimension is named ``batch``.
    Outputs are named ``output`` (one) or ``output_<i>`` unless ``output_names`` is given.
    """
    import torch

    user_inputs = list(ep.graph_signature.user_inputs)
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}

    def dims_of(val: Any) -> tuple[Dim, ...]:
        dims: list[Dim] = []
        for i, s in enumerate(val.shape):
            if isinstance(s, int):
                dims.append(int(s))
            elif i == 0:
                dims.append(BATCH_DIM)
            else:
                dims.append(str(s))
        return tuple(dims)

    def np_dtype(t: torch.dtype) -> str:
        return str(t).removeprefix("torch.")

    inputs = []
    for name in user_inputs:
        val = nodes[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ModelIntakeError(
                f"exported program input {name!r} is not a tensor; vxdeploy serves tensor inputs only"
            )
        inputs.append(TensorSpec(name, np_dtype(val.dtype), dims_of(val)))

    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    vals = [a.meta.get("val") for a in out_node.args[0]]
    n_user = len(ep.graph_signature.user_outputs)
    vals = vals[len(vals) - n_user :]
    if output_names is None:
        output_names = ["output"] if len(vals) == 1 else [f"output_{i}" for i in range(len(vals))]
    if len(output_names) != len(vals):
        raise ModelIntakeError(
            f"output_names has {len(output_names)} names but the program returns {len(vals)} tensors"
        )
    outputs = tuple(
        TensorSpec(n, np_dtype(v.dtype), dims_of(v)) for n, v in zip(output_names, vals, strict=True)
    )
    return ModelSignature(inputs=tuple(inputs), outputs=outputs)
