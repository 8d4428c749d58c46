"""Export a PyTorch model (``torch.export`` program or TorchScript) to a checked ONNX model.

The ONNX graph keeps the signature's input and output names and its dynamic dimensions
(renamed to the signature's symbols, e.g. ``batch``), passes ``onnx.checker`` with full
shape inference, and is compared with PyTorch on real inputs before anyone uses it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.common.config import ExportConfig, ModelConfig, ModelPartConfig
from vxdeploy.components.common.errors import ConfigError, DataError, InternalError, ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature, load_exported_program, signature_from_onnx
from vxdeploy.components.verify.compare import OutputComparison, ParityTolerance, check_parity, summarize
from vxdeploy.components.verify.runners import OnnxRuntimeRunner, TorchRunner, load_torch_module, run_batches

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000
"""Protobuf cannot hold 2 GiB: larger models keep their weights in a side file."""
_PARITY_BATCH_SIZES = (1, 32)
"""Parity runs a dynamic-batch candidate at batch 1, then 32: a batch that only works at one size fails."""


@dataclass(frozen=True)
class ExportResult:
    """A checked ONNX model and how it compares with its source."""

    onnx_path: Path
    signature: ModelSignature
    opset: int
    sha256: str
    source_format: str
    exported: bool
    """False when the source already was ONNX (checked, possibly opset-converted, not exported)."""
    parity: list[OutputComparison] = field(default_factory=list)
    parity_reference: str = "none"
    """What parity compared against: 'pytorch', 'onnx_source' (before opset conversion) or 'none'."""
    parity_samples: int = 0
    duration_s: float = 0.0

    def parity_summary(self) -> dict[str, float]:
        """Worst-case parity figures over all outputs."""
        return summarize(self.parity)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready facts for an artifact's metadata (signature, opset, checksum, parity)."""
        return {
            "file": self.onnx_path.name,
            "signature": self.signature.to_dict(),
            "opset": self.opset,
            "sha256": self.sha256,
            "source_format": self.source_format,
            "exported": self.exported,
            "parity_reference": self.parity_reference,
            "parity_samples": self.parity_samples,
            "parity": self.parity_summary(),
        }


def export_onnx(
    source_path: str | Path,
    model_format: str,
    signature: ModelSignature,
    out_path: str | Path,
    cfg: ExportConfig,
    eval_inputs: Mapping[str, np.ndarray] | None,
) -> ExportResult:
    """Export (or, for an ONNX source, check) a model and verify it against its source.

    Args:
        source_path: The ``.pt2`` (torch.export), TorchScript ``.pt`` or ``.onnx`` file.
        model_format: ``torch_export``, ``torchscript`` or ``onnx``.
        signature: The source model's signature; names and dynamic dims the ONNX graph keeps.
        out_path: Where the ONNX model is written (atomically).
        cfg: Opset, constant folding and parity tolerances.
        eval_inputs: Real inputs (first axis = samples) for the parity check, or ``None``
            for random inputs drawn from the signature (fine for numerics, not for accuracy).

    Returns:
        The checked model with its final signature, checksum and parity figures.

    Raises:
        ParityError: when an output disagrees with the source beyond tolerance.
        ModelIntakeError: when the model cannot be exported or fails the ONNX checker.
    """
    start = time.perf_counter()
    src, out = Path(source_path), Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs, batch_sizes = _parity_inputs(signature, eval_inputs, cfg.parity_samples)
    if model_format == "onnx":
        model, reference, ref_kind = _prepare_onnx_source(src, cfg, inputs, batch_sizes)
    elif model_format in ("torch_export", "torchscript"):
        model = _export_torch(src, model_format, signature, cfg, inputs)
        module = TorchRunner("pytorch", load_torch_module(src, model_format), signature)
        reference, ref_kind = run_batches(module, inputs, (batch_sizes[-1],)), "pytorch"
    else:
        raise ModelIntakeError(
            f"model.format={model_format!r}: export supports torch_export, torchscript and onnx"
        )
    _rename_dims(model, signature)
    model = check_onnx_model(model)
    _check_names(model, signature)
    save_onnx_atomic(model, out)
    parity: list[OutputComparison] = []
    try:
        final_sig = signature_from_onnx(out).carrying_call_and_tasks_of(signature)
        candidate = run_batches(OnnxRuntimeRunner("onnxruntime", out), inputs, batch_sizes)
        if reference is not None:
            tol = ParityTolerance(atol=cfg.atol, rtol=cfg.rtol, min_cosine=cfg.min_cosine)
            parity = check_parity(
                reference, candidate, tol, what=f"ONNX model {out.name!r} (opset {onnx_opset(model)})"
            )
        else:
            _check_finite(candidate, out)
    except Exception:
        # A model that failed its check must not be left where the next step would pick it up.
        for leftover in (out, out.with_name(f"{out.name}.data")):
            leftover.unlink(missing_ok=True)
        raise
    return ExportResult(
        onnx_path=out,
        signature=final_sig,
        opset=onnx_opset(model),
        sha256=sha256_file(out),
        source_format=model_format,
        exported=model_format != "onnx",
        parity=parity,
        parity_reference=ref_kind,
        parity_samples=len(next(iter(inputs.values()))),
        duration_s=time.perf_counter() - start,
    )


def export_parts(
    parts: Sequence[ModelPartConfig],
    out_dir: str | Path,
    cfg: ExportConfig,
    workdir: str | Path,
) -> dict[str, ExportResult]:
    """Export every part of a multi-part model to ``<out_dir>/<part name>/model.onnx``.

    Each part's signature is read from its own file (or its ``inputs`` for TorchScript).
    Parts have no evaluation data of their own, so their parity check runs on random
    inputs drawn from their signatures.

    Raises:
        ConfigError: when part names repeat or cannot be folder names.
    """
    from vxdeploy.components.intake.intake import detect_format, read_signature, resolve

    names = [p.name for p in parts]
    for i, part in enumerate(parts):
        if names.count(part.name) > 1:
            raise ConfigError(f"model.parts[{i}].name", part.name, "part names must be unique")
        if not part.name or part.name in (".", "..") or "/" in part.name or "\\" in part.name:
            raise ConfigError(
                f"model.parts[{i}].name", part.name, "use a plain name (no '/'), it names a folder"
            )
    results: dict[str, ExportResult] = {}
    for i, part in enumerate(parts):
        path = resolve(part.uri, Path(workdir) / "parts" / part.name, what=f"model.parts[{i}].uri")
        fmt = detect_format(path, "auto")
        part_cfg = ModelConfig(uri=part.uri, inputs=part.inputs, output_names=part.output_names)
        signature = read_signature(path, fmt, part_cfg)
        results[part.name] = export_onnx(
            path, fmt, signature, Path(out_dir) / part.name / ONNX_FILE, cfg, None
        )
    return results


def _parity_inputs(
    signature: ModelSignature, eval_inputs: Mapping[str, np.ndarray] | None, samples: int
) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """The parity inputs and the batch sizes to run them at.

    A dynamic batch runs at 1 and then 32; a static first dim ``k`` runs in batches of ``k``
    (the samples trimmed to a multiple of it).
    """
    from vxdeploy.components.common.data import check_inputs

    static = {t.shape[0] for t in signature.inputs if t.shape and isinstance(t.shape[0], int)}
    batch_sizes: tuple[int, ...] = _PARITY_BATCH_SIZES
    if static:
        batch_sizes = (int(max(static)),)
    if eval_inputs is None:
        drawn = signature.sample_inputs(batch=batch_sizes[0] if static else min(samples, 8))
        return drawn, batch_sizes
    capped = {name: np.asarray(arr)[: max(samples, batch_sizes[0])] for name, arr in eval_inputs.items()}
    checked = check_inputs(capped, signature, what="data.eval_uri (parity inputs)")
    n = len(next(iter(checked.values())))
    if static:
        k = batch_sizes[0]
        if n < k:
            raise DataError(
                f"data.eval_uri: the model's batch is fixed at {k} but there are only {n} samples; "
                f"give at least {k}, or export the model with a dynamic batch (torch.export.Dim)"
            )
        checked = {name: arr[: n - n % k] for name, arr in checked.items()}
    return {name: np.ascontiguousarray(arr) for name, arr in checked.items()}, batch_sizes


def _export_torch(
    src: Path, fmt: str, signature: ModelSignature, cfg: ExportConfig, inputs: Mapping[str, np.ndarray]
) -> Any:
    import torch

    if fmt == "torch_export":
        ep = load_exported_program(src)
        # The program already carries its dynamic dims (its range constraints); the exporter keeps them.
        # Its example call must take the inputs as the program does: positional or by keyword.
        examples = {n: torch.from_numpy(np.ascontiguousarray(inputs[n][:2])) for n in signature.input_names}
        args, kwargs = signature.call_arguments(examples)
        try:
            program = torch.onnx.export(
                ep,
                tuple(args),
                kwargs=kwargs or None,
                dynamo=True,
                opset_version=cfg.opset,
                input_names=signature.input_names,
                output_names=signature.output_names,
                optimize=cfg.constant_folding,
                verify=False,
                report=False,
            )
        except Exception as exc:
            raise ModelIntakeError(f"torch.onnx.export of {src.name!r} failed: {exc}") from exc
        if program is None:
            raise InternalError("torch.onnx.export(dynamo=True) returned no ONNX program")
        return program.model_proto
    return _export_torchscript(src, signature, cfg, inputs)


def _export_torchscript(
    src: Path, signature: ModelSignature, cfg: ExportConfig, inputs: Mapping[str, np.ndarray]
) -> Any:
    """TorchScript goes through the TorchScript exporter: the dynamo exporter refuses ScriptModules."""
    import tempfile

    import onnx
    import torch

    module = torch.jit.load(str(src), map_location="cpu").eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[n][:2])) for n in signature.input_names)
    with torch.no_grad():
        probe = module(*args)
    if not isinstance(probe, torch.Tensor) and not (
        isinstance(probe, tuple) and all(isinstance(t, torch.Tensor) for t in probe)
    ):
        # The TorchScript exporter has no ONNX for prim::DictConstruct: trace a wrapper that
        # returns the flattened outputs (in the signature's order) instead.
        module = torch.jit.trace(_flat_outputs(module), args, strict=False)
    dynamic_axes = {t.name: t.dynamic_axes for t in (*signature.inputs, *signature.outputs) if t.dynamic_axes}
    with tempfile.TemporaryDirectory(prefix="vx-ts-") as tmp:
        path = Path(tmp) / ONNX_FILE
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=cfg.opset,
                input_names=signature.input_names,
                output_names=signature.output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=cfg.constant_folding,
            )
        except Exception as exc:
            raise ModelIntakeError(f"TorchScript export of {src.name!r} failed: {exc}") from exc
        return onnx.load(str(path))


def _flat_outputs(module: Any) -> Any:
    """``module`` wrapped to return its flat tensors as a tuple (for dict or nested results)."""
    import torch

    from vxdeploy.components.common.signature import flatten_outputs

    class FlatOutputs(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> tuple[Any, ...]:
            return tuple(flatten_outputs(self.inner(*args)))

    return FlatOutputs(module)


def _prepare_onnx_source(
    src: Path, cfg: ExportConfig, inputs: Mapping[str, np.ndarray], batch_sizes: Sequence[int]
) -> tuple[Any, dict[str, np.ndarray] | None, str]:
    """Load an ONNX source; raise its opset to ``cfg.opset`` if lower, checking the conversion numerically."""
    import onnx
    from onnx import version_converter

    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise ModelIntakeError(f"model {src.name!r} is not a readable ONNX file: {exc}") from exc
    current = onnx_opset(model)
    if current >= cfg.opset:
        if current > cfg.opset:
            log.warning("ONNX source has opset %d, above export.opset=%d; kept as is", current, cfg.opset)
        return model, None, "none"
    reference = run_batches(OnnxRuntimeRunner("onnx_source", src), inputs, batch_sizes)
    try:
        converted = version_converter.convert_version(model, cfg.opset)
    except Exception as exc:
        raise ModelIntakeError(
            f"cannot convert {src.name!r} from opset {current} to export.opset={cfg.opset}: {exc}; "
            f"re-export the model at opset {cfg.opset} or set export.opset={current}"
        ) from exc
    return converted, reference, "onnx_source"


def onnx_opset(model: Any) -> int:
    """The default-domain opset of an ONNX model."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelIntakeError("the ONNX model imports no default-domain opset")


def _rename_dims(model: Any, signature: ModelSignature) -> None:
    """Name the graph's symbolic dims after the signature's symbols (exporters invent e.g. 's31')."""
    graph = model.graph
    by_name = {vi.name: vi for vi in graph.input}
    rename: dict[str, str] = {}
    for spec in signature.inputs:
        vi = by_name.get(spec.name)
        if vi is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        for axis, want in spec.dynamic_axes.items():
            if axis >= len(dims):
                continue
            d = dims[axis]
            if d.HasField("dim_value"):
                raise ModelIntakeError(
                    f"input {spec.name!r} axis {axis} is dynamic ({want!r}) in the signature but the "
                    f"exported graph fixed it to {d.dim_value}; export the model with that dim dynamic "
                    "(torch.export.Dim) or make it static in model.inputs"
                )
            if d.dim_param and d.dim_param != want:
                rename[d.dim_param] = want
            elif not d.dim_param:
                d.dim_param = want
    if not rename:
        return
    for vi in (*graph.input, *graph.output, *graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def check_onnx_model(model: Any) -> Any:
    """Run ``onnx.checker`` (full check) and strict shape inference; return the inferred model.

    Raises:
        ModelIntakeError: with the checker's message.
    """
    import onnx

    try:
        if model.ByteSize() < _EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model, full_check=True)
            return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        # Large models: the checker and inference must read from disk (protobuf's 2 GiB limit).
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ONNX_FILE
            onnx.save_model(model, str(path), save_as_external_data=True, location=f"{ONNX_FILE}.data")
            onnx.checker.check_model(str(path), full_check=True)
            onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True)
            return onnx.load(str(path))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelIntakeError(f"the ONNX model fails onnx.checker / shape inference: {exc}") from exc


def _check_names(model: Any, signature: ModelSignature) -> None:
    inits = {i.name for i in model.graph.initializer}
    got_in = [i.name for i in model.graph.input if i.name not in inits]
    got_out = [o.name for o in model.graph.output]
    if got_in != signature.input_names or got_out != signature.output_names:
        raise ModelIntakeError(
            f"the ONNX graph's inputs {got_in} / outputs {got_out} differ from the signature's "
            f"{signature.input_names} / {signature.output_names}; set model.output_names to match"
        )


def _check_finite(outputs: Mapping[str, np.ndarray], path: Path) -> None:
    for name, arr in outputs.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ModelIntakeError(f"{path.name}: output {name!r} is NaN or Inf on the evaluation inputs")


def save_onnx_atomic(model: Any, path: Path) -> None:
    """Write ``model`` to ``path`` via a temp name; weights go to a side file above ~1.8 GB."""
    import onnx

    tmp = path.with_name(path.name + ".part")
    if model.ByteSize() < _EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(tmp))
    else:
        onnx.save_model(model, str(tmp), save_as_external_data=True, location=f"{path.name}.data")
    tmp.replace(path)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
