"""AOT Inductor packages: ``torch.export`` program -> ``aoti_compile_and_package`` -> ``.pt2``.

The package is a compiled shared library plus weights, loadable with
``torch._inductor.aoti_load_package`` without Python model code. It is built for one device
(CPU or CUDA); Triton serves it through its Python backend.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vxdeploy.components.common import signature as signatures
from vxdeploy.components.common.errors import CandidateUnavailable, ParityError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.verify.compare import ParityTolerance, check_parity
from vxdeploy.components.verify.runners import AotiRunner, TorchRunner

PACKAGE_FILE = "model.pt2"
# The compiled model must match the program it came from up to float reassociation.
_CHECK_ATOL = 1e-3
_CHECK_RTOL = 1e-3


def inductor_configs(device: str, *, max_autotune: bool = False, freezing: bool = True) -> dict[str, Any]:
    """Inductor options of one AOTI build.

    ``freezing`` folds weights into the graph as constants (conv/linear weight prepacking on CPU),
    the fastest torch path on CPU; it is left off on CUDA, where it buys little.
    """
    configs: dict[str, Any] = {"max_autotune": bool(max_autotune)}
    if device == "cpu" and freezing:
        configs["freezing"] = True
    return configs


def load_exported_program(source_path: str | Path, source_format: str) -> Any:
    """Load the ``torch.export`` program AOTI compiles, or say why this source has none.

    Raises:
        CandidateUnavailable: for ONNX and TorchScript sources (no ``torch.export`` program).
    """
    if source_format == "onnx":
        raise CandidateUnavailable(
            "the source model is ONNX: AOT Inductor compiles a torch.export program, which an ONNX file "
            "does not carry; give model.uri as a torch.export .pt2 to get an AOTI candidate"
        )
    if source_format == "torchscript":
        raise CandidateUnavailable(
            "the source model is TorchScript: AOT Inductor compiles a torch.export program; re-export the "
            "model with torch.export.export and save it as .pt2 to get an AOTI candidate"
        )
    return signatures.load_exported_program(source_path)


def compile_aoti(
    source_path: str | Path,
    package_path: str | Path,
    signature: ModelSignature,
    *,
    source_format: str = "torch_export",
    device: str = "cpu",
    max_autotune: bool = False,
    freezing: bool = True,
) -> dict[str, Any]:
    """Compile a ``torch.export`` program into an AOT Inductor package and check it runs correctly.

    Args:
        source_path: The ``.pt2`` exported program.
        package_path: Where the AOTI package goes.
        signature: The model's signature (for the check inputs).
        source_format: ``torch_export``; other formats are skipped with the reason.
        device: ``cpu`` or ``cuda``.
        max_autotune: Inductor's max-autotune (slower build, sometimes faster kernels).
        freezing: Fold weights as constants on CPU (see :func:`inductor_configs`).

    Returns:
        The options recorded on the candidate (inductor configs, build check figures).

    Raises:
        CandidateUnavailable: for non-torch.export sources, or ``cuda`` without a GPU.
        ParityError: when the compiled package disagrees with the program it came from.
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CandidateUnavailable(
            "no CUDA GPU on this machine; the CUDA AOTI package is built on the serving GPU"
        )
    ep = load_exported_program(source_path, source_format)
    if not signature.keyword_inputs:
        ep = with_standard_input_layout(ep)
    if device == "cuda":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, "cuda")
    configs = inductor_configs(device, max_autotune=max_autotune, freezing=freezing)
    out = Path(package_path)
    tmp = out.with_name(out.stem + ".part" + out.suffix)  # aoti wants the .pt2 suffix
    start = time.perf_counter()
    # aoti_compile_and_package adds its own keys to the dict it is given: pass a copy.
    torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp), inductor_configs=dict(configs))
    compile_s = time.perf_counter() - start

    # The program and the package run through the same runners as everywhere else: the program is
    # called the way its in_spec says, outputs (dicts, ModelOutput) compared by name.
    feeds = signature.sample_inputs(batch=2)
    expected = TorchRunner("torch_export", ep.module(), signature, device).run(feeds)
    got = AotiRunner("aoti", tmp, signature, device).run(feeds)
    try:
        comparisons = check_parity(
            expected,
            got,
            ParityTolerance(atol=_CHECK_ATOL, rtol=_CHECK_RTOL, min_cosine=0.0),
            what=f"the {device} AOT Inductor package",
            fix="Try compilation.aoti_freezing=false.",
        )
    except ParityError:
        tmp.unlink(missing_ok=True)
        raise
    diff = max((c.max_abs_diff for c in comparisons), default=0.0)
    tmp.replace(out)
    return {
        "inductor_configs": configs,
        "compile_s": round(compile_s, 3),
        "check_max_abs_diff": diff,
        "torch_version": torch.__version__,
    }


def with_standard_input_layout(ep: Any) -> Any:
    """The program, re-exported if its example inputs had non-standard strides.

    A program exported from an input whose strides are ambiguous (a size-1 channel dim makes
    (64, 1, 8, 1) look channels-last) records channels-last intermediates; AOT Inductor then
    compiles code that gives wrong answers for ordinary contiguous inputs (seen with torch 2.13).
    Re-exporting from freshly allocated contiguous inputs, with the same dynamic ranges, avoids it.
    """
    import torch
    from torch._prims_common import make_contiguous_strides_for
    from torch.utils._sympy.numbers import int_oo

    user = set(ep.graph_signature.user_inputs)
    vals = [n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    if all(str(tuple(v.stride())) == str(tuple(make_contiguous_strides_for(v.shape))) for v in vals):
        return ep
    dims: dict[Any, Any] = {}
    args = []
    dynamic_shapes = []
    for val in vals:
        shape: list[int] = []
        spec: dict[int, Any] = {}
        for axis, size in enumerate(val.shape):
            if isinstance(size, int):
                shape.append(size)
                continue
            expr = size.node.expr
            bounds = ep.range_constraints.get(expr)
            lower = max(int(bounds.lower), 1) if bounds is not None else 1
            upper = None if bounds is None or bounds.upper is int_oo else int(bounds.upper)
            if expr not in dims:
                dims[expr] = torch.export.Dim(f"d_{expr}", min=lower, max=upper)
            spec[axis] = dims[expr]
            # Example sizes of 0 or 1 would be specialized; 2 keeps the dim symbolic.
            shape.append(max(2, lower) if upper is None else min(max(2, lower), upper))
        args.append(torch.zeros(shape, dtype=val.dtype))
        dynamic_shapes.append(spec)
    return torch.export.export(ep.module(), tuple(args), dynamic_shapes=tuple(dynamic_shapes))
