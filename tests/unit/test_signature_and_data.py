from pathlib import Path

import numpy as np
import pytest
import torch

from vxdeploy.components.common.data import Dataset, load_dataset
from vxdeploy.components.common.errors import DataError
from vxdeploy.components.common.signature import (
    ModelSignature,
    TensorSpec,
    signature_from_exported_program,
    signature_from_onnx,
)

SIG = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 1, 8, 8)),),
    outputs=(TensorSpec("output", "float32", ("batch", 10)),),
)


class TwoInputs(torch.nn.Module):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = ids.float() * mask.float()
        return h.sum(1, keepdim=True), h


def test_exported_program_signature_names_dynamic_dims() -> None:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    args = (torch.ones(2, 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64))
    ep = torch.export.export(TwoInputs(), args, dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))

    sig = signature_from_exported_program(ep)

    assert sig.input_names == ["ids", "mask"]
    assert sig.inputs[0].dtype == "int64"
    assert sig.inputs[0].shape[0] == "batch" and isinstance(sig.inputs[0].shape[1], str)
    assert sig.output_names == ["output_0", "output_1"]


def test_onnx_signature_matches_the_exported_names(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        torch.nn.Linear(4, 3),
        (torch.ones(2, 4),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )

    sig = signature_from_onnx(path)

    assert sig.inputs == (TensorSpec("x", "float32", ("batch", 4)),)
    assert sig.outputs == (TensorSpec("y", "float32", ("batch", 3)),)


def test_signature_survives_json_with_floats_for_ints() -> None:
    data = SIG.to_dict()
    data["inputs"][0]["shape"] = ["batch", 1.0, 8.0, 8.0]  # what kfp.local metadata gives back

    assert ModelSignature.from_dict(data) == SIG


def _save(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_good_data_loads_with_labels(tmp_path: Path) -> None:
    path = _save(tmp_path, input=np.zeros((5, 1, 8, 8), np.float32), labels=np.arange(5))

    ds = load_dataset(path, SIG, what="data.eval_uri")

    assert len(ds) == 5 and ds.labels is not None


def test_wrong_input_name_names_the_expected_one(tmp_path: Path) -> None:
    path = _save(tmp_path, image=np.zeros((5, 1, 8, 8), np.float32))

    with pytest.raises(DataError, match=r"missing \['input'\].*unexpected \['image'\]"):
        load_dataset(path, SIG, what="data.eval_uri")


def test_wrong_static_dim_names_the_axis(tmp_path: Path) -> None:
    path = _save(tmp_path, input=np.zeros((5, 3, 8, 8), np.float32))

    with pytest.raises(DataError, match="axis 1 must be 1"):
        load_dataset(path, SIG, what="data.eval_uri")


def test_nan_is_reported_with_the_sample_index(tmp_path: Path) -> None:
    x = np.zeros((5, 1, 8, 8), np.float32)
    x[3, 0, 2, 2] = np.nan
    path = _save(tmp_path, input=x)

    with pytest.raises(DataError, match="NaN or Inf at sample 3"):
        load_dataset(path, SIG, what="data.calibration_uri")


def test_integer_data_for_a_float_input_is_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path, input=np.zeros((5, 1, 8, 8), np.int32))

    with pytest.raises(DataError, match="dtype int32.*float32"):
        load_dataset(path, SIG, what="data.eval_uri")


def test_too_few_samples_is_an_error(tmp_path: Path) -> None:
    path = _save(tmp_path, input=np.zeros((3, 1, 8, 8), np.float32))

    with pytest.raises(DataError, match="3 samples, at least 64"):
        load_dataset(path, SIG, what="data.calibration_uri", min_samples=64)


def test_dataset_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    ds = Dataset({"input": np.ones((2, 1, 8, 8), np.float32)}, np.array([1, 2]))
    ds.save(tmp_path / "x.npz")

    again = load_dataset(tmp_path / "x.npz", SIG, what="t")

    assert list(tmp_path.iterdir()) == [tmp_path / "x.npz"]
    assert again.labels is not None and again.labels.tolist() == [1, 2]


def test_a_program_exported_without_dynamic_shapes_is_referenced_at_its_fixed_batch(tmp_path: Path) -> None:
    from vxdeploy.components.package.serve_check import reference_outputs

    # Given a program exported from one example, without dynamic_shapes: its batch is fixed at 1
    model = torch.nn.Linear(10, 4).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 10),)), tmp_path / "fixed.pt2")
    signature = signature_from_exported_program(torch.export.load(tmp_path / "fixed.pt2"))
    inputs = {"input": np.random.default_rng(0).random((5, 10), dtype=np.float32)}

    # Then its fixed batch is known, and the serve check's reference calls it one sample at a time
    assert signature.fixed_batch == 1
    out = reference_outputs(tmp_path / "fixed.pt2", "torch_export", signature, inputs)
    with torch.inference_mode():
        expected = model(torch.from_numpy(inputs["input"])).numpy()
    np.testing.assert_allclose(out["output"], expected, rtol=1e-5, atol=1e-6)
