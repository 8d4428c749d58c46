from pathlib import Path

import numpy as np
import pytest

from vxdeploy.components.common.config import DataConfig, ModelConfig
from vxdeploy.components.common.errors import DataError, ModelIntakeError, UserError
from vxdeploy.components.intake.intake import intake


def test_builtin_digits_intake_reads_signature_and_data(tmp_path: Path) -> None:
    result = intake(ModelConfig(), DataConfig(), tmp_path)

    assert result.model_format == "torch_export"
    assert result.signature.input_names == ["input"]
    assert result.signature.inputs[0].shape == ("batch", 1, 8, 8)
    assert len(result.calibration) == 512 and len(result.evaluation) == 500
    assert result.evaluation.labels is not None


def test_wrong_data_fails_at_intake_naming_the_field(digits_copy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((100, 1, 8, 8), np.float32))
    cfg = DataConfig(calibration_uri=str(bad), eval_uri=str(digits_copy / "digits_eval.npz"))

    with pytest.raises(DataError, match="data.calibration_uri"):
        intake(ModelConfig(uri=str(digits_copy / "digits_cnn.pt2")), cfg, tmp_path / "w")


def test_missing_model_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model.uri"):
        intake(ModelConfig(uri=str(tmp_path / "nope.pt2")), DataConfig(), tmp_path / "w")


def test_garbage_model_file_says_how_to_save_one(tmp_path: Path) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a model")

    with pytest.raises(ModelIntakeError, match="not a readable ONNX file"):
        intake(ModelConfig(uri=str(junk)), DataConfig(), tmp_path / "w")


def test_torchscript_without_inputs_asks_for_them(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "m.pt"
    torch.jit.script(torch.nn.Linear(4, 2)).save(str(path))

    with pytest.raises(ModelIntakeError, match="model.inputs"):
        intake(ModelConfig(uri=str(path)), DataConfig(), tmp_path / "w")


def test_same_file_for_calibration_and_eval_is_refused(digits_copy: Path, tmp_path: Path) -> None:
    same = str(digits_copy / "digits_eval.npz")

    with pytest.raises(UserError, match="held-out"):
        intake(ModelConfig(), DataConfig(calibration_uri=same, eval_uri=same), tmp_path / "w")
