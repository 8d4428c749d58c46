"""Model and data intake: everything a run needs, checked before any heavy work."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vxdeploy.components.common import builtin, registry
from vxdeploy.components.common.config import BuildProfile, DataConfig, ModelConfig, TensorOverride
from vxdeploy.components.common.data import Dataset, load_dataset
from vxdeploy.components.common.errors import ConfigError, ModelIntakeError, UserError
from vxdeploy.components.common.signature import (
    BATCH_DIM,
    ModelSignature,
    TensorSpec,
    flatten_outputs,
    load_exported_program,
    output_names_of,
    resolve_dim_profiles,
    signature_from_exported_program,
    signature_from_onnx,
)
from vxdeploy.components.common.uris import copy_atomic, localize
from vxdeploy.components.verify.accuracy import resolve_output_metrics

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
    if path.is_dir():
        raise ModelIntakeError(f"model.uri={str(path)!r} is a directory, not a model file; {_MODEL_HINT}")
    head = path.read_bytes()[:512]
    if not head:
        raise ModelIntakeError(f"model.uri={str(path)!r} is an empty file; {_MODEL_HINT}")
    if path.suffix == ".onnx":
        return "onnx"
    if head.startswith(b"\x93NUMPY"):
        raise ModelIntakeError(f"model.uri={str(path)!r} is a NumPy array (.npy), not a model; {_MODEL_HINT}")
    if head.startswith(b"PK"):  # zip: torch.export .pt2 or TorchScript archive
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise ModelIntakeError(
                f"model.uri={str(path)!r} is a truncated or damaged zip archive ({exc}); a .pt2 or "
                "TorchScript file is a zip: copy it again or save it again with torch.export.save"
            ) from None
        if any("/data/" in n and n.endswith(".pkl") or n.endswith("constants.pkl") for n in names) and any(
            "code/" in n for n in names
        ):
            return "torchscript"
        return "torch_export"
    if path.suffix in (".pt2", ".pt", ".pth", ".zip"):
        raise ModelIntakeError(
            f"model.uri={str(path)!r} is not a zip archive, which every .pt2 and TorchScript file is "
            f"(truncated, or not a PyTorch file); {_MODEL_HINT}"
        )
    if _looks_like_text(head):
        raise ModelIntakeError(f"model.uri={str(path)!r} is a text file, not a model; {_MODEL_HINT}")
    raise ModelIntakeError(
        f"model.uri={str(path)!r}: cannot tell the format of this binary file (suffix {path.suffix!r}); "
        f"set model.format to one of {', '.join(MODEL_FORMATS)}, or {_MODEL_HINT}"
    )


_MODEL_HINT = "give a .pt2 file (torch.export.save), a TorchScript .pt (torch.jit.save) or an .onnx file"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


@contextmanager
def _torch_export_log() -> Iterator[list[str]]:
    """Hold back torch.export's logged traceback of a failed load; collect its messages instead."""
    import logging

    records: list[str] = []

    def collect(record: logging.LogRecord) -> bool:
        records.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            records.append(str(record.exc_info[1]))
        return False  # torch configures its handlers lazily: a filter holds the record back from all

    logger = logging.getLogger("torch.export")
    logger.addFilter(collect)
    try:
        yield records
    finally:
        logger.removeFilter(collect)


def _last_error_line(lines: list[str]) -> str:
    text = [line.strip() for record in lines for line in record.splitlines() if line.strip()]
    return text[-1] if text else ""


def inputs_from_data(path: Path, labels_key: str = "labels") -> list[TensorOverride]:
    """The inputs an .npz implies, in its arrays' order: each array's dtype, a batch dim, its other dims.

    The arrays named ``labels_key`` (or ``labels_key/<output>``) are targets, not inputs.

    Raises:
        DataError: the file is not an .npz or holds no input array.
    """
    import numpy as np

    from vxdeploy.components.common.errors import DataError

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: (str(npz[k].dtype), npz[k].shape) for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"data.calibration_uri={str(path)!r}: not an .npz file ({exc})") from None
    inputs = [
        TensorOverride(name=k, dtype=dtype, shape=["batch", *(int(d) for d in shape[1:])])
        for k, (dtype, shape) in arrays.items()
        if k != labels_key and not k.startswith(f"{labels_key}/") and len(shape) >= 1
    ]
    if not inputs:
        raise DataError(
            f"data.calibration_uri={str(path)!r}: no input arrays, so the TorchScript model's inputs are "
            "unknown; save one array per model input, or set model.inputs"
        )
    return inputs


def read_signature(path: Path, fmt: str, cfg: ModelConfig) -> ModelSignature:
    """Read the signature from the model file (or, for TorchScript, from ``model.inputs``)."""
    if fmt == "onnx":
        try:
            sig = signature_from_onnx(path)
        except ModelIntakeError as exc:
            raise ModelIntakeError(f"model.uri: {exc}") from exc
    elif fmt == "torch_export":
        try:
            with _torch_export_log() as logged:
                ep = load_exported_program(path)
        except ModelIntakeError as exc:
            cause = _last_error_line(logged)
            said = str(exc).replace(" Please check the warnings above for possible errors.", "")
            raise ModelIntakeError(f"model.uri: {said}" + (f" (torch: {cause})" if cause else "")) from exc
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
    try:
        with torch.no_grad():
            out = module(*[torch.from_numpy(probe[s.name]) for s in specs])
    except Exception as exc:  # the model's own error, whatever its type: the inputs do not fit it
        given = ", ".join(f"{s.name}: {s.dtype} {list(s.shape)}" for s in specs)
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ModelIntakeError(
            f"model.inputs: the TorchScript model cannot be called with {given} ({cause}); list each "
            "input's name, dtype and shape as the model takes them (when model.inputs is unset they "
            "are read from the calibration data's arrays, e.g. [{name: x, dtype: float32, "
            "shape: [batch, 3, 224, 224]}])"
        ) from exc
    outs = flatten_outputs(out)
    names = output_names or output_names_of(out)
    if len(names) != len(outs):
        raise ModelIntakeError(
            f"model.output_names has {len(names)} names {list(names)} but the model returns "
            f"{len(outs)} tensors; give one name per output or leave model.output_names unset"
        )
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

    Raises:
        UserError: an empty URI, a missing file, or a cloud source without credentials.
    """
    if not uri.strip():
        raise ConfigError(
            what, uri, "is empty; give a local path, a gs:// URI or a Model Registry version (projects/...)"
        )
    if builtin.is_builtin(uri):
        return builtin.write_builtin(uri, dest_dir)
    from google.auth.exceptions import DefaultCredentialsError

    try:
        if registry.is_registry_uri(uri):
            return registry.resolve_registry_model(uri, dest_dir, api_endpoint=api_endpoint)
        return localize(uri, dest_dir, what=what)
    except DefaultCredentialsError:
        raise UserError(
            f"{what}={uri!r}: no Google Cloud credentials to read it; run `gcloud auth application-default "
            "login` (or set GOOGLE_APPLICATION_CREDENTIALS), or give a local file"
        ) from None


def observed_dim_ranges(signature: ModelSignature, *datasets: Dataset) -> dict[str, tuple[int, int]]:
    """Per dynamic dim (besides the batch), the smallest and largest size the data gives it."""
    ranges: dict[str, tuple[int, int]] = {}
    for dim, places in signature.dynamic_dims().items():
        sizes = [int(ds.inputs[name].shape[axis]) for ds in datasets for name, axis in places]
        if sizes:
            ranges[dim] = (min(sizes), max(sizes))
    return ranges


def intake(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    workdir: str | Path,
    *,
    api_endpoint: str | None = None,
    given_dim_profiles: dict[str, BuildProfile] | None = None,
) -> IntakeResult:
    """Resolve, read and check the model and both datasets.

    The signature that comes back carries each output's task and metric (``model.task`` and
    ``model.metrics``) and the range of each dynamic dim the data shows.

    Raises:
        UserError: when the model cannot be read, the data does not fit it, ``model.metrics``
            names no output, or ``given_dim_profiles`` (``compilation.dim_profiles``) name dims the
            model does not have or do not cover the data.
    """
    work = Path(workdir)
    model_path = resolve(model_cfg.uri, work / "model", what="model.uri", api_endpoint=api_endpoint)
    fmt = detect_format(model_path, model_cfg.format)
    calib_path = resolve(data_cfg.calibration_uri, work / "data", what="data.calibration_uri")
    eval_path = resolve(data_cfg.eval_uri, work / "data", what="data.eval_uri")
    if fmt == "torchscript" and not model_cfg.inputs:
        # A TorchScript file carries no input shapes: the calibration data's arrays give them.
        model_cfg = model_cfg.model_copy(update={"inputs": inputs_from_data(calib_path, data_cfg.labels_key)})
    sig = read_signature(model_path, fmt, model_cfg)
    calibration = load_dataset(
        calib_path, sig, what="data.calibration_uri", labels_key=data_cfg.labels_key, min_samples=1
    )
    evaluation = load_dataset(
        eval_path, sig, what="data.eval_uri", labels_key=data_cfg.labels_key, min_samples=1
    )
    if calib_path.resolve() == eval_path.resolve():
        raise UserError("data.calibration_uri and data.eval_uri are the same file; evaluate on held-out data")
    sig = resolve_output_metrics(
        sig,
        model_cfg.task,
        {name: m.model_dump() for name, m in model_cfg.metrics.items()},
        sorted(evaluation.targets),
        labels=evaluation.labels is not None,
    )
    observed = observed_dim_ranges(sig, calibration, evaluation)
    resolve_dim_profiles(sig, dict(given_dim_profiles or {}), observed)
    sig = sig.with_dim_ranges(observed)
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
