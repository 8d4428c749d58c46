"""The select stage for a generation model: per-part measurement and choice, the combination end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from generation_fixtures import Metrics, artifact, write_vlm_artifacts

from vxdeploy.components.common.artifacts import SelectedModel
from vxdeploy.components.common.config import SelectionConfig
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.compile import stage as compile_stage
from vxdeploy.components.compile.candidates import sha256_file
from vxdeploy.components.generation import select as generation_select
from vxdeploy.components.generation.loop import exact_match, run_parts_onnx
from vxdeploy.components.generation.select import (
    FP32,
    EndToEndAccuracy,
    GenerationSelection,
    check_combination,
    select_parts,
)
from vxdeploy.components.report.build import build_report, render_markdown
from vxdeploy.components.report.figures import report_pictures
from vxdeploy.components.report.html import render_html
from vxdeploy.components.select import stage as select_stage

PARTS = ("vision_encoder", "projector", "decoder_prefill", "decoder_step")
QUICK = {"batch_sizes": [1, 8], "min_iterations": 5, "min_seconds": 0.05, "warmup_iterations": 2}


def compile_artifacts(vlm: dict[str, Any], d: Path) -> Any:
    cands = artifact(d / "candidates")
    compile_stage.run(
        vlm["source"], vlm["onnx"], vlm["qdq"], {}, "", 0, cands, Metrics(), artifact(d / "c.json")
    )
    return cands


def run_select(vlm: dict[str, Any], cands: Any, d: Path, selection: dict[str, Any]) -> dict[str, Any]:
    out = {n: artifact(d / n) for n in ("selected", "benchmark.json", "table.md", "select.json")}
    metrics = Metrics()
    select_stage.run(
        cands,
        vlm["source"],
        vlm["eval"],
        selection,
        {},
        {},
        "",
        0,
        out["selected"],
        out["benchmark.json"],
        metrics,
        out["table.md"],
        out["select.json"],
    )
    return {
        "selected": out["selected"],
        "benchmark": json.loads(Path(out["benchmark.json"].path).read_text()),
        "table": Path(out["table.md"].path).read_text(),
        "report": json.loads(Path(out["select.json"].path).read_text()),
        "metrics": metrics.logged,
    }


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_vlm_artifacts(tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def selected(vlm: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("select")
    cands = compile_artifacts(vlm, d)
    return {"candidates": cands, **run_select(vlm, cands, d, QUICK)}


def test_selected_model_holds_each_parts_chosen_file_and_its_facts(selected: dict[str, Any]) -> None:
    meta = SelectedModel.read(selected["selected"])
    root = Path(selected["selected"].path)
    manifests = Path(selected["candidates"].path)

    assert sorted(meta.parts) == sorted(PARTS) and meta.generation is not None
    for part, facts in meta.parts.items():
        assert facts["file"].startswith(f"{part}/") and (root / facts["file"]).is_file()
        assert sha256_file(root / facts["file"]) == facts["sha256"]
        assert (manifests / part / facts["candidate"] / Path(facts["file"]).name).is_file()
        assert set(facts["figures"]["latency"]) == {"1", "8"}
    assert meta.kind == meta.parts["vision_encoder"]["kind"]
    assert meta.name == ", ".join(f"{p}={meta.parts[p]['candidate']}" for p in PARTS)


def test_end_to_end_accuracy_is_the_captions_of_the_files_selected(
    vlm: dict[str, Any], selected: dict[str, Any]
) -> None:
    """Re-generated independently (ONNX Runtime sessions on the files): the same exact-match figures."""
    meta = SelectedModel.read(selected["selected"])
    e2e = meta.figures["end_to_end"]
    spec = vlm["spec"]
    data = load_dataset(vlm["eval"].path, ModelSignature.from_dict(meta.signature), what="eval")
    refs = spec.references(data.labels)
    onnx = Path(vlm["onnx"].path)
    fp32 = run_parts_onnx({p: onnx / p / "model.onnx" for p in PARTS}, data.inputs["images"], spec)
    root = Path(selected["selected"].path)
    chosen = run_parts_onnx({p: root / meta.parts[p]["file"] for p in PARTS}, data.inputs["images"], spec)

    assert e2e["samples"] == len(refs) == 200
    assert e2e["fp32_exact"] == pytest.approx(exact_match(fp32.texts, refs))
    assert e2e["selected_exact"] == pytest.approx(exact_match(chosen.texts, refs))
    assert e2e["fp32_exact"] > 0.9  # the model really captions digits
    assert e2e["agreement"] == pytest.approx(float((chosen.tokens == fp32.tokens).all(axis=1).mean()))
    assert e2e["drop_points"] <= SelectionConfig().accuracy_budget


def test_end_to_end_timing_figures_are_measured(selected: dict[str, Any]) -> None:
    e2e = SelectedModel.read(selected["selected"]).figures["end_to_end"]

    assert e2e["generations_timed"] >= QUICK["min_iterations"]
    assert 0 < e2e["encode_ms"] < e2e["ttft_ms"] < e2e["p95_ms"]
    assert e2e["p50_ms"] <= e2e["p95_ms"] and e2e["tokens_per_s"] > 0 and e2e["captions_per_s"] > 0
    assert set(e2e["fp32"]) >= {"encode_ms", "ttft_ms", "tokens_per_s", "p50_ms", "p95_ms"}
    assert selected["metrics"]["e2e_ttft_ms"] == e2e["ttft_ms"]


def test_every_part_is_timed_at_the_configured_batches_on_real_activations(selected: dict[str, Any]) -> None:
    bench = selected["benchmark"]

    for part in PARTS:
        result = bench["parts"][part]
        assert result["batch_sizes"] == [1, 8] and result["samples"] == 200
        measured = [f for f in result["figures"] if f["latency"]]
        assert {f["name"] for f in measured} >= {"pytorch_eager", FP32}
        for f in measured:
            assert set(f["latency"]) == {"1", "8"} and f["latency"]["8"]["timed_in"] == "own process"
    encoder = {f["name"]: f for f in bench["parts"]["vision_encoder"]["figures"]}
    assert encoder["onnxruntime_int8"]["latency"] and encoder["onnxruntime_int8"]["accuracy"][
        "drop_basis"
    ] == ("caption exact match, end to end")


def test_stage_report_and_table_carry_every_parts_candidates_and_decision(selected: dict[str, Any]) -> None:
    gen = selected["report"]["details"]["generation"]

    assert [r["part"] for r in gen["decisions"]] == list(PARTS)
    for part in PARTS:
        names = {row["name"] for row in gen["parts"][part]["candidates"]}
        assert {"pytorch_eager", FP32, "tensorrt_fp16", "aoti"} <= names
        assert gen["parts"][part]["decision"]["selected"] == gen["combination"][part]
    assert "**Selected per part**" in selected["table"] and "### Part decoder_step" in selected["table"]
    assert "caption exact match %" in selected["table"]
    assert selected["report"]["summary"]["selected"] == SelectedModel.read(selected["selected"]).name


def test_the_run_report_shows_per_part_decisions_and_end_to_end_accuracy(selected: dict[str, Any]) -> None:
    report = build_report({"select": selected["report"]}, run_id="vlm")
    md = render_markdown(report)
    e2e = selected["report"]["details"]["generation"]["end_to_end"]

    assert report["generation"]["combination"] == selected["report"]["details"]["generation"]["combination"]
    assert "## Generation: per-part decisions" in md and "| decoder_prefill |" in md
    assert "## Generation: end to end" in md
    assert f"{100 * e2e['fp32_exact']:.1f}" in md and "TTFT" in md
    assert md.index("### Part vision_encoder") < md.index("### Part decoder_step")  # run order
    pictures = report_pictures(report)
    assert pictures["generation_parts"][1].startswith(b"\x89PNG")
    assert 'id="figure-generation_parts"' in render_html(report, pictures)


def test_runner_parts_generate_what_onnx_runtime_sessions_generate(
    vlm: dict[str, Any], selected: dict[str, Any]
) -> None:
    meta = SelectedModel.read(selected["selected"])
    cfg = SelectionConfig(**QUICK)
    data = load_dataset(vlm["eval"].path, ModelSignature.from_dict(meta.signature), what="eval").take(64)
    sel = GenerationSelection(selected["candidates"].path, _candidates(selected), vlm["spec"], data, cfg, {})
    try:
        parts = sel.parts_for({})
        gen, rate = generation_select.generate_all(parts, data.inputs, 16)
        acts = generation_select.part_activations(parts, data.inputs, 16)
    finally:
        sel.close()
    onnx = Path(vlm["onnx"].path)
    ref = run_parts_onnx({p: onnx / p / "model.onnx" for p in PARTS}, data.inputs["images"], vlm["spec"])

    np.testing.assert_array_equal(gen.tokens, ref.tokens)
    assert rate > 0
    assert acts["projector"].inputs["features"].shape == (64, 16, 64)
    assert acts["decoder_step"].inputs["past_key_0"].shape == (64, 4, 17, 16)


def _candidates(selected: dict[str, Any]) -> Any:
    from vxdeploy.components.common.artifacts import Candidates

    return Candidates.read(selected["candidates"])


def test_a_badly_calibrated_encoder_is_rejected_by_the_end_to_end_gate(tmp_path: Path) -> None:
    """INT8 ranges from images scaled by 0.05: captions collapse; the part serves FP32 and says why."""
    vlm = write_vlm_artifacts(tmp_path / "vlm", eval_samples=100, calibration_scale=0.05)
    cands = compile_artifacts(vlm, tmp_path)
    cfg = SelectionConfig(
        batch_sizes=[1], min_iterations=3, min_seconds=0.0, warmup_iterations=0, measure_reference=False
    )
    data = load_dataset(vlm["eval"].path, ModelSignature.from_dict(cands.metadata["signature"]), what="eval")
    sel = GenerationSelection(cands.path, _candidates({"candidates": cands}), vlm["spec"], data, cfg, {})
    try:
        parts, fp32 = select_parts(sel)
        # Forced into the combination anyway, it is sent back by the real end-to-end check.
        forced = {p: FP32 for p in PARTS} | {"vision_encoder": "onnxruntime_int8"}
        combo = check_combination(
            forced, {"vision_encoder": 90.0}, generation_select.evaluator(sel, fp32), 0.5
        )
        # The figures of a combination that is not FP32 everywhere time both, alternating.
        e2e = generation_select.end_to_end_figures(
            sel, generation_select.Combination(forced, combo.accuracy), fp32
        )
    finally:
        sel.close()
    encoder = parts["vision_encoder"]
    int8 = encoder.figures("onnxruntime_int8")

    assert encoder.chosen == FP32
    assert encoder.end_to_end["onnxruntime_int8"].drop_points > 50
    assert "caption exact match, end to end drops" in int8.rejected_reason
    assert "selection.accuracy_budget 0.5" in int8.rejected_reason
    assert combo.chosen == {p: FP32 for p in PARTS} and combo.accuracy.drop_points == 0.0
    assert (
        combo.fallbacks[0]["part"] == "vision_encoder" and combo.fallbacks[0]["combination_drop_points"] > 50
    )
    assert "alternating" in e2e["measured"] and e2e["fp32"]["p50_ms"] > 0 and e2e["speedup_p50"] > 0


def _additive(drops: dict[str, float], budget: float) -> Any:
    def evaluate(combination: dict[str, str]) -> EndToEndAccuracy:
        drop = sum(drops[p] for p, c in combination.items() if c != FP32)
        return EndToEndAccuracy(
            dict(combination), 100, 0.9, 0.95, 0.9, drop, "caption exact match", drop <= budget
        )

    return evaluate


def test_a_combination_over_budget_falls_back_part_by_part_worst_first() -> None:
    chosen = {"vision_encoder": "onnxruntime_int8", "projector": "onnxruntime_int8", "decoder_step": FP32}
    drops = {"vision_encoder": 0.4, "projector": 0.3, "decoder_step": 0.0}

    combo = check_combination(chosen, drops, _additive(drops, 0.5), 0.5)

    assert combo.chosen == {"vision_encoder": FP32, "projector": "onnxruntime_int8", "decoder_step": FP32}
    assert [f["part"] for f in combo.fallbacks] == ["vision_encoder"]
    assert (
        "drops 0.70 points" in combo.fallbacks[0]["reason"]
        and "goes back to onnxruntime_fp32" in combo.fallbacks[0]["reason"]
    )
    assert combo.accuracy.within_budget


def test_a_combination_within_budget_is_kept_and_all_fp32_always_passes() -> None:
    chosen = {"vision_encoder": "onnxruntime_int8", "projector": FP32}
    drops = {"vision_encoder": 0.4, "projector": 0.0}

    assert check_combination(chosen, drops, _additive(drops, 0.5), 0.5).fallbacks == []
    worst = check_combination(
        chosen, {"vision_encoder": 9.0}, _additive({"vision_encoder": 9.0, "projector": 0}, 0.5), 0.5
    )
    assert worst.chosen == {"vision_encoder": FP32, "projector": FP32} and len(worst.fallbacks) == 1


def test_without_reference_captions_the_budget_applies_to_agreement_with_fp32() -> None:
    tokens = np.array([[3, 4, 2, 0]] * 9 + [[3, 5, 2, 0]])
    fp32 = np.array([[3, 4, 2, 0]] * 10)

    verdict = generation_select.judge({}, tokens, ["a"] * 10, fp32, ["a"] * 10, None, 0.5)

    assert verdict.exact is None and verdict.agreement == pytest.approx(0.9)
    assert verdict.drop_points == pytest.approx(10.0) and not verdict.within_budget
    assert verdict.drop_basis == "caption agreement with FP32, end to end"


def test_a_latency_budget_bounds_whole_generations_not_one_parts_call() -> None:
    cfg = SelectionConfig(
        policy="max_throughput_within_latency_budget", latency_budget_ms=1.0, min_cosine=0.99
    )

    part = generation_select.part_policy(cfg)

    assert part.policy == "max_throughput" and part.min_cosine == 0.0
    assert part.accuracy_budget == cfg.accuracy_budget and part.batch_sizes == cfg.batch_sizes
    assert generation_select.part_policy(SelectionConfig(policy="min_latency")).policy == "min_latency"


def test_export_and_calibration_headlines_of_a_generation_model_give_caption_figures() -> None:
    """The summaries as the generation export and calibration stages write them."""
    from vxdeploy.components.report.build import stage_headline

    export = {
        "task": "generation",
        "parts": 4,
        "opset": 19,
        "parity_max_abs_diff": 2.4e-06,
        "fp32_onnx_exact_match": 0.954,
        "pytorch_exact_match": 0.954,
        "e2e_agreement": 1.0,
    }
    calibrate = {
        "task": "generation",
        "accepted_parts": ["vision_encoder", "projector"],
        "fp32_exact_match": 0.954,
        "int8_exact_match": 0.956,
        "drop_points": -0.2,
        "e2e_agreement": 0.992,
    }

    assert "ONNX Runtime exact match 95.4% (PyTorch 95.4%)" in stage_headline(
        {"stage": "export", "status": "succeeded", "summary": export}
    )
    assert stage_headline({"stage": "calibrate", "status": "succeeded", "summary": calibrate}) == (
        "INT8 parts accepted: vision_encoder, projector; captions exact match 95.4% -> 95.6% "
        "(drop -0.2 pts, agreement 99.2%)"
    )
