"""The runners of built candidates and of the FP32 reference, from the one runner layer.

Every candidate is measured through :mod:`vxdeploy.components.verify.runners`, so each one pays the same
costs a server would (moving inputs to the device and outputs back included).
"""

from __future__ import annotations

from pathlib import Path

from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.compile import ort
from vxdeploy.components.compile.candidates import Candidate
from vxdeploy.components.verify.runners import OnnxRuntimeRunner, Runner, RunnerUnavailable, open_runner


def load_candidate_runner(
    candidate: Candidate, candidates_dir: str | Path, signature: ModelSignature
) -> Runner:
    """The runner of a built candidate.

    Raises:
        CandidateUnavailable: when the candidate cannot run on this machine (a CUDA build without a
            GPU, TensorRT not installed).
    """
    path = Path(candidates_dir) / candidate.file
    if candidate.runtime not in ("onnxruntime", "aoti", "tensorrt"):
        raise RunnerUnavailable(f"no runner for runtime {candidate.runtime!r}")
    return open_runner(
        candidate.runtime,
        path,
        signature,
        name=candidate.name,
        device=candidate.device,
        options=candidate.options,
    )


def reference_runner(
    source_path: str | Path, source_format: str, signature: ModelSignature, device: str = "cpu"
) -> Runner:
    """The FP32 reference every candidate is compared with.

    PyTorch eager (called the way its program's in_spec says), or ONNX Runtime with no graph
    optimizations when the source itself is ONNX.
    """
    if source_format == "onnx":
        options = ort.session_options_dict("disable", providers=["CPUExecutionProvider"])
        return OnnxRuntimeRunner("onnxruntime_reference", source_path, options, signature.output_names)
    name = "pytorch_eager" if device == "cpu" else f"pytorch_eager_{device}"
    return open_runner(source_format, source_path, signature, name=name, device=device)
