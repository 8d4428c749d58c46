"""The compile stage for a generation model: every part's candidates, from the digits-vlm artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from generation_fixtures import Metrics, artifact, write_vlm_artifacts

from vxdeploy.components.common.artifacts import Candidates
from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.compile import stage as compile_stage
from vxdeploy.components.compile.candidates import read_manifest
from vxdeploy.components.generation import compile as generation_compile
from vxdeploy.components.generation.loop import OnnxParts, greedy_generate

PARTS = ("vision_encoder", "projector", "decoder_prefill", "decoder_step")


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_vlm_artifacts(tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def compiled(vlm: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("compile")
    cands, rep, metrics = artifact(d / "candidates"), artifact(d / "report.json"), Metrics()
    compile_stage.run(vlm["source"], vlm["onnx"], vlm["qdq"], {}, "", 0, cands, metrics, rep)
    return {"candidates": cands, "report": json.loads(Path(rep.path).read_text()), "metrics": metrics}


def test_each_part_gets_its_own_candidates_folder_and_manifest(compiled: dict[str, Any]) -> None:
    root = Path(compiled["candidates"].path)
    meta = Candidates.read(compiled["candidates"])

    assert sorted(meta.parts) == sorted(PARTS) and meta.generation is not None
    for part in PARTS:
        manifest = read_manifest(root / part)
        assert [c.name for c in manifest.built] == meta.parts[part]["built"]
        for cand in manifest.built:
            assert (root / part / cand.file).is_file()
        assert meta.parts[part]["manifest"] == f"{part}/manifest.json"
    assert "vision_encoder/onnxruntime_int8" in meta.built
    assert meta.signature["outputs"][0]["name"] == "output_ids"


def test_int8_only_where_calibration_accepted_it_and_the_rest_say_why(compiled: dict[str, Any]) -> None:
    meta = Candidates.read(compiled["candidates"])

    assert meta.parts["vision_encoder"]["built"] == ["onnxruntime_fp32", "onnxruntime_int8"]
    for part in ("projector", "decoder_prefill", "decoder_step"):
        assert meta.parts[part]["built"] == ["onnxruntime_fp32"]
        assert "decoder parts stay FP32" in meta.parts[part]["not_built"]["onnxruntime_int8"]


def test_tensorrt_and_aoti_are_skipped_here_with_the_reason(compiled: dict[str, Any]) -> None:
    meta = Candidates.read(compiled["candidates"])

    for part in PARTS:
        not_built = meta.parts[part]["not_built"]
        for kind in ("tensorrt_fp16", "tensorrt_int8"):
            assert "TensorRT" in not_built[kind] and "serving GPU" in not_built[kind]
        assert not_built["aoti"] == generation_compile.AOTI_REASON
    skipped = {s["name"] for s in compiled["report"]["details"]["skipped"]}
    assert "decoder_step/tensorrt_fp16" in skipped and "vision_encoder/aoti" in skipped
    assert compiled["report"]["summary"]["generation"] is True
    assert compiled["metrics"].logged["candidates_built"] == 5


def test_the_steps_cache_range_covers_every_step_of_a_real_generation(
    vlm: dict[str, Any], compiled: dict[str, Any]
) -> None:
    """TensorRT's profile of the cache dim comes from this range: a step outside it would not run."""
    meta = Candidates.read(compiled["candidates"])
    step = ModelSignature.from_dict(meta.parts["decoder_step"]["signature"])
    (dim,) = step.dynamic_dims()
    low, high = step.dim_ranges[dim]
    spec = vlm["spec"]
    parts = OnnxParts({p: Path(vlm["onnx"].path) / p / "model.onnx" for p in PARTS}, spec)
    lengths: list[int] = []

    def step_fn(ids: np.ndarray, cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        lengths.append(int(cache[0].shape[2]))
        return parts.step(ids, cache)

    images = np.load(vlm["eval"].path)["images"][:64]
    greedy_generate(parts.encode, parts.prefill, step_fn, images, spec)

    assert lengths and low <= min(lengths) and max(lengths) <= high
    assert (low, high) == (17, 17 + spec.max_new_tokens - 2)


def test_a_dim_profile_no_part_has_is_refused_naming_the_field(vlm: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"compilation.dim_profiles.input_ids.1.*past_key_0.2"):
        compile_stage.run(
            vlm["source"],
            vlm["onnx"],
            vlm["qdq"],
            {"dim_profiles": {"input_ids.1": {"min": 1, "opt": 4, "max": 8}}},
            "",
            0,
            artifact(tmp_path / "candidates"),
            Metrics(),
            artifact(tmp_path / "report.json"),
        )


def test_without_the_fp32_candidate_the_stage_refuses_naming_the_field(
    vlm: dict[str, Any], tmp_path: Path
) -> None:
    """Selection compares every part with its FP32 export and falls back to it: it must be built."""
    rep = artifact(tmp_path / "report.json")
    with pytest.raises(ConfigError, match=r"compilation.candidates.*include onnxruntime_fp32"):
        compile_stage.run(
            vlm["source"],
            vlm["onnx"],
            vlm["qdq"],
            {"candidates": ["onnxruntime_int8", "tensorrt_int8"]},
            "",
            0,
            artifact(tmp_path / "candidates"),
            Metrics(),
            rep,
        )
    assert json.loads(Path(rep.path).read_text())["status"] == "failed"


def test_tensorrt_profiles_of_every_part_are_decided_here_without_a_gpu(compiled: dict[str, Any]) -> None:
    """The step's cache dim gets its range from the generation: the engine built on the GPU covers it."""
    from vxdeploy.components.common.config import CompilationConfig
    from vxdeploy.components.compile import tensorrt

    meta = Candidates.read(compiled["candidates"])
    cfg = CompilationConfig()
    for part in PARTS:
        sig = ModelSignature.from_dict(meta.parts[part]["signature"])
        options = tensorrt.build_options(generation_compile.part_config(cfg, sig), sig, "fp16")
        assert set(options.profile) == set(sig.input_names) and options.max_batch == cfg.batch_profile.max
    step = ModelSignature.from_dict(meta.parts["decoder_step"]["signature"])
    past = tensorrt.optimization_profile(cfg, step)["past_key_0"]
    assert (past.min, past.max) == ((1, 4, 17, 16), (32, 4, 19, 16))
