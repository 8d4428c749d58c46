import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vxdeploy.components.calibrate.backends import compute_ranges, modelopt_available, resolve_backend
from vxdeploy.components.calibrate.int8 import calibrate_int8
from vxdeploy.components.calibrate.samples import FewCalibrationSamplesWarning
from vxdeploy.components.common.config import DataConfig, ExportConfig, ModelConfig, QuantizationConfig
from vxdeploy.components.common.data import Dataset, load_dataset
from vxdeploy.components.common.errors import ConfigError, DataError
from vxdeploy.components.common.signature import ModelSignature, signature_from_onnx
from vxdeploy.components.export.onnx_export import export_onnx
from vxdeploy.components.intake.intake import read_signature
from vxdeploy.components.verify.runners import run_onnxruntime

FEW_OK = DataConfig(warn_calibration_samples=64)


@pytest.fixture(scope="module")
def digits(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The embedded digits CNN exported to ONNX, with its calibration and evaluation data."""
    pt2 = digits_dir / "digits_cnn.pt2"
    sig = read_signature(pt2, "torch_export", ModelConfig())
    evaluation = load_dataset(digits_dir / "digits_eval.npz", sig, what="eval")
    calibration = load_dataset(digits_dir / "digits_calibration.npz", sig, what="calibration")
    out = tmp_path_factory.mktemp("digits_fp32") / "model.onnx"
    result = export_onnx(pt2, "torch_export", sig, out, ExportConfig(), evaluation.inputs)
    return {"path": out, "sig": result.signature, "cal": calibration, "eval": evaluation}


def _hard_model(path: Path, batch: int | str = "batch") -> Path:
    """Three Gemm layers; input feature 0 is ~1000x the others but fc1 ignores it (weight 1e-4).

    Quantizing fc1's input per-tensor to 8 bits spends the whole range on feature 0 and rounds
    the informative features to zero: only keeping fc1 in FP32 rescues the model.
    """
    rng = np.random.default_rng(0)

    def weight(fan_in: int, fan_out: int) -> np.ndarray:
        return (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)

    w1, w2, w3 = weight(16, 32), weight(32, 32), weight(32, 4)
    w1[0, :] = 1e-4
    # Centre the logits so the four classes are about equally likely: a collapsed model that
    # always answers one class must then lose accuracy, not keep it by luck.
    x = _hard_data(512, seed=99)
    logits = np.maximum(np.maximum(x @ w1, 0) @ w2, 0) @ w3
    b3 = (-logits.mean(axis=0)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(w3, "w3"),
        numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
        numpy_helper.from_array(np.zeros(32, np.float32), "b2"),
        numpy_helper.from_array(b3, "b3"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3", "b3"], ["scores"], name="fc3"),
    ]
    graph = helper.make_graph(
        nodes,
        "hard",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _hard_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    x[:, 0] = rng.uniform(0, 1000, n)
    return x


@pytest.fixture()
def hard(tmp_path: Path) -> dict[str, object]:
    path = _hard_model(tmp_path / "hard.onnx")
    sig = signature_from_onnx(path)
    x_eval = _hard_data(256, seed=1)
    labels = run_onnxruntime(path, {"x": x_eval})["scores"].argmax(1)
    return {
        "path": path,
        "sig": sig,
        "cal": Dataset({"x": _hard_data(128, seed=0)}),
        "eval": Dataset({"x": x_eval}, labels),
    }


def _qdq_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("method", ["entropy", "max", "percentile"])
def test_each_method_writes_a_qdq_model_within_budget(digits: dict, tmp_path: Path, method: str) -> None:
    cfg = QuantizationConfig(method=method, num_bins=512)

    result = calibrate_int8(
        digits["path"], digits["sig"], digits["cal"], digits["eval"], tmp_path, cfg, DataConfig()
    )

    assert result.accepted and result.chosen.drop_points is not None and result.chosen.drop_points <= 0.5
    assert {"QuantizeLinear", "DequantizeLinear"} <= _qdq_ops(tmp_path / "model.onnx")
    ranges = json.loads((tmp_path / "calibration_ranges.json").read_text())
    assert ranges["method"] == method and len(ranges["tensors"]) >= 5


def test_digits_int8_accuracy_is_within_half_a_point_of_fp32_with_defaults(
    digits: dict, tmp_path: Path
) -> None:
    result = calibrate_int8(
        digits["path"],
        digits["sig"],
        digits["cal"],
        digits["eval"],
        tmp_path,
        QuantizationConfig(),
        DataConfig(),
    )

    m = result.chosen
    assert result.accepted and m.fp32_accuracy is not None and m.int8_accuracy is not None
    assert m.fp32_accuracy - m.int8_accuracy <= 0.5


def _ranges(digits: dict, tmp_path: Path, name: str, **kw: object) -> dict[str, tuple]:
    cfg = QuantizationConfig(**kw)  # type: ignore[arg-type]
    return compute_ranges(digits["path"], digits["cal"].inputs, cfg, tmp_path / f"{name}.json").ranges


def test_entropy_uses_the_bins_asked_for(digits: dict, tmp_path: Path) -> None:
    coarse = _ranges(digits, tmp_path, "coarse", method="entropy", num_bins=256)
    fine = _ranges(digits, tmp_path, "fine", method="entropy", num_bins=1024)

    assert coarse.keys() == fine.keys()
    assert any(coarse[k] != fine[k] for k in coarse)


def test_entropy_ranges_are_not_minmax_ranges(digits: dict, tmp_path: Path) -> None:
    entropy = _ranges(digits, tmp_path, "entropy", method="entropy", num_bins=1024)
    minmax = _ranges(digits, tmp_path, "max", method="max")

    clipped = [k for k in minmax if k in entropy and entropy[k][1][0] < minmax[k][1][0] - 1e-6]
    assert clipped, "entropy calibration clipped no tensor: it silently fell back to min/max"


def test_sensitive_layer_is_kept_in_fp32_until_the_budget_holds(hard: dict, tmp_path: Path) -> None:
    cfg = QuantizationConfig(method="max")

    result = calibrate_int8(
        hard["path"], hard["sig"], hard["cal"], hard["eval"], tmp_path, cfg, FEW_OK, accuracy_budget=2.0
    )

    assert not result.steps[0].within_budget
    assert result.accepted and result.excluded_layers[0] == "fc1"
    assert len(result.excluded_layers) <= 2  # fc2 and fc3 alone recover nothing: either may follow
    table = (tmp_path / "accuracy.md").read_text()
    assert "| 1 | fc1 |" in table


def test_budget_that_cannot_be_met_marks_int8_not_accepted(hard: dict, tmp_path: Path) -> None:
    cfg = QuantizationConfig(method="max", max_excluded_layers=0)

    result = calibrate_int8(hard["path"], hard["sig"], hard["cal"], hard["eval"], tmp_path, cfg, FEW_OK)

    assert not result.accepted and "max_excluded_layers=0" in result.reason
    assert (tmp_path / "model.onnx").is_file()
    assert json.loads((tmp_path / "accuracy.json").read_text())["accepted"] is False


def test_cosine_collapse_is_caught_even_without_class_scores(hard: dict, tmp_path: Path) -> None:
    cfg = QuantizationConfig(method="max", max_excluded_layers=0)

    result = calibrate_int8(
        hard["path"], hard["sig"], hard["cal"], hard["eval"], tmp_path, cfg, FEW_OK, task="embedding"
    )

    assert result.chosen.drop_points is None
    assert not result.accepted and "min cosine" in result.reason


def test_wrong_input_name_is_rejected(hard: dict, tmp_path: Path) -> None:
    bad = Dataset({"pixels": _hard_data(128, 0)})

    with pytest.raises(DataError, match=r"data.calibration_uri.*missing \['x'\]"):
        calibrate_int8(hard["path"], hard["sig"], bad, hard["eval"], tmp_path, QuantizationConfig(), FEW_OK)


def test_wrong_shape_is_rejected(hard: dict, tmp_path: Path) -> None:
    bad = Dataset({"x": np.zeros((128, 15), np.float32)})

    with pytest.raises(DataError, match="axis 1 must be 16"):
        calibrate_int8(hard["path"], hard["sig"], bad, hard["eval"], tmp_path, QuantizationConfig(), FEW_OK)


def test_nan_is_rejected_naming_input_and_sample(hard: dict, tmp_path: Path) -> None:
    x = _hard_data(128, 0)
    x[7, 3] = np.nan

    with pytest.raises(DataError, match="input 'x' has NaN or Inf at sample 7"):
        calibrate_int8(
            hard["path"], hard["sig"], Dataset({"x": x}), hard["eval"], tmp_path, QuantizationConfig(), FEW_OK
        )


def test_too_few_samples_is_an_error_not_random_scales(hard: dict, tmp_path: Path) -> None:
    few = Dataset({"x": _hard_data(63, 0)})

    with pytest.raises(DataError, match="63 calibration samples, at least data.min_calibration_samples=64"):
        calibrate_int8(
            hard["path"], hard["sig"], few, hard["eval"], tmp_path, QuantizationConfig(), DataConfig()
        )


def test_fewer_than_the_warning_count_warns(hard: dict, tmp_path: Path) -> None:
    cfg = QuantizationConfig(method="max", max_excluded_layers=0)

    with pytest.warns(FewCalibrationSamplesWarning, match="only 128 calibration samples"):
        calibrate_int8(hard["path"], hard["sig"], hard["cal"], hard["eval"], tmp_path, cfg, DataConfig())


def test_calibration_is_capped_at_max_samples(hard: dict, tmp_path: Path) -> None:
    data = DataConfig(warn_calibration_samples=64, max_calibration_samples=100)
    cfg = QuantizationConfig(method="max", max_excluded_layers=0)

    result = calibrate_int8(hard["path"], hard["sig"], hard["cal"], hard["eval"], tmp_path, cfg, data)

    assert result.calibration_samples == 100


@pytest.mark.skipif(modelopt_available(), reason="nvidia-modelopt is installed here")
def test_modelopt_backend_without_modelopt_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="quantization.backend"):
        resolve_backend(QuantizationConfig(backend="modelopt"))


def test_auto_backend_falls_back_to_onnxruntime_for_percentile() -> None:
    assert resolve_backend(QuantizationConfig(backend="auto", method="percentile")) == "onnxruntime"


def test_modelopt_backend_quantizes_digits_within_budget(digits: dict, tmp_path: Path) -> None:
    pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt[onnx] is not installed")
    cfg = QuantizationConfig(backend="modelopt", method="max")

    result = calibrate_int8(
        digits["path"], digits["sig"], digits["cal"], digits["eval"], tmp_path, cfg, DataConfig()
    )

    assert result.backend == "modelopt" and result.accepted
    assert {"QuantizeLinear", "DequantizeLinear"} <= _qdq_ops(tmp_path / "model.onnx")


def test_signature_mismatch_between_model_and_data_is_named(digits: dict, tmp_path: Path) -> None:
    other = ModelSignature.from_dict(
        {"inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 9]}], "outputs": []}
    )

    with pytest.raises(DataError, match="axis 3 must be 9"):
        calibrate_int8(
            digits["path"], other, digits["cal"], digits["eval"], tmp_path, QuantizationConfig(), FEW_OK
        )


def test_ranges_read_back_from_the_qdq_model_cover_the_calibrated_ranges(hard: dict, tmp_path: Path) -> None:
    from vxdeploy.components.calibrate.backends import qdq_activation_ranges

    cfg = QuantizationConfig(method="max", max_excluded_layers=0)
    calibrate_int8(hard["path"], hard["sig"], hard["cal"], hard["eval"], tmp_path, cfg, FEW_OK)

    implied = qdq_activation_ranges(tmp_path / "model.onnx")
    calibrated = json.loads((tmp_path / "calibration_ranges.json").read_text())["tensors"]
    assert implied["x"][1][0] == pytest.approx(calibrated["x"]["max"][0], rel=0.01)


def test_sample_limits_that_cannot_be_met_are_a_config_error() -> None:
    from vxdeploy.components.common.config import parse_section

    with pytest.raises(ConfigError, match="max_calibration_samples 10 < min_calibration_samples 64"):
        parse_section(DataConfig, {"max_calibration_samples": 10}, "data")


def test_entropy_with_too_few_bins_to_search_is_a_config_error() -> None:
    from vxdeploy.components.common.config import parse_section

    with pytest.raises(ConfigError, match="leaves entropy calibration no choice"):
        parse_section(QuantizationConfig, {"method": "entropy", "num_bins": 128}, "quantization")


def test_fixed_batch_model_is_calibrated_and_gated_in_batches_of_its_size(tmp_path: Path) -> None:
    path = _hard_model(tmp_path / "fixed.onnx", batch=16)
    sig = signature_from_onnx(path)
    x_eval = _hard_data(100, seed=1)
    cfg = QuantizationConfig(method="max", max_excluded_layers=0)

    result = calibrate_int8(
        path,
        sig,
        Dataset({"x": _hard_data(130, seed=0)}),
        Dataset({"x": x_eval}),
        tmp_path / "q",
        cfg,
        FEW_OK,
    )

    assert (result.calibration_samples, result.eval_samples) == (128, 96)


def test_hard_model_classes_are_balanced(hard: dict) -> None:
    counts = np.bincount(hard["eval"].labels, minlength=4)

    assert counts.max() < 0.6 * counts.sum()
