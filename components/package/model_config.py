"""Triton ``config.pbtxt`` built through Triton's own protobuf, from a model's signature.

Every config is a ``model_config_pb2.ModelConfig`` message written with ``text_format``, so
a field Triton does not know fails here, not in the serving container.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.errors import ConfigError, ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature, TensorSpec

CONFIG_FILE = "config.pbtxt"
WARMUP_DIR = "warmup"

_NUMPY_TO_TRITON: dict[str, int] = {
    "bool": mc.TYPE_BOOL,
    "uint8": mc.TYPE_UINT8,
    "uint16": mc.TYPE_UINT16,
    "uint32": mc.TYPE_UINT32,
    "uint64": mc.TYPE_UINT64,
    "int8": mc.TYPE_INT8,
    "int16": mc.TYPE_INT16,
    "int32": mc.TYPE_INT32,
    "int64": mc.TYPE_INT64,
    "float16": mc.TYPE_FP16,
    "float32": mc.TYPE_FP32,
    "float64": mc.TYPE_FP64,
    "bfloat16": mc.TYPE_BF16,
    "object": mc.TYPE_STRING,
    "bytes": mc.TYPE_STRING,
    "str": mc.TYPE_STRING,
}
_TRITON_TO_NUMPY: dict[int, str] = {
    mc.TYPE_BOOL: "bool",
    mc.TYPE_UINT8: "uint8",
    mc.TYPE_UINT16: "uint16",
    mc.TYPE_UINT32: "uint32",
    mc.TYPE_UINT64: "uint64",
    mc.TYPE_INT8: "int8",
    mc.TYPE_INT16: "int16",
    mc.TYPE_INT32: "int32",
    mc.TYPE_INT64: "int64",
    mc.TYPE_FP16: "float16",
    mc.TYPE_FP32: "float32",
    mc.TYPE_FP64: "float64",
    mc.TYPE_BF16: "bfloat16",
    mc.TYPE_STRING: "object",
}
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU", "KIND_MODEL")


def triton_dtype(numpy_dtype: str, *, tensor: str = "") -> int:
    """The ``TYPE_*`` enum value for a numpy dtype name (``float32`` -> ``TYPE_FP32``).

    Raises:
        ModelIntakeError: for a dtype Triton cannot serve, naming the tensor.
    """
    try:
        return _NUMPY_TO_TRITON[numpy_dtype]
    except KeyError:
        raise ModelIntakeError(
            f"tensor {tensor!r} has dtype {numpy_dtype!r}, which Triton cannot serve; "
            f"supported: {', '.join(sorted(_NUMPY_TO_TRITON))}"
        ) from None


def numpy_dtype(data_type: int) -> str:
    """The numpy dtype name for a ``TYPE_*`` value (``TYPE_STRING`` -> ``object``)."""
    return _TRITON_TO_NUMPY[data_type]


def triton_dims(spec: TensorSpec, *, batched: bool) -> list[int]:
    """The ``dims`` of a tensor: -1 for each dynamic dim, the batch dim dropped when Triton batches."""
    shape = spec.shape[1:] if batched else spec.shape
    return [d if isinstance(d, int) else -1 for d in shape]


def _dims_for_scalar_elements(tensor: mc.ModelInput | mc.ModelOutput) -> None:
    """Give a tensor whose elements are scalars (shape ``[batch]``) Triton's ``dims: [1]`` + ``reshape {}``.

    Triton refuses empty ``dims``; its documented form for a model taking or returning one scalar per
    sample is ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``: clients send and receive
    ``[batch, 1]``, the model sees ``[batch]``. :func:`to_wire` and :func:`from_wire` convert.
    """
    if not tensor.dims:
        tensor.dims.append(1)
        tensor.reshape.SetInParent()


def scalar_elements(tensor: mc.ModelInput | mc.ModelOutput) -> bool:
    """Whether clients carry this tensor with a trailing ``1`` the model does not see (``reshape {}``)."""
    return tensor.HasField("reshape") and not tensor.reshape.shape and list(tensor.dims) == [1]


def to_wire(array: np.ndarray, tensor: mc.ModelInput | mc.ModelOutput) -> np.ndarray:
    """``array`` (the model's shape) as a Triton client sends it for ``tensor``."""
    return array.reshape(*array.shape, 1) if scalar_elements(tensor) else array


def from_wire(array: np.ndarray, tensor: mc.ModelInput | mc.ModelOutput) -> np.ndarray:
    """A Triton answer for ``tensor`` in the model's own shape (the trailing ``1`` of scalars dropped)."""
    if scalar_elements(tensor) and array.shape[-1:] == (1,):
        return array.reshape(array.shape[:-1])
    return array


def check_batchable(signature: ModelSignature, max_batch_size: int) -> None:
    """Raise when Triton should batch a model whose tensors do not all start with the batch dim."""
    if max_batch_size == 0:
        return
    for t in (*signature.inputs, *signature.outputs):
        if not t.batched:
            raise ConfigError(
                "triton.max_batch_size",
                max_batch_size,
                f"tensor {t.name!r} has shape {list(t.shape)}, without the dynamic batch dim first, "
                "so Triton cannot batch this model; re-export it with a dynamic batch dim "
                "(torch.export.export(..., dynamic_shapes={<input>: {0: torch.export.Dim('batch')}})) "
                "or set triton.max_batch_size=0 to serve it unbatched",
            )


def preferred_batch_sizes(triton: TritonConfig, max_batch_size: int) -> list[int]:
    """The configured preferred batch sizes that fit ``max_batch_size``, ascending."""
    return sorted({b for b in triton.dynamic_batching.preferred_batch_sizes if b <= max_batch_size})


def build_model_config(
    name: str,
    signature: ModelSignature,
    triton: TritonConfig,
    *,
    platform: str = "",
    backend: str = "",
    instance_kind: str = "KIND_CPU",
    max_batch_size: int | None = None,
    parameters: Mapping[str, str] | None = None,
    warmup_files: Mapping[str, str] | None = None,
    optional_inputs: Sequence[str] = (),
    decoupled: bool = False,
) -> mc.ModelConfig:
    """A model's config from its signature and the Triton section.

    Args:
        name: Triton model name (the directory name in the repository).
        signature: The model's inputs and outputs; the only source of names, dtypes and dims.
        triton: Batching, instances, warm-up, version policy and response cache options.
        platform: e.g. ``onnxruntime_onnx`` or ``tensorrt_plan`` (exclusive with ``backend``).
        backend: e.g. ``python`` or ``vllm``.
        instance_kind: ``KIND_GPU``, ``KIND_CPU`` or ``KIND_MODEL`` (the backend places itself).
        max_batch_size: Overrides ``triton.max_batch_size`` (0 for models that batch themselves).
        parameters: String parameters the backend reads (``config["parameters"]`` in model.py).
        warmup_files: Input name to file name under ``<model>/warmup/``; None means no warm-up.
        optional_inputs: Inputs a request may omit.
        decoupled: Whether a request may get zero or several responses (vLLM streaming).

    Raises:
        ConfigError: when batching is asked for a model without a leading batch dim.
    """
    if bool(platform) == bool(backend):
        raise ValueError("give exactly one of platform and backend")
    if instance_kind not in INSTANCE_KINDS:
        raise ValueError(f"instance_kind {instance_kind!r} is not one of {INSTANCE_KINDS}")
    mbs = triton.max_batch_size if max_batch_size is None else max_batch_size
    check_batchable(signature, mbs)
    batched = mbs > 0
    config = mc.ModelConfig(name=name, max_batch_size=mbs)
    if platform:
        config.platform = platform
    else:
        config.backend = backend
    for spec in signature.inputs:
        _dims_for_scalar_elements(
            config.input.add(
                name=spec.name,
                data_type=triton_dtype(spec.dtype, tensor=spec.name),
                dims=triton_dims(spec, batched=batched),
                optional=spec.name in optional_inputs,
            )
        )
    for spec in signature.outputs:
        _dims_for_scalar_elements(
            config.output.add(
                name=spec.name,
                data_type=triton_dtype(spec.dtype, tensor=spec.name),
                dims=triton_dims(spec, batched=batched),
            )
        )
    if triton.version_policy == "all":
        config.version_policy.all.SetInParent()
    else:
        config.version_policy.latest.num_versions = 1
    count = 1 if instance_kind == "KIND_MODEL" else triton.instance_count
    config.instance_group.add(count=count, kind=mc.ModelInstanceGroup.Kind.Value(instance_kind))
    if batched and triton.dynamic_batching.enabled:
        config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(triton, mbs))
        config.dynamic_batching.max_queue_delay_microseconds = (
            triton.dynamic_batching.max_queue_delay_microseconds
        )
    if triton.response_cache and not decoupled:
        config.response_cache.enable = True
    if decoupled:
        config.model_transaction_policy.decoupled = True
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    if warmup_files is not None:
        _add_warmup(config, signature, warmup_files, triton)
    return config


def _add_warmup(
    config: mc.ModelConfig, signature: ModelSignature, files: Mapping[str, str], triton: TritonConfig
) -> None:
    batched = config.max_batch_size > 0
    sizes = [1]
    if batched:
        largest = preferred_batch_sizes(triton, config.max_batch_size)
        if largest and largest[-1] > 1:
            sizes.append(largest[-1])
    for size in sizes:
        sample = config.model_warmup.add(name=f"sample_batch_{size}", batch_size=size, count=1)
        for spec in signature.inputs:
            element = spec.concrete_shape(1)[1:] if batched else spec.concrete_shape(1)
            sample.inputs[spec.name].data_type = triton_dtype(spec.dtype, tensor=spec.name)
            sample.inputs[spec.name].dims.extend(
                element or (1,)
            )  # a scalar as [1]: _dims_for_scalar_elements
            sample.inputs[spec.name].input_data_file = files[spec.name]


def write_warmup_data(
    model_dir: Path, signature: ModelSignature, *, batched: bool, seed: int = 0
) -> dict[str, str]:
    """Write one generated sample per input under ``<model>/warmup/``, raw row-major bytes.

    Triton repeats the one element ``batch_size`` times for each warm-up request, so a
    single element is enough for every warm-up batch size.

    Returns:
        Input name to file name, for :func:`build_model_config`'s ``warmup_files``.
    """
    feeds = signature.sample_inputs(batch=1, seed=seed)
    warmup = model_dir / WARMUP_DIR
    warmup.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for i, spec in enumerate(signature.inputs):
        array = feeds[spec.name][0] if batched else feeds[spec.name]
        file_name = f"{i}_{_safe(spec.name)}.bin"
        (warmup / file_name).write_bytes(np.ascontiguousarray(array).tobytes())
        files[spec.name] = file_name
    return files


def warmable(signature: ModelSignature) -> bool:
    """Whether generated numeric samples make sense for every input (not for text)."""
    return all(_NUMPY_TO_TRITON.get(t.dtype) not in (None, mc.TYPE_STRING) for t in signature.inputs)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "input"


def config_text(config: mc.ModelConfig) -> str:
    """The ``config.pbtxt`` text of a config."""
    return str(text_format.MessageToString(config))


def write_model_config(config: mc.ModelConfig, model_dir: Path) -> Path:
    """Write ``<model_dir>/config.pbtxt`` (temp file, then rename)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(config_text(config))
    tmp.replace(path)
    return path


def parse_model_config(text: str) -> mc.ModelConfig:
    """Parse ``config.pbtxt`` text with Triton's proto (unknown fields fail)."""
    config = mc.ModelConfig()
    text_format.Parse(text, config)
    return config


def read_model_config(model_dir: Path) -> mc.ModelConfig:
    """Read and parse ``<model_dir>/config.pbtxt``."""
    return parse_model_config((model_dir / CONFIG_FILE).read_text())


def tensor_shape(tensor: mc.ModelInput | mc.ModelOutput, max_batch_size: int) -> tuple[int, ...]:
    """A config tensor's full shape, the batch dim (-1) first when the model batches."""
    dims = tuple(int(d) for d in tensor.dims)
    return (-1, *dims) if max_batch_size > 0 else dims
