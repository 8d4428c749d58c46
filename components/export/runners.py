"""Run a model on named numpy inputs, batch by batch: PyTorch (reference) or ONNX Runtime (CPU).

Both return ``{output name: array}`` with the batches concatenated, so their results can be
handed straight to :func:`components.export.parity.compare_outputs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.common.errors import ModelIntakeError
from components.common.signature import ModelSignature


def split_batches(inputs: Mapping[str, np.ndarray], sizes: Sequence[int]) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive slices of ``inputs`` of the given sizes; the last size repeats until all are used.

    ``sizes=(1, 32)`` yields one single-sample batch, then batches of 32: one pass that
    exercises a dynamic batch dimension at two sizes.
    """
    n = len(next(iter(inputs.values()))) if inputs else 0
    start, i = 0, 0
    while start < n:
        size = sizes[min(i, len(sizes) - 1)]
        yield {k: v[start : start + size] for k, v in inputs.items()}
        start += size
        i += 1


def onnxruntime_session(model_path: str | Path, *, optimize: bool = True) -> Any:
    """A CPU ONNX Runtime session (graph optimizations on, unless ``optimize`` is False)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
        raise ModelIntakeError(
            f"ONNX Runtime {ort.__version__} cannot load {Path(model_path).name!r}: {exc}. "
            "Re-export the model with an opset and IR version this ONNX Runtime supports."
        ) from exc


def run_onnxruntime(
    model: str | Path | Any,
    inputs: Mapping[str, np.ndarray],
    batch_sizes: Sequence[int] = (32,),
) -> dict[str, np.ndarray]:
    """Run an ONNX model (a path or an open session) on ``inputs``, batch by batch."""
    session = onnxruntime_session(model) if isinstance(model, (str, Path)) else model
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in split_batches(inputs, batch_sizes):
        for name, value in zip(names, session.run(names, feed), strict=True):
            parts[name].append(np.asarray(value))
    return {n: np.concatenate(v) if v else np.empty((0,)) for n, v in parts.items()}


def load_torch_module(source_path: str | Path, model_format: str) -> Any:
    """The callable PyTorch module of a ``torch.export`` program or a TorchScript file."""
    import torch

    if model_format == "torch_export":
        return torch.export.load(str(source_path)).module()
    if model_format == "torchscript":
        return torch.jit.load(str(source_path), map_location="cpu").eval()
    raise ModelIntakeError(
        f"model format {model_format!r} has no PyTorch reference; use torch_export or torchscript"
    )


def run_pytorch(
    module: Any,
    signature: ModelSignature,
    inputs: Mapping[str, np.ndarray],
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Run a PyTorch module on ``inputs`` (positional, in signature order), batch by batch.

    Outputs are flattened in order (tuples, lists and dicts alike) and named by the signature.
    """
    import torch

    names = signature.output_names
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with torch.inference_mode():
        for feed in split_batches(inputs, (batch_size,)):
            args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in signature.input_names]
            flat = _flatten(module(*args))
            if len(flat) != len(names):
                raise ModelIntakeError(
                    f"the PyTorch model returns {len(flat)} tensors but its signature names "
                    f"{len(names)} outputs {names}; set model.output_names to one name per output"
                )
            for name, value in zip(names, flat, strict=True):
                parts[name].append(value.detach().cpu().numpy())
    return {n: np.concatenate(v) if v else np.empty((0,)) for n, v in parts.items()}


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return [out]
