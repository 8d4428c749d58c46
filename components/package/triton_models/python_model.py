"""Triton Python-backend model running an AOT Inductor package or an ONNX model.

This file is copied verbatim to ``<model>/<version>/model.py``. Everything it needs comes from
the model config Triton hands it: input and output names and dtypes, and the parameters
``runtime`` (``aoti`` or ``onnxruntime``) and ``model_file`` (a file beside this one). The
requests of one dynamic batch run as one call of the model. ``device`` (``cpu``
or ``cuda``) says which device an AOTI package was compiled for.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# Triton's Python stub embeds the base interpreter, which ignores PYTHONPATH; the serve check
# names the project's site-packages here so torch and onnxruntime import.
for _path in reversed([p for p in os.environ.get("VXDEPLOY_PYTHON_PATHS", "").split(os.pathsep) if p]):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

RUNTIMES = ("aoti", "onnxruntime")


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", default)
    return str(value)


# Python backends built against NumPy 1 (Triton 24.x and older, pytriton's 2.51) misread NumPy 2
# arrays through as_numpy() and Tensor(): wrong values in, empty tensors out. DLPack does not
# depend on NumPy's C layout, so numeric tensors cross through it; text still needs NumPy.
def _from_triton(tensor: Any) -> np.ndarray:
    try:
        return np.array(np.from_dlpack(tensor))
    except Exception:  # BYTES tensors have no DLPack form
        return np.array(tensor.as_numpy())


def _to_triton(name: str, array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return pb_utils.Tensor(name, array)
    return pb_utils.Tensor.from_dlpack(name, array)


class TritonPythonModel:
    """Triton's entry point: ``initialize`` once per instance, ``execute`` per batch of requests."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.outputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]
        ]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.runtime = _parameter(config, "runtime", "aoti")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"parameter runtime={self.runtime!r} is not one of {RUNTIMES}")
        model_file = (
            Path(args["model_repository"]) / args["model_version"] / _parameter(config, "model_file", "")
        )
        on_gpu = args.get("model_instance_kind") == "GPU"
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        if self.runtime == "aoti":
            # An AOTI package is compiled for one device; a CPU build stays on the CPU on any instance.
            on_gpu = on_gpu and _parameter(config, "device", "cuda") != "cpu"
            self._load_aoti(model_file, on_gpu, device_id)
        else:
            self._load_onnxruntime(model_file, on_gpu, device_id)

    def _load_aoti(self, path: Path, on_gpu: bool, device_id: int) -> None:
        import torch
        from torch._inductor import aoti_load_package

        self.torch = torch
        use_cuda = on_gpu and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{device_id}" if use_cuda else "cpu")
        self.model = aoti_load_package(str(path), device_index=device_id if use_cuda else -1)

    def _load_onnxruntime(self, path: Path, on_gpu: bool, device_id: int) -> None:
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = ort.InferenceSession(str(path), providers=providers)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.runtime == "onnxruntime":
            results = self.session.run([name for name, _ in self.outputs], feeds)
            return [np.asarray(r) for r in results]
        torch = self.torch
        with torch.inference_mode():
            # The loader runs on the flat inputs (config order = the program's) and returns flat
            # outputs: no pytree to rebuild, whether the program takes kwargs or returns a dict.
            flat = [torch.from_numpy(feeds[n]).to(self.device) for n in self.input_names]
            outs = self.model.loader.boxed_run(flat)
        return [o.detach().cpu().numpy() for o in outs]

    def _respond(self, results: list[np.ndarray]) -> Any:
        tensors = [
            _to_triton(name, np.ascontiguousarray(r.astype(dtype, copy=False)))
            for (name, dtype), r in zip(self.outputs, results, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = [
            {n: _from_triton(pb_utils.get_input_tensor_by_name(r, n)) for n in self.input_names}
            for r in requests
        ]
        try:
            if self.batched and len(feeds) > 1 and self._stackable(feeds):
                return self._execute_together(feeds)
            return [self._respond(self._run(f)) for f in feeds]
        except Exception as exc:  # one failing batch answers each request with the error
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]

    def _stackable(self, feeds: list[dict[str, np.ndarray]]) -> bool:
        return all(len({f[n].shape[1:] for f in feeds}) == 1 for n in self.input_names)

    def _execute_together(self, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
        sizes = [len(f[self.input_names[0]]) for f in feeds]
        merged = {n: np.concatenate([f[n] for f in feeds]) for n in self.input_names}
        results = self._run(merged)
        bounds = np.cumsum([0, *sizes])
        return [
            self._respond([r[start:stop] for r in results])
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
        ]
