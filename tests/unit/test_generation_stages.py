"""A generation model (``builtin://digits-vlm``) through the intake, export and calibration stages' ``run``.

The stages are chained on real KFP artifact objects as the pipeline chains them; the parts come from the
built-in cache (trained once per machine). A user's own VLM (parts named freely, ONNX files) goes through
intake and export too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model

from vxdeploy.components.calibrate import stage as calibrate_stage
from vxdeploy.components.common import builtin_vlm as vlm
from vxdeploy.components.common.artifacts import CalibratedModel, OnnxModel, SourceModel
from vxdeploy.components.common.config import RunConfig, load_config, parse_config
from vxdeploy.components.common.errors import ConfigError, DataError, ModelIntakeError
from vxdeploy.components.export import stage as export_stage
from vxdeploy.components.generation.calibrate import DECODER_REASON
from vxdeploy.components.generation.loop import exact_match, generate_batched, run_parts_onnx, run_parts_torch
from vxdeploy.components.generation.spec import GenerationSpec
from vxdeploy.components.intake import stage as intake_stage

CAPTION_FLOOR = 0.90  # measured 0.954 exact-caption match on the 500 held-out digits


def _intake(cfg: RunConfig, root: Path) -> dict[str, Any]:
    arts = {
        "source_model": Model(uri=str(root / "source_model")),
        "calibration_data": Dataset(uri=str(root / "calibration.npz")),
        "eval_data": Dataset(uri=str(root / "eval.npz")),
        "report": Artifact(uri=str(root / "intake.json")),
    }
    out = intake_stage.run(
        cfg.model.model_dump(),
        cfg.data.model_dump(),
        cfg.deployment.model_dump(),
        arts["source_model"],
        arts["calibration_data"],
        arts["eval_data"],
        arts["report"],
    )
    arts["outputs"] = out
    return arts


def _export(cfg: RunConfig, intake: dict[str, Any], root: Path) -> dict[str, Any]:
    arts = {
        "onnx_model": Model(uri=str(root / "onnx_model")),
        "metrics": Metrics(uri=str(root / "export_metrics")),
        "report": Artifact(uri=str(root / "export.json")),
    }
    export_stage.run(
        intake["source_model"],
        intake["eval_data"],
        cfg.model.model_dump(),
        cfg.export.model_dump(),
        arts["onnx_model"],
        arts["metrics"],
        arts["report"],
    )
    return arts


def _calibrate(cfg: RunConfig, intake: dict[str, Any], onnx_model: Model, root: Path) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    arts = {
        "qdq_model": Model(uri=str(root / "qdq_model")),
        "metrics": Metrics(uri=str(root / "calibrate_metrics")),
        "table": Markdown(uri=str(root / "table.md")),
        "report": Artifact(uri=str(root / "calibrate.json")),
    }
    calibrate_stage.run(
        onnx_model,
        intake["calibration_data"],
        intake["eval_data"],
        cfg.data.model_dump(),
        cfg.quantization.model_dump(),
        cfg.selection.model_dump(),
        arts["qdq_model"],
        arts["metrics"],
        arts["table"],
        arts["report"],
    )
    return arts


@pytest.fixture(scope="module")
def config() -> RunConfig:
    return load_config(overrides={"model.uri": "builtin://digits-vlm"})


@pytest.fixture(scope="module")
def chain(config: RunConfig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vlm-stages")
    intake = _intake(config, root)
    export = _export(config, intake, root)
    calibrate = _calibrate(config, intake, export["onnx_model"], root / "calibrate")
    return {"root": root, "intake": intake, "export": export, "calibrate": calibrate}


def _report(art: Artifact) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(art.path).read_text())
    return data


def test_intake_stores_each_part_and_the_whole_models_signature(chain: dict[str, Any]) -> None:
    intake = chain["intake"]
    meta = SourceModel.read(intake["source_model"])
    root = Path(intake["source_model"].path)

    assert intake["outputs"].proceed is True
    assert meta.file == "" and meta.format == "torch_export"
    assert sorted(meta.parts) == sorted(vlm.PARTS)
    for name, part in meta.parts.items():
        assert part["role"] == name and part["file"] == f"{name}/model.pt2"
        assert (root / part["file"]).is_file()
    step = meta.parts["decoder_step"]["signature"]
    assert [t["name"] for t in step["inputs"]] == vlm.INPUT_NAMES["decoder_step"]
    assert [t["name"] for t in step["outputs"]] == vlm.OUTPUT_NAMES["decoder_step"]
    whole = meta.model_signature()
    assert whole.input_names == ["images"] and whole.output_names == ["output_ids"]
    assert whole.outputs[0].shape == ("batch", vlm.MAX_NEW_TOKENS)
    assert GenerationSpec.from_metadata(meta) == vlm.generation_spec()


def test_intake_writes_the_builtin_digits_under_the_models_input_name(chain: dict[str, Any]) -> None:
    intake = chain["intake"]

    with np.load(intake["eval_data"].path) as npz:
        assert sorted(npz.files) == ["images", "labels"] and len(npz["labels"]) == 500
    with np.load(intake["calibration_data"].path) as npz:
        assert npz.files == ["images"]
    assert intake["eval_data"].metadata == {"samples": 500, "labelled": True}


def test_export_checks_each_part_on_real_activations(chain: dict[str, Any]) -> None:
    export = chain["export"]
    meta = OnnxModel.read(export["onnx_model"])
    details = _report(export["report"])["details"]

    assert (
        meta.task == "generation" and meta.file == "" and meta.generation == vlm.generation_spec().to_dict()
    )
    for name in vlm.PARTS:
        part = meta.parts[name]
        assert part["role"] == name and (Path(export["onnx_model"].path) / part["file"]).is_file()
        assert part["parity_reference"] == "pytorch" and part["parity_samples"] == 64
        assert part["parity"]["max_abs_diff"] < 1e-4, (name, part["parity"])
    # Real activations, not random ones: the step's cache inputs are the prefill's (17 cached positions).
    step_inputs = {t["name"]: t["shape"] for t in meta.parts["decoder_step"]["signature"]["inputs"]}
    assert set(step_inputs) == set(vlm.INPUT_NAMES["decoder_step"])
    assert details["parts"]["decoder_prefill"]["parity_outputs"][0]["name"] == "logits"


def test_export_generates_the_same_tokens_in_onnx_runtime_as_in_pytorch(chain: dict[str, Any]) -> None:
    export = chain["export"]
    e2e = _report(export["report"])["details"]["end_to_end"]

    assert e2e["samples"] == 500 and e2e["agreement"] == 1.0 and e2e["mismatches"] == []
    assert e2e["exact"] == e2e["reference_exact"] >= CAPTION_FLOOR
    assert export["metrics"].metadata["e2e_agreement"] == 1.0
    # The recorded figure is what the exported files really do.
    spec = vlm.generation_spec()
    root = Path(export["onnx_model"].path)
    with np.load(chain["intake"]["eval_data"].path) as npz:
        images, labels = npz["images"], npz["labels"]
    gen = run_parts_onnx({p: root / p / "model.onnx" for p in vlm.PARTS}, images, spec)
    assert exact_match(gen.texts, spec.references(labels)) == e2e["exact"]


def test_calibration_quantizes_the_vision_side_and_gates_end_to_end(
    chain: dict[str, Any], config: RunConfig
) -> None:
    cal = chain["calibrate"]
    meta = CalibratedModel.read(cal["qdq_model"])
    qdq_root = Path(cal["qdq_model"].path)

    assert meta.produced and meta.accepted and meta.file == ""
    encoder = meta.parts["vision_encoder"]
    assert encoder["produced"] and encoder["accepted"], encoder
    assert encoder["drop_points"] <= config.selection.accuracy_budget
    assert (qdq_root / encoder["file"]).is_file()
    import onnx

    ops = {n.op_type for n in onnx.load(str(qdq_root / encoder["file"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for name in ("decoder_prefill", "decoder_step"):
        assert meta.parts[name] == {
            "role": name,
            "produced": False,
            "accepted": False,
            "reason": DECODER_REASON,
            "fp32_exact": meta.fp32_accuracy,
            "calibration_samples": 0,
            "seconds": 0.0,
        }
    assert meta.fp32_accuracy is not None and meta.fp32_accuracy >= CAPTION_FLOOR
    assert meta.int8_accuracy is not None
    assert meta.accuracy_drop_points == pytest.approx(
        100 * (meta.fp32_accuracy - meta.int8_accuracy), abs=1e-3
    )


def test_the_gate_figure_is_what_the_accepted_int8_parts_generate(chain: dict[str, Any]) -> None:
    cal, export = chain["calibrate"], chain["export"]
    meta = CalibratedModel.read(cal["qdq_model"])
    spec = vlm.generation_spec()
    paths = {p: Path(export["onnx_model"].path) / p / "model.onnx" for p in vlm.PARTS}
    for name, part in meta.parts.items():
        if part["accepted"]:
            paths[name] = Path(cal["qdq_model"].path) / part["file"]
    with np.load(chain["intake"]["eval_data"].path) as npz:
        images, labels = npz["images"], npz["labels"]

    gen = generate_batched(lambda x: run_parts_onnx(paths, x, spec), images, spec)

    assert exact_match(gen.texts, spec.references(labels)) == pytest.approx(meta.int8_accuracy)


def test_calibration_table_has_a_row_per_part_and_the_end_to_end_row(chain: dict[str, Any]) -> None:
    table = Path(chain["calibrate"]["table"].path).read_text()
    report = _report(chain["calibrate"]["report"])

    for name in (*vlm.PARTS, "end to end"):
        assert f"| {name} |" in table
    assert report["summary"]["accepted_parts"][0] == "vision_encoder"
    assert report["details"]["end_to_end"]["samples"] == 500


def test_without_reference_captions_the_gate_is_agreement_with_fp32(
    chain: dict[str, Any], config: RunConfig, tmp_path: Path
) -> None:
    with np.load(chain["intake"]["eval_data"].path) as npz:
        np.savez(tmp_path / "eval.npz", images=npz["images"])  # no labels
    intake = {**chain["intake"], "eval_data": Dataset(uri=str(tmp_path / "eval.npz"))}
    strict = config.model_copy(
        update={
            "selection": config.selection.model_copy(update={"accuracy_budget": 0.0}),
            "quantization": config.quantization.model_copy(update={"gate_samples": 200, "method": "max"}),
        }
    )

    cal = _calibrate(strict, intake, chain["export"]["onnx_model"], tmp_path / "cal")
    meta = CalibratedModel.read(cal["qdq_model"])

    encoder = meta.parts["vision_encoder"]
    assert meta.fp32_accuracy is None and "int8_exact" not in encoder
    assert encoder["drop_points"] == pytest.approx(100 * (1 - encoder["agreement"]), abs=1e-3)
    assert encoder["accepted"] == (encoder["agreement"] == 1.0)
    if not encoder["accepted"]:
        assert "token sequences differing from FP32" in encoder["reason"] and "kept FP32" in encoder["reason"]


def test_calibration_off_writes_no_part(chain: dict[str, Any], config: RunConfig, tmp_path: Path) -> None:
    off = config.model_copy(
        update={"quantization": config.quantization.model_copy(update={"enabled": False})}
    )

    cal = _calibrate(off, chain["intake"], chain["export"]["onnx_model"], tmp_path)
    meta = CalibratedModel.read(cal["qdq_model"])

    assert not meta.produced and not meta.accepted
    assert all(not p["produced"] for p in meta.parts.values()) and sorted(meta.parts) == sorted(vlm.PARTS)


def test_a_users_own_vlm_as_onnx_parts_with_its_own_names(tmp_path: Path) -> None:
    files = vlm.write_digits_vlm(tmp_path / "mine")
    names = {
        "vision_encoder": "enc",
        "projector": "proj",
        "decoder_prefill": "prefill",
        "decoder_step": "step",
    }
    spec = vlm.generation_spec()
    cfg = parse_config(
        {
            "model": {
                "uri": str(tmp_path / "mine"),
                "name": "my-vlm",
                "task": "generation",
                "parts": [
                    {"name": names[r], "uri": str(files[r].with_suffix(".onnx")), "role": r}
                    for r in vlm.PARTS
                ],
                "generation": {k: v for k, v in spec.to_dict().items() if k != "parts"},
            }
        }
    )
    intake = _intake(cfg, tmp_path)
    meta = SourceModel.read(intake["source_model"])
    assert meta.format == "onnx" and meta.parts["step"]["file"] == "step/model.onnx"
    assert GenerationSpec.from_metadata(meta).parts == names

    export = _export(cfg, intake, tmp_path)

    onnx_meta = OnnxModel.read(export["onnx_model"])
    assert not onnx_meta.exported and sorted(onnx_meta.parts) == sorted(names.values())
    e2e = _report(export["report"])["details"]["end_to_end"]
    assert e2e["agreement"] == 1.0 and e2e["exact"] >= CAPTION_FLOOR


def test_eval_labels_without_a_caption_fail_at_intake(config: RunConfig, tmp_path: Path) -> None:
    with np.load(_eval_copy(tmp_path)) as npz:
        images = npz["images"]
    np.savez(tmp_path / "bad_eval.npz", images=images[:10], labels=np.array([12] * 10))
    cfg = load_config(
        overrides={"model.uri": "builtin://digits-vlm", "data.eval_uri": str(tmp_path / "bad_eval.npz")}
    )

    with pytest.raises(
        DataError, match=r"eval labels \[12\] have no caption in model.generation.label_captions"
    ):
        _intake(cfg, tmp_path / "run")


def _eval_copy(tmp_path: Path) -> Path:
    from vxdeploy.components.common import builtin

    return builtin.write_builtin("builtin://digits-eval", tmp_path, input_name="images")


def test_torch_and_onnx_runners_share_the_loop(chain: dict[str, Any]) -> None:
    spec = vlm.generation_spec()
    src = Path(chain["intake"]["source_model"].path)
    onnx_root = Path(chain["export"]["onnx_model"].path)
    with np.load(chain["intake"]["eval_data"].path) as npz:
        images = npz["images"][:16]

    torch_gen = run_parts_torch({p: src / p / "model.pt2" for p in vlm.PARTS}, images, spec)
    onnx_gen = run_parts_onnx({p: onnx_root / p / "model.onnx" for p in vlm.PARTS}, images, spec)

    assert (torch_gen.tokens == onnx_gen.tokens).all()


def test_validate_reads_every_part_of_a_generation_model(config: RunConfig) -> None:
    from vxdeploy.components.validate.checks import validate_run

    report = validate_run(config)

    assert report.ok, report.summary()
    checks = {c.name: c for c in report.checks}
    assert checks["model and data"].status == "passed"
    assert "generation model of 4 parts" in checks["model and data"].detail


def test_the_decoder_is_tried_on_request_and_gated_end_to_end(
    chain: dict[str, Any], config: RunConfig, tmp_path: Path
) -> None:
    quick = config.model_copy(
        update={
            "quantization": config.quantization.model_copy(
                update={"quantize_decoder": True, "method": "max", "gate_samples": 200}
            ),
            "data": config.data.model_copy(update={"max_calibration_samples": 64}),
        }
    )

    cal = _calibrate(quick, chain["intake"], chain["export"]["onnx_model"], tmp_path)
    meta = CalibratedModel.read(cal["qdq_model"])

    prefill, step = meta.parts["decoder_prefill"], meta.parts["decoder_step"]
    assert prefill["produced"] and step["produced"]
    assert (Path(cal["qdq_model"].path) / step["file"]).is_file()
    assert prefill["drop_points"] == step["drop_points"] and prefill["accepted"] == step["accepted"]
    assert prefill["accepted"] == (prefill["drop_points"] <= config.selection.accuracy_budget)
    assert "decoder_step" in prefill["reason"] and "points" in prefill["reason"]
    assert meta.accepted == bool([p for p in meta.parts.values() if p["accepted"]])


def _user_config(files: dict[str, Path], roles: dict[str, str], **generation: object) -> RunConfig:
    spec = vlm.generation_spec().to_dict()
    del spec["parts"]
    spec.update(generation)
    return parse_config(
        {
            "model": {
                "uri": "user-vlm",
                "task": "generation",
                "parts": [
                    {"name": p, "uri": str(files[p].with_suffix(".onnx")), "role": roles[p]}
                    for p in vlm.PARTS
                ],
                "generation": spec,
            }
        }
    )


def test_parts_given_the_wrong_roles_are_named_at_intake(tmp_path: Path) -> None:
    files = vlm.write_digits_vlm(tmp_path / "mine")
    swapped = {p: p for p in vlm.PARTS} | {
        "decoder_prefill": "decoder_step",
        "decoder_step": "decoder_prefill",
    }

    with pytest.raises(ModelIntakeError, match=r"part 'decoder_step' \(role decoder_prefill\) has inputs"):
        _intake(_user_config(files, swapped), tmp_path / "run")


def test_a_vocabulary_shorter_than_the_logits_is_named_at_intake(tmp_path: Path) -> None:
    files = vlm.write_digits_vlm(tmp_path / "mine")
    roles = {p: p for p in vlm.PARTS}

    with pytest.raises(ConfigError) as err:
        _intake(
            _user_config(files, roles, vocabulary=list(vlm.VOCAB[:10]), label_captions=[]), tmp_path / "run"
        )

    assert err.value.field == "model.generation.vocabulary"
    assert "logits pick among 14 token ids" in str(err.value)
