"""Model and data intake: everything a run needs, checked before any heavy work."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from components.common import builtin, registry
from components.common.config import DataConfig, ModelConfig, TensorOverride
from components.common.data import Dataset, load_dataset
from components.common.errors import ModelIntakeError, UserError
from components.common.signature import (
    BATCH_DIM,
    ModelSignature,
    TensorSpec,
    signature_from_exported_program,
    signature_from_onnx,
)
from components.common.uris import copy_atomic, localize

MODEL_FORMATS = ("torch_export", "torchscript", "onnx")


@dataclass(frozen=True)
class IntakeResult:
    """The model as a local file with its format and signature, and the checked data."""

    model_path: Path
    model_format: str
    signature: ModelSignature
    sha256: str
    calibration: Dataset
    evaluation: Dataset


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detect_format(path: Path, declared: str) -> str:
    """The model file's format: the declared one, or sniffed from its contents."""
    if declared != "auto":
        return declared
    head = path.read_bytes()[:4] if path.is_file() else b""
    if path.suffix == ".onnx":
        return "onnx"
    if head.startswith(b"PK"):  # zip: torch.export .pt2 or TorchScript archive
        import zipfile

        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any("/data/" in n and n.endswith(".pkl") or n.endswith("constants.pkl") for n in names) and any(
            "code/" in n for n in names
        ):
            return "torchscript"
        return "torch_export"
    raise ModelIntakeError(
        f"model.uri={str(path)!r}: cannot tell the format (suffix {path.suffix!r}); "
        f"set model.format to one of {', '.join(MODEL_FORMATS)}"
    )


def read_signature(path: Path, fmt: str, cfg: ModelConfig) -> ModelSignature:
    """Read the signature from the model file (or, for TorchScript, from ``model.inputs``)."""
    if fmt == "onnx":
        sig = signature_from_onnx(path)
    elif fmt == "torch_export":
        import torch

        try:
            ep = torch.export.load(str(path))
        except Exception as exc:
            raise ModelIntakeError(
                f"model.uri={str(path)!r} is not a loadable torch.export program ({exc}); "
                "save it with torch.export.save(torch.export.export(model, args), 'model.pt2')"
            ) from exc
        sig = signature_from_exported_program(ep, cfg.output_names)
    elif fmt == "torchscript":
        if not cfg.inputs:
            raise ModelIntakeError(
                "model.inputs: a TorchScript model carries no input shapes; list each input's name, "
                "dtype and shape (e.g. [{name: x, dtype: float32, shape: [batch, 3, 224, 224]}])"
            )
        sig = _torchscript_signature(path, cfg.inputs, cfg.output_names)
    else:
        raise ModelIntakeError(f"model.format={fmt!r}: use one of {', '.join(MODEL_FORMATS)}")
    if cfg.inputs and fmt != "torchscript":
        _check_overrides(sig, cfg.inputs)
    if not sig.inputs:
        raise ModelIntakeError(f"model.uri={str(path)!r}: the model has no tensor inputs")
    return sig


def _torchscript_signature(
    path: Path, inputs: list[TensorOverride], output_names: list[str] | None
) -> ModelSignature:
    import numpy as np
    import torch

    specs = tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in inputs)
    module = torch.jit.load(str(path), map_location="cpu")
    probe = ModelSignature(specs, ()).sample_inputs(batch=2)
    with torch.no_grad():
        out = module(*[torch.from_numpy(probe[s.name]) for s in specs])
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    names = output_names or (["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))])
    out_specs = tuple(
        TensorSpec(n, str(np.asarray(o.detach()).dtype), (BATCH_DIM, *tuple(int(d) for d in o.shape[1:])))
        for n, o in zip(names, outs, strict=True)
    )
    return ModelSignature(specs, out_specs)


def _check_overrides(sig: ModelSignature, inputs: list[TensorOverride]) -> None:
    names = {t.name for t in inputs}
    if names != set(sig.input_names):
        raise ModelIntakeError(
            f"model.inputs names {sorted(names)} do not match the model's inputs {sig.input_names}"
        )


def resolve(uri: str, dest_dir: Path, *, what: str, api_endpoint: str | None = None) -> Path:
    """A local file for ``uri``: builtin, Model Registry version (``projects/...``), ``gs://`` or path.

    ``api_endpoint`` overrides the Vertex AI endpoint a registry version is read from.
    """
    if builtin.is_builtin(uri):
        return builtin.write_builtin(uri, dest_dir)
    if registry.is_registry_uri(uri):
        return registry.resolve_registry_model(uri, dest_dir, api_endpoint=api_endpoint)
    return localize(uri, dest_dir, what=what)


def intake(
    model_cfg: ModelConfig, data_cfg: DataConfig, workdir: str | Path, *, api_endpoint: str | None = None
) -> IntakeResult:
    """Resolve, read and check the model and both datasets.

    Raises:
        UserError: when the model cannot be read or the data does not fit it.
    """
    work = Path(workdir)
    model_path = resolve(model_cfg.uri, work / "model", what="model.uri", api_endpoint=api_endpoint)
    fmt = detect_format(model_path, model_cfg.format)
    sig = read_signature(model_path, fmt, model_cfg)
    calib_path = resolve(data_cfg.calibration_uri, work / "data", what="data.calibration_uri")
    eval_path = resolve(data_cfg.eval_uri, work / "data", what="data.eval_uri")
    calibration = load_dataset(
        calib_path, sig, what="data.calibration_uri", labels_key=data_cfg.labels_key, min_samples=1
    )
    evaluation = load_dataset(
        eval_path, sig, what="data.eval_uri", labels_key=data_cfg.labels_key, min_samples=1
    )
    if calib_path.resolve() == eval_path.resolve():
        raise UserError("data.calibration_uri and data.eval_uri are the same file; evaluate on held-out data")
    return IntakeResult(
        model_path=model_path,
        model_format=fmt,
        signature=sig,
        sha256=sha256_file(model_path),
        calibration=calibration,
        evaluation=evaluation,
    )


def store_model(result: IntakeResult, dest: str | Path) -> Path:
    """Copy the model file into an artifact directory, keeping its suffix."""
    suffix = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".pt"}[result.model_format]
    return copy_atomic(result.model_path, Path(dest) / f"model{suffix}")
