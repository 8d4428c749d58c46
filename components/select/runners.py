"""One runner per kind of candidate, all with the same call: NumPy inputs in, NumPy outputs out.

The benchmark measures every candidate through this interface, so each one pays the same costs
a server would (moving inputs to the device and outputs back included).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from components.common.errors import CandidateUnavailable, ModelIntakeError
from components.common.signature import ModelSignature
from components.compile import ort
from components.compile.candidates import Candidate


class Runner(Protocol):
    """Runs a model on a batch of NumPy inputs and returns its outputs in signature order."""

    name: str
    device: str
    max_batch: int | None

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class OnnxRuntimeRunner:
    """An ONNX Runtime session built from the candidate's recorded session options."""

    def __init__(
        self, name: str, model_path: str | Path, options: Mapping[str, Any], output_names: Sequence[str]
    ):
        self.name = name
        self._session = ort.make_session(model_path, options)
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.max_batch: int | None = None
        self._outputs = list(output_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._session.run(self._outputs, dict(feeds))]

    def close(self) -> None:
        self._session = None


class TorchRunner:
    """A PyTorch callable (eager module or AOTI package) on CPU or CUDA."""

    def __init__(self, name: str, fn: Any, device: str, input_names: Sequence[str]):
        self.name = name
        self.device = device
        self.max_batch: int | None = None
        self._fn = fn
        self._inputs = list(input_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self._inputs]
            out = self._fn(*args)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            # .cpu() waits for the device, so the measured time covers the whole call.
            return [o.detach().cpu().numpy() for o in outs]

    def close(self) -> None:
        self._fn = None


class TensorRTRunner:
    """A deserialized TensorRT engine, run on the current CUDA stream with torch-allocated buffers."""

    def __init__(self, name: str, engine_path: str | Path, signature: ModelSignature, max_batch: int | None):
        from components.compile.tensorrt import cuda_device, import_tensorrt

        trt = import_tensorrt()
        cuda_device()
        self.name = name
        self.device = "cuda"
        self.max_batch = max_batch
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise CandidateUnavailable(
                f"TensorRT {trt.__version__} could not load {Path(engine_path).name} on this GPU "
                "(built by another TensorRT version or for another GPU)"
            )
        self._context = self._engine.create_execution_context()
        self._inputs = signature.input_names
        self._outputs = signature.output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        trt = self._trt
        keep = []
        for name in self._inputs:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(t)
            self._context.set_input_shape(name, tuple(t.shape))
            self._context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            t = torch.empty(shape, dtype=dtype, device="cuda")
            outs.append(t)
            self._context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.name} failed")
        stream.synchronize()
        return [o.cpu().numpy() for o in outs]

    def close(self) -> None:
        self._context = None
        self._engine = None


def load_candidate_runner(
    candidate: Candidate, candidates_dir: str | Path, signature: ModelSignature
) -> Runner:
    """The runner of a built candidate.

    Raises:
        CandidateUnavailable: when the candidate cannot run on this machine (a CUDA build without a
            GPU, TensorRT not installed).
    """
    path = Path(candidates_dir) / candidate.file
    if candidate.runtime == "onnxruntime":
        return OnnxRuntimeRunner(candidate.name, path, candidate.options, signature.output_names)
    if candidate.runtime == "aoti":
        import torch

        if candidate.device == "cuda" and not torch.cuda.is_available():
            raise CandidateUnavailable("built for CUDA; this machine has no GPU to measure it on")
        package = torch._inductor.aoti_load_package(str(path))
        return TorchRunner(candidate.name, package, candidate.device, signature.input_names)
    if candidate.runtime == "tensorrt":
        max_batch = candidate.options.get("max_batch")
        return TensorRTRunner(candidate.name, path, signature, int(max_batch) if max_batch else None)
    raise CandidateUnavailable(f"no runner for runtime {candidate.runtime!r}")


def load_reference_module(source_path: str | Path, source_format: str) -> Any:
    """The FP32 PyTorch model as an eager callable (None for ONNX sources, which have no PyTorch model)."""
    import torch

    if source_format == "onnx":
        return None
    if source_format == "torchscript":
        return torch.jit.load(str(source_path), map_location="cpu").eval()
    try:
        return torch.export.load(str(source_path)).module()
    except Exception as exc:
        raise ModelIntakeError(
            f"source model {str(source_path)!r} is not a loadable torch.export program ({exc})"
        ) from exc


def reference_runner(
    source_path: str | Path, source_format: str, signature: ModelSignature, device: str = "cpu"
) -> Runner:
    """The FP32 reference every candidate is compared with.

    PyTorch eager, or ONNX Runtime with no graph optimizations when the source itself is ONNX.
    """
    module = load_reference_module(source_path, source_format)
    if module is None:
        options = ort.session_options_dict("disable", providers=["CPUExecutionProvider"])
        return OnnxRuntimeRunner("onnxruntime_reference", source_path, options, signature.output_names)
    if device != "cpu":
        module = module.to(device)
    name = "pytorch_eager" if device == "cpu" else f"pytorch_eager_{device}"
    return TorchRunner(name, module, device, signature.input_names)
