"""Reproductions of the defects real model shapes hit, one test each (issue 11), on zoo models.

Keyword inputs, dict and ``ModelOutput`` outputs, output names in ``config.pbtxt``, torch's auto
dim symbols (``s53``) as profile names, extra arrays in a data file, and accuracy on embeddings and
two-head models: each fails on the code before the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.zoo.models import ZooModel, bert_encoder, two_head
from vxdeploy.components.common.config import BuildProfile, ExportConfig, load_config
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.errors import ConfigError, DataError
from vxdeploy.components.common.signature import (
    load_exported_program,
    resolve_dim_profiles,
    signature_from_exported_program,
)
from vxdeploy.components.export.onnx_export import export_onnx
from vxdeploy.components.intake.intake import intake
from vxdeploy.components.package.model_config import build_model_config
from vxdeploy.components.select.runners import reference_runner
from vxdeploy.components.verify.runners import run_batches


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> ZooModel:
    return two_head(tmp_path_factory.mktemp("two_head"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> ZooModel:
    return bert_encoder(tmp_path_factory.mktemp("bert"))


def _intake(zoo: ZooModel, tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    config = load_config(overrides=zoo.config_overrides(**extra))
    return intake(config.model, config.data, tmp_path, given_dim_profiles=config.compilation.dim_profiles)


def test_program_exported_with_kwargs_exports_to_onnx_and_passes_parity(
    heads: ZooModel, tmp_path: Path
) -> None:
    # Before: "Ran into a kwarg keyword mismatch: Got the following keywords [] but expected [...]".
    result = _intake(heads, tmp_path / "in")

    exported = export_onnx(
        heads.model_path,
        "torch_export",
        result.signature,
        tmp_path / "model.onnx",
        ExportConfig(),
        result.evaluation.inputs,
    )

    assert result.signature.keyword_inputs == ("features", "context")
    assert exported.parity_reference == "pytorch" and exported.parity_summary()["max_abs_diff"] < 1e-4
    assert exported.signature.keyword_inputs == ("features", "context")


def test_dict_outputs_keep_their_names_through_the_reference_runner(heads: ZooModel, tmp_path: Path) -> None:
    # Before: "'dict' object has no attribute 'detach'" in the select runner.
    signature = _intake(heads, tmp_path).signature
    runner = reference_runner(heads.model_path, "torch_export", signature)
    data = dict(np.load(heads.eval_path))

    out = run_batches(runner, {k: data[k] for k in signature.input_names}, (8,))

    assert signature.output_names == ["class_logits", "score"]
    assert list(out) == ["class_logits", "score"] and out["score"].shape == (128, 1)


def test_model_output_names_come_from_the_out_spec(bert: ZooModel) -> None:
    signature = signature_from_exported_program(load_exported_program(bert.model_path))

    assert signature.output_names == ["last_hidden_state", "pooler_output"]
    assert signature.keyword_inputs == ("input_ids", "attention_mask")


def test_config_pbtxt_names_are_the_models_own(heads: ZooModel, tmp_path: Path) -> None:
    # Before: outputs were called 'output_0' / 'output_1' and clients asking for them by name broke.
    signature = _intake(heads, tmp_path).signature

    config = build_model_config("model", signature, load_config().triton, platform="onnxruntime_onnx")

    assert [o.name for o in config.output] == ["class_logits", "score"]
    assert [list(o.dims) for o in config.output] == [[4], [1]]


def test_sequence_dim_is_named_by_input_and_axis_and_is_minus_one_in_config(
    bert: ZooModel, tmp_path: Path
) -> None:
    # Before: the dim was torch's auto symbol (e.g. 's53'), which no user can know before a run.
    signature = _intake(bert, tmp_path).signature

    assert signature.input("input_ids").shape == ("batch", "input_ids.1")
    assert signature.dim_ranges == {"input_ids.1": (16, 16)}
    config = build_model_config("model", signature, load_config().triton, platform="onnxruntime_onnx")
    assert [list(i.dims) for i in config.input] == [[-1], [-1]]
    assert [list(o.dims) for o in config.output] == [[-1, 64], [64]]


def test_dim_profiles_default_from_the_data_and_accept_any_input_alias(
    bert: ZooModel, tmp_path: Path
) -> None:
    signature = _intake(bert, tmp_path).signature

    default = resolve_dim_profiles(signature, {})
    aliased = resolve_dim_profiles(signature, {"attention_mask.1": BuildProfile(min=8, opt=16, max=128)})

    assert default == {"input_ids.1": BuildProfile(min=16, opt=16, max=16)}
    assert aliased["input_ids.1"].max == 128


def test_torch_symbol_as_profile_name_is_refused_at_intake_with_the_valid_names(
    bert: ZooModel, tmp_path: Path
) -> None:
    with pytest.raises(
        ConfigError, match=r"compilation\.dim_profiles\.s53.*'attention_mask\.1', 'input_ids\.1'"
    ):
        _intake(bert, tmp_path, **{"compilation.dim_profiles": {"s53": {"min": 1, "opt": 64, "max": 128}}})


def test_a_profile_narrower_than_the_data_is_refused_at_intake(bert: ZooModel, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sizes 16..16 on this dim, outside min..max"):
        _intake(
            bert, tmp_path, **{"compilation.dim_profiles": {"input_ids.1": {"min": 1, "opt": 4, "max": 8}}}
        )


def test_target_arrays_for_each_output_are_kept_not_refused(heads: ZooModel, tmp_path: Path) -> None:
    # Before: "unexpected ['labels/class_logits', 'labels/score']".
    result = _intake(heads, tmp_path)

    assert sorted(result.evaluation.targets) == ["class_logits", "score"]
    assert [(o.task, o.metric) for o in result.signature.outputs] == [
        ("classification", "top1_accuracy"),
        ("regression", "rmse"),
    ]


def test_unrelated_extra_array_is_set_aside_and_a_target_for_no_output_is_refused(
    heads: ZooModel, tmp_path: Path
) -> None:
    signature = _intake(heads, tmp_path / "in").signature
    data = dict(np.load(heads.eval_path))
    np.savez(tmp_path / "extra.npz", **data, sample_ids=np.arange(128))
    np.savez(tmp_path / "bad.npz", **data, **{"labels/logits": np.zeros(128)})

    kept = load_dataset(tmp_path / "extra.npz", signature, what="data.eval_uri")

    assert sorted(kept.inputs) == ["context", "features"]
    with pytest.raises(
        DataError, match=r"'labels/logits' names output 'logits'.*\['class_logits', 'score'\]"
    ):
        load_dataset(tmp_path / "bad.npz", signature, what="data.eval_uri")


@pytest.mark.slow
def test_aoti_builds_and_checks_a_kwargs_program_with_dict_outputs(heads: ZooModel, tmp_path: Path) -> None:
    # Before: "'dict' object has no attribute 'float'" in the AOTI build check, after a positional call.
    from vxdeploy.components.compile.aoti import compile_aoti
    from vxdeploy.components.verify.runners import AotiRunner

    signature = _intake(heads, tmp_path / "in").signature

    options = compile_aoti(heads.model_path, tmp_path / "model.pt2", signature, freezing=False)
    data = dict(np.load(heads.eval_path))
    inputs = {k: data[k][:16] for k in signature.input_names}
    served = AotiRunner("aoti", tmp_path / "model.pt2", signature).run(inputs)

    assert options["check_max_abs_diff"] < 1e-3
    assert list(served) == ["class_logits", "score"]
    want = heads.reference(inputs)
    np.testing.assert_allclose(served["score"], want["score"], atol=1e-4)


def test_torchscript_model_returning_a_dict_exports_with_its_output_names(tmp_path: Path) -> None:
    # Before: "Exporting the operator 'prim::DictConstruct' to ONNX opset version 19 is not supported".
    zoo = two_head(tmp_path, torchscript=True)
    result = _intake(zoo, tmp_path / "in")

    exported = export_onnx(
        zoo.model_path,
        "torchscript",
        result.signature,
        tmp_path / "m.onnx",
        ExportConfig(),
        result.evaluation.inputs,
    )

    assert result.signature.output_names == ["class_logits", "score"]
    assert exported.signature.output_names == ["class_logits", "score"]
    assert exported.parity_summary()["max_abs_diff"] < 1e-4
