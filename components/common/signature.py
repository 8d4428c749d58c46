"""Tensor signatures: the names, dtypes and shapes of a model's inputs and outputs.

The signature is read once from the model (a ``torch.export`` program or an ONNX graph)
and travels with the artifacts, so Triton configs, data checks and benchmarks never
rely on a second, hand-written list of tensors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from vxdeploy.components.common.errors import ConfigError, ModelIntakeError

if TYPE_CHECKING:
    from vxdeploy.components.common.config import BuildProfile

Dim = int | str
"""A dimension: an int when static, a symbol name (e.g. ``"batch"``) when dynamic."""

BATCH_DIM = "batch"

T = TypeVar("T")

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
    task: str = ""
    """Outputs only: what the output is for (``classification``, ``embedding``, ``regression``,
    ``generic``), set at intake from ``model.task`` / ``model.metrics``; '' when not set."""
    metric: str = ""
    """Outputs only: the metric the accuracy budget is on (:mod:`vxdeploy.components.verify.accuracy`)."""

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
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.task:
            d["task"] = self.task
        if self.metric:
            d["metric"] = self.metric
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        shape = tuple(int(x) if isinstance(x, (int, float)) else str(x) for x in d["shape"])
        return cls(
            name=str(d["name"]),
            dtype=str(d["dtype"]),
            shape=shape,
            task=str(d.get("task", "")),
            metric=str(d.get("metric", "")),
        )


@dataclass(frozen=True)
class ModelSignature:
    """The inputs and outputs of a model, in call order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    keyword_inputs: tuple[str, ...] = ()
    """Inputs the model takes by keyword (``model(input_ids=...)``); the others are positional, in order."""
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Smallest and largest size the calibration and evaluation data give each dynamic dim (not the
    batch), recorded at intake: the default of ``compilation.dim_profiles``."""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fixed_batch(self) -> int | None:
        """The batch a model without a dynamic batch dim is called with (None: its batch is dynamic).

        The inputs' one static leading dim (a program exported from one example without
        ``dynamic_shapes`` has 1); 1 when they disagree or have none.
        """
        if all(spec.batched for spec in self.inputs):
            return None
        first = {spec.shape[0] for spec in self.inputs if spec.shape}
        static = [d for d in first if isinstance(d, int)]
        return static[0] if len(static) == 1 and len(first) == 1 else 1

    def call_arguments(self, values: Mapping[str, T]) -> tuple[list[T], dict[str, T]]:
        """``values`` (by input name) split into the positional and keyword arguments of a model call.

        A program exported with ``kwargs={...}`` is called ``model(**kwargs)``, one exported with
        ``args=(...)`` positionally: the way its in_spec says, never one way for all.
        """
        keyword = set(self.keyword_inputs)
        args = [values[n] for n in self.input_names if n not in keyword]
        kwargs = {n: values[n] for n in self.input_names if n in keyword}
        return args, kwargs

    def carrying_call_and_tasks_of(self, source: ModelSignature) -> ModelSignature:
        """The signature with ``source``'s calling convention and output tasks.

        A signature read back from a file (ONNX) cannot hold them: they travel from the source model's.
        """
        by_name = {t.name: t for t in source.outputs}
        outputs = tuple(
            TensorSpec(t.name, t.dtype, t.shape, by_name[t.name].task, by_name[t.name].metric)
            if t.name in by_name
            else t
            for t in self.outputs
        )
        return ModelSignature(
            self.inputs, outputs, source.keyword_inputs, dict(source.dim_ranges), self.metadata
        )

    def with_dim_ranges(self, ranges: Mapping[str, tuple[int, int]]) -> ModelSignature:
        """The signature with the observed range of each dynamic dim recorded."""
        return ModelSignature(self.inputs, self.outputs, self.keyword_inputs, dict(ranges), self.metadata)

    def dynamic_dims(self) -> dict[str, list[tuple[str, int]]]:
        """Every dynamic dim other than the batch: its name and the (input, axis) places it sizes."""
        out: dict[str, list[tuple[str, int]]] = {}
        for t in self.inputs:
            for axis, name in t.dynamic_axes.items():
                if name != BATCH_DIM:
                    out.setdefault(name, []).append((t.name, axis))
        return out

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
        d: dict[str, Any] = {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }
        if self.keyword_inputs:
            d["keyword_inputs"] = list(self.keyword_inputs)
        if self.dim_ranges:
            d["dim_ranges"] = {k: list(v) for k, v in sorted(self.dim_ranges.items())}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSignature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            keyword_inputs=tuple(str(n) for n in d.get("keyword_inputs", ())),
            dim_ranges={str(k): (int(v[0]), int(v[1])) for k, v in dict(d.get("dim_ranges", {})).items()},
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSignature:
        return cls.from_dict(json.loads(text))

    def sample_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right names, dtypes and shapes (for warm-up, not accuracy).

        Dynamic dims other than the batch take the largest size the data showed at intake (8 if unknown).
        """
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        dims = {name: high for name, (_, high) in self.dim_ranges.items()}
        for t in self.inputs:
            shape = t.concrete_shape(batch, dims)
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
                # An unnamed dynamic dim is named by its tensor and axis, like a program's.
                dims.append(d.dim_param or f"{vi.name}.{i}")
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

    Inputs are named and passed the way the program was exported: ``args`` positionally,
    ``kwargs`` by keyword (its in_spec). Outputs are named from the out_spec: dict and
    ``ModelOutput`` keys (``logits``, ``last_hidden_state``), nested ones joined with ``.``,
    ``output`` for a lone tensor and ``output_<i>`` for tuple items, unless ``output_names`` is given.
    Dynamic dims: a dynamic first dim is ``batch``; any other is named after the first input and
    axis it sizes (``input_ids.1``), never torch's auto symbol (``s53``), which no user can know.
    """
    import torch

    user_inputs = list(ep.graph_signature.user_inputs)
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    input_names, keyword = _input_names_from_spec(ep.call_spec.in_spec, user_inputs)
    vals: list[Any] = []
    for name, placeholder in zip(input_names, user_inputs, strict=True):
        val = nodes[placeholder].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ModelIntakeError(
                f"exported program input {name!r} is not a tensor; vxdeploy serves tensor inputs only"
            )
        vals.append(val)
    symbols: dict[str, str] = {}
    for name, val in zip(input_names, vals, strict=True):
        for axis, size in enumerate(val.shape):
            if not isinstance(size, int):
                symbols.setdefault(str(size), BATCH_DIM if axis == 0 else f"{name}.{axis}")

    def dims_of(tensor: str, val: Any) -> tuple[Dim, ...]:
        dims: list[Dim] = []
        for i, s in enumerate(val.shape):
            if isinstance(s, int):
                dims.append(int(s))
            elif i == 0:
                dims.append(BATCH_DIM)
            else:
                dims.append(symbols.get(str(s), f"{tensor}.{i}"))
        return tuple(dims)

    def np_dtype(t: torch.dtype) -> str:
        return str(t).removeprefix("torch.")

    inputs = tuple(
        TensorSpec(n, np_dtype(v.dtype), dims_of(n, v)) for n, v in zip(input_names, vals, strict=True)
    )
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    out_vals = [a.meta.get("val") for a in out_node.args[0]]
    n_user = len(ep.graph_signature.user_outputs)
    out_vals = out_vals[len(out_vals) - n_user :]
    if output_names is None:
        output_names = output_names_from_spec(ep.call_spec.out_spec, len(out_vals))
    if len(output_names) != len(out_vals):
        raise ModelIntakeError(
            f"model.output_names has {len(output_names)} names {list(output_names)} but the program "
            f"returns {len(out_vals)} tensors; give one name per output or leave model.output_names unset"
        )
    outputs = tuple(
        TensorSpec(n, np_dtype(v.dtype), dims_of(n, v)) for n, v in zip(output_names, out_vals, strict=True)
    )
    return ModelSignature(inputs=inputs, outputs=outputs, keyword_inputs=tuple(keyword))


def _input_names_from_spec(in_spec: Any, user_inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Input names in flat order, and which of them are keyword arguments (from ``(args, kwargs)``)."""
    children = list(in_spec.children()) if in_spec is not None else []
    if len(children) != 2 or children[1].type is not dict:
        return list(user_inputs), []
    n_args = children[0].num_leaves
    kw_spec = children[1]
    keys = [str(k) for k in (kw_spec.context or [])]
    if kw_spec.num_leaves != len(keys) or n_args + len(keys) != len(user_inputs):
        raise ModelIntakeError(
            "the exported program takes nested (dict / list) keyword inputs; vxdeploy serves one tensor "
            f"per input: export with one tensor per keyword (got keywords {keys})"
        )
    return [*user_inputs[:n_args], *keys], keys


def output_names_from_spec(out_spec: Any, count: int) -> list[str]:
    """Names of a model's flattened outputs, from its pytree spec (``torch.utils._pytree``)."""
    import torch.utils._pytree as pytree

    if out_spec is None or out_spec.num_leaves != count:
        return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    tree = pytree.tree_unflatten(list(range(count)), out_spec)
    paths = [path for path, _ in pytree.tree_flatten_with_path(tree)[0]]
    if paths == [()]:
        return ["output"]
    names = []
    for path in paths:
        parts = []
        for i, key in enumerate(path):
            if isinstance(key, pytree.SequenceKey):
                parts.append(f"output_{key.idx}" if i == 0 else str(key.idx))
            elif isinstance(key, pytree.MappingKey):
                parts.append(str(key.key))
            elif isinstance(key, pytree.GetAttrKey):
                parts.append(str(key.name))
            else:
                parts.append(str(key))
        names.append(".".join(parts))
    return names


def flatten_outputs(out: Any) -> list[Any]:
    """A model call's result as its flat list of tensors, in out_spec order (dicts, ModelOutput, tuples)."""
    import torch.utils._pytree as pytree

    leaves, _ = pytree.tree_flatten(out)
    return [leaf for leaf in leaves if leaf is not None]


def output_names_of(out: Any) -> list[str]:
    """Names of the flattened outputs of one eager call (TorchScript models, which carry no out_spec)."""
    import torch.utils._pytree as pytree

    leaves, spec = pytree.tree_flatten(out)
    return output_names_from_spec(spec, len(leaves))


_SPEC_TYPE_RE = re.compile(r'\\"type\\": \\"([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)\\"')
_BUILTIN_PYTREE_MODULES = ("builtins", "collections", "torch")


def load_exported_program(path: str | Path) -> Any:
    """``torch.export.load`` that first imports the modules of the program's pytree output types.

    A program returning a ``transformers`` ``ModelOutput`` records that class in its out_spec;
    torch can only read it back once the class is registered, which happens when its module is
    imported. Such modules are imported here, only when installed.

    Raises:
        ModelIntakeError: when the file is not a loadable program, naming what it needs.
    """
    import importlib
    import importlib.util
    import zipfile

    import torch

    needed: set[str] = set()
    try:
        with zipfile.ZipFile(str(path)) as zf:
            for name in zf.namelist():
                if "/models/" in name and name.endswith(".json"):
                    text = zf.read(name).decode("utf-8", errors="replace")
                    needed.update(m.rsplit(".", 1)[0] for m in _SPEC_TYPE_RE.findall(text))
    except (OSError, zipfile.BadZipFile):
        pass  # torch.export.load says what is wrong with the file
    missing = []
    for module in sorted(needed):
        if module.split(".")[0] in _BUILTIN_PYTREE_MODULES:
            continue
        if importlib.util.find_spec(module.split(".")[0]) is None:
            missing.append(module)
            continue
        importlib.import_module(module)
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        hint = (
            f"; its outputs use types from {missing}: install the package that defines them"
            if missing
            else "; save it with torch.export.save(torch.export.export(model, args, kwargs), 'model.pt2')"
        )
        raise ModelIntakeError(f"{str(path)!r} is not a loadable torch.export program ({exc}){hint}") from exc


def resolve_dim_profiles(
    signature: ModelSignature,
    given: Mapping[str, BuildProfile],
    observed: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, BuildProfile]:
    """The profile of every dynamic dim: given in ``compilation.dim_profiles``, else the observed range.

    ``observed`` defaults to the ranges recorded on the signature at intake.

    A dim may be named ``<input>.<axis>`` by any input it sizes (``attention_mask.1`` is
    ``input_ids.1`` when both share it).

    Raises:
        ConfigError: for a name that is no dynamic dim of the model (torch's auto symbols such as
            ``s53`` included), or a profile that does not cover the data.
    """
    from vxdeploy.components.common.config import BuildProfile

    observed = signature.dim_ranges if observed is None else observed
    dims = signature.dynamic_dims()
    alias = {f"{name}.{axis}": dim for dim, places in dims.items() for name, axis in places}
    alias.update({d: d for d in dims})
    resolved: dict[str, BuildProfile] = {}
    for key, prof in given.items():
        if key not in alias:
            raise ConfigError(
                f"compilation.dim_profiles.{key}",
                prof.model_dump(),
                f"{key!r} is not a dynamic dim of the model; name dims by input and axis: "
                f"{sorted(alias) or 'the model has none besides the batch'}",
            )
        resolved[alias[key]] = prof
    for dim, (low, high) in observed.items():
        given_prof = resolved.get(dim)
        if given_prof is None:
            resolved[dim] = BuildProfile(min=low, opt=high, max=high)
        elif low < given_prof.min or high > given_prof.max:
            raise ConfigError(
                f"compilation.dim_profiles.{dim}",
                given_prof.model_dump(),
                f"the calibration / evaluation data has sizes {low}..{high} on this dim, outside "
                f"min..max; widen the profile to cover them",
            )
    missing = sorted(set(dims) - set(resolved))
    if missing:
        raise ConfigError(
            "compilation.dim_profiles",
            sorted(given),
            f"dynamic dims {missing} have no profile and no data to observe; add "
            + ", ".join(f"compilation.dim_profiles.{d} = {{min: ..., opt: ..., max: ...}}" for d in missing),
        )
    return resolved
