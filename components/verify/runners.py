"""Runners: every way vxdeploy runs a model, behind one call — named NumPy inputs in, named outputs out.

PyTorch (a ``torch.export`` program, TorchScript, an eager module), ONNX Runtime, AOT Inductor,
TensorRT (GPU) and Triton (client) all take ``{input name: array}`` and return
``{output name: array}`` in the model's output order, so export parity, the INT8 gate, selection
and the serve check compare like with like. :func:`open_runner` is the registry: a runner that cannot
run here raises :class:`RunnerUnavailable` naming what is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vxdeploy.components.common.errors import CandidateUnavailable, ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature, flatten_outputs, load_exported_program


class RunnerUnavailable(CandidateUnavailable):
    """A runner cannot run on this machine (a package, a GPU or a server is missing)."""


class Runner(Protocol):
    """Runs a model on one batch of named NumPy inputs; returns its outputs by name, in model order."""

    name: str
    device: str
    max_batch: int | None
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def _named(names: Sequence[str], values: Sequence[Any], what: str) -> dict[str, np.ndarray]:
    if len(values) != len(names):
        raise ModelIntakeError(
            f"{what} returns {len(values)} tensors but the signature names {len(names)} outputs "
            f"{list(names)}; set model.output_names to one name per output"
        )
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


class OnnxRuntimeRunner:
    """An ONNX Runtime session (CPU with every graph optimization, unless ``options`` say otherwise)."""

    def __init__(
        self,
        name: str,
        model: str | Path | Any,
        options: Mapping[str, Any] | None = None,
        output_names: Sequence[str] | None = None,
    ):
        from vxdeploy.components.compile import ort

        self.name = name
        if isinstance(model, (str, Path)):
            opts = options or ort.session_options_dict("all", providers=["CPUExecutionProvider"])
            try:
                self._session = ort.make_session(model, opts)
            except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
                import onnxruntime

                raise ModelIntakeError(
                    f"ONNX Runtime {onnxruntime.__version__} cannot load {Path(model).name!r}: {exc}. "
                    "Re-export the model with an opset and IR version this ONNX Runtime supports."
                ) from exc
        else:
            self._session = model
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.max_batch: int | None = None
        self.output_names = list(output_names or [o.name for o in self._session.get_outputs()])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _named(self.output_names, self._session.run(self.output_names, dict(feeds)), self.name)

    def close(self) -> None:
        self._session = None


class TorchRunner:
    """A PyTorch callable (eager module, unlifted ``torch.export`` program, TorchScript) on CPU or CUDA.

    It is called the way the program's in_spec says (positional and keyword inputs from the
    signature) and its result — a tensor, tuple, dict or ``ModelOutput`` — is flattened in
    out_spec order and named by the signature.
    """

    def __init__(self, name: str, fn: Any, signature: ModelSignature, device: str = "cpu"):
        self.name = name
        self.device = device
        self.max_batch: int | None = None
        self.output_names = signature.output_names
        self._fn = fn
        self._signature = signature

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            tensors = {
                n: torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device)
                for n in self._signature.input_names
            }
            args, kwargs = self._signature.call_arguments(tensors)
            flat = flatten_outputs(self._fn(*args, **kwargs))
            # .cpu() waits for the device, so a timed call covers the whole computation.
            return _named(self.output_names, [t.detach().cpu().numpy() for t in flat], self.name)

    def close(self) -> None:
        self._fn = None


class AotiRunner:
    """An AOT Inductor package, run on its flat inputs (signature order) and returning flat outputs.

    Running the loader directly skips rebuilding the output pytree, which for a ``ModelOutput``
    would need the package defining it.
    """

    def __init__(self, name: str, package_path: str | Path, signature: ModelSignature, device: str = "cpu"):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RunnerUnavailable("built for CUDA; this machine has no GPU to run it on")
        self.name = name
        self.device = device
        self.max_batch: int | None = None
        self.output_names = signature.output_names
        self._inputs = signature.input_names
        self._package: Any = torch._inductor.aoti_load_package(str(package_path))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            flat = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self._inputs]
            out = self._package.loader.boxed_run(flat)
            return _named(self.output_names, [t.detach().cpu().numpy() for t in out], self.name)

    def close(self) -> None:
        self._package = None


class TensorRTRunner:
    """A deserialized TensorRT engine, run on the current CUDA stream with torch-allocated buffers."""

    def __init__(self, name: str, engine_path: str | Path, signature: ModelSignature, max_batch: int | None):
        from vxdeploy.components.compile.tensorrt import cuda_device, import_tensorrt

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
            raise RunnerUnavailable(
                f"TensorRT {trt.__version__} could not load {Path(engine_path).name} on this GPU "
                "(built by another TensorRT version or for another GPU)"
            )
        self._context = self._engine.create_execution_context()
        self._inputs = signature.input_names
        self.output_names = signature.output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        trt = self._trt
        keep = []
        for name in self._inputs:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(t)
            self._context.set_input_shape(name, tuple(t.shape))
            self._context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            t = torch.empty(shape, dtype=dtype, device="cuda")
            outs.append(t)
            self._context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.name} failed")
        stream.synchronize()
        return _named(self.output_names, [o.cpu().numpy() for o in outs], self.name)

    def close(self) -> None:
        self._context = None
        self._engine = None


class TritonRunner:
    """A model served by Triton, over its gRPC protocol (``tritonclient[grpc]``)."""

    def __init__(self, url: str, model_name: str, signature: ModelSignature, *, name: str | None = None):
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as exc:
            raise RunnerUnavailable(
                f"the Triton runner needs tritonclient[grpc] (pip install tritonclient[grpc]): {exc}"
            ) from exc
        self.name = name or f"triton:{model_name}"
        self.device = "server"
        self.max_batch: int | None = None
        self.output_names = signature.output_names
        self._signature = signature
        self._model = model_name
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url=url)
        # The served config says how each tensor travels (a scalar per sample as [batch, 1]).
        config = self._client.get_model_config(model_name).config
        self._tensors = {t.name: t for t in (*config.input, *config.output)}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tritonclient.utils import np_to_triton_dtype

        from vxdeploy.components.package.model_config import from_wire, to_wire

        inputs = []
        for spec in self._signature.inputs:
            arr = np.ascontiguousarray(feeds[spec.name])
            if spec.name in self._tensors:
                arr = to_wire(arr, self._tensors[spec.name])
            inp = self._grpc.InferInput(spec.name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = [self._grpc.InferRequestedOutput(n) for n in self.output_names]
        result = self._client.infer(self._model, inputs, outputs=outputs)
        answers = {n: np.asarray(result.as_numpy(n)) for n in self.output_names}
        return {n: from_wire(a, self._tensors[n]) if n in self._tensors else a for n, a in answers.items()}

    def close(self) -> None:
        self._client.close()


def load_torch_module(source_path: str | Path, model_format: str) -> Any:
    """The callable PyTorch module of a ``torch.export`` program or a TorchScript file."""
    import torch

    if model_format == "torch_export":
        return load_exported_program(source_path).module()
    if model_format == "torchscript":
        return torch.jit.load(str(source_path), map_location="cpu").eval()
    raise ModelIntakeError(
        f"model format {model_format!r} has no PyTorch reference; use torch_export or torchscript"
    )


def _needs(package: str, kind: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise RunnerUnavailable(
            f"runner {kind!r} needs the Python package {package!r}, which is not installed"
        )


def _open_torch(kind: str) -> Callable[..., Runner]:
    def opener(path: str | Path, signature: ModelSignature, *, name: str, device: str, **_: Any) -> Runner:
        _needs("torch", kind)
        module = load_torch_module(path, kind)
        if device != "cpu":
            module = module.to(device)
        return TorchRunner(name, module, signature, device)

    return opener


def _open_onnxruntime(
    path: str | Path,
    signature: ModelSignature,
    *,
    name: str,
    options: Mapping[str, Any] | None = None,
    **_: Any,
) -> Runner:
    _needs("onnxruntime", "onnxruntime")
    return OnnxRuntimeRunner(name, path, options, signature.output_names)


def _open_aoti(path: str | Path, signature: ModelSignature, *, name: str, device: str, **_: Any) -> Runner:
    _needs("torch", "aoti")
    return AotiRunner(name, path, signature, device)


def _open_tensorrt(
    path: str | Path,
    signature: ModelSignature,
    *,
    name: str,
    options: Mapping[str, Any] | None = None,
    **_: Any,
) -> Runner:
    if importlib.util.find_spec("tensorrt") is None:
        raise RunnerUnavailable(
            "runner 'tensorrt' needs the tensorrt package and an NVIDIA GPU; neither is here"
        )
    max_batch = (options or {}).get("max_batch")
    return TensorRTRunner(name, path, signature, int(max_batch) if max_batch else None)


def _open_triton(path: str | Path, signature: ModelSignature, *, name: str, **kw: Any) -> Runner:
    """``path`` is ``grpc://host:port/<model name>``."""
    url, _, model = str(path).removeprefix("grpc://").partition("/")
    return TritonRunner(url, model, signature, name=name)


RUNNERS: dict[str, Callable[..., Runner]] = {
    "torch_export": _open_torch("torch_export"),
    "torchscript": _open_torch("torchscript"),
    "onnxruntime": _open_onnxruntime,
    "aoti": _open_aoti,
    "tensorrt": _open_tensorrt,
    "triton": _open_triton,
}
"""The runner registry: model kind -> opener."""


def open_runner(
    kind: str,
    path: str | Path,
    signature: ModelSignature,
    *,
    name: str | None = None,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
) -> Runner:
    """Open the runner of one model file (or, for ``triton``, ``grpc://host:port/<model>``).

    Raises:
        RunnerUnavailable: for an unknown kind (the valid ones listed) or when the runner's package,
            GPU or server is missing here.
    """
    opener = RUNNERS.get(kind)
    if opener is None:
        raise RunnerUnavailable(f"no runner for {kind!r}; runners: {', '.join(sorted(RUNNERS))}")
    return opener(path, signature, name=name or kind, device=device, options=options)


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


def run_batches(
    runner: Runner,
    inputs: Mapping[str, np.ndarray],
    batch_sizes: Sequence[int] = (32,),
    *,
    fixed_batch: bool = False,
) -> dict[str, np.ndarray]:
    """Every sample of ``inputs`` through ``runner``, batch by batch; outputs concatenated by name.

    With ``fixed_batch`` (a model without a dynamic batch) a last, short batch is dropped.
    """
    parts: dict[str, list[np.ndarray]] = {n: [] for n in runner.output_names}
    for feed in split_batches(inputs, batch_sizes):
        if fixed_batch and len(next(iter(feed.values()))) != batch_sizes[-1]:
            break
        for name, value in runner.run(feed).items():
            parts[name].append(value)
    return {n: _concatenate(v) for n, v in parts.items()}


def _concatenate(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Batches joined along the sample axis; a scalar (0-d) result, which has none, is kept as is."""
    if not parts:
        return np.empty((0,))
    if parts[0].ndim == 0:
        return parts[0]
    return np.concatenate(parts)


def onnxruntime_session(model_path: str | Path, *, optimize: bool = True) -> Any:
    """A CPU ONNX Runtime session (graph optimizations on, unless ``optimize`` is False)."""
    from vxdeploy.components.compile import ort

    level = "all" if optimize else "disable"
    runner = OnnxRuntimeRunner(
        Path(model_path).name, model_path, ort.session_options_dict(level, providers=["CPUExecutionProvider"])
    )
    return runner._session


def run_onnxruntime(
    model: str | Path | Any, inputs: Mapping[str, np.ndarray], batch_sizes: Sequence[int] = (32,)
) -> dict[str, np.ndarray]:
    """Run an ONNX model (a path or an open session) on ``inputs``, batch by batch, on CPU."""
    return run_batches(OnnxRuntimeRunner("onnxruntime", model), inputs, batch_sizes)
