"""Intake with only a model URI and data URIs: a TorchScript model's inputs come from the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.zoo import models
from vxdeploy.components.common.config import DataConfig, ModelConfig
from vxdeploy.components.common.errors import DataError
from vxdeploy.components.intake.intake import inputs_from_data, intake


def test_a_torchscript_model_without_model_inputs_takes_its_inputs_from_the_data(tmp_path: Path) -> None:
    # given the zoo's TorchScript two-head model and its data, and no model.inputs
    zoo = models.two_head(tmp_path, torchscript=True)
    model_cfg = ModelConfig(uri=str(zoo.model_path))
    data_cfg = DataConfig(calibration_uri=str(zoo.calibration_path), eval_uri=str(zoo.eval_path))

    # when intake reads it
    result = intake(model_cfg, data_cfg, tmp_path / "work")

    # then the inputs are the .npz arrays, in order, with a batch dim; the outputs come from a call
    assert [(t.name, t.dtype, t.shape) for t in result.signature.inputs] == [
        ("features", "float32", ("batch", 24)),
        ("context", "float32", ("batch", 24)),
    ]
    assert [t.name for t in result.signature.outputs] == ["class_logits", "score"]


def test_labels_are_not_inputs(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    arrays = {"x": np.zeros((4, 3), np.float32), "labels": np.zeros(4), "labels/y": np.zeros(4)}
    np.savez(path, **arrays)  # type: ignore[arg-type]

    assert [t.name for t in inputs_from_data(path)] == ["x"]


def test_data_with_no_input_array_says_to_set_model_inputs(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, labels=np.zeros(4))

    with pytest.raises(DataError, match="model.inputs"):
        inputs_from_data(path)
