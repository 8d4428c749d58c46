"""TensorRT engines per part of a generation model, built on this GPU and generating captions. GPU only.

Each part of digits-vlm becomes a strongly typed engine (FP32, FP16, and INT8 from a symmetric Q/DQ
encoder) through the compile stage's per-part path; the engines then caption the held-out digits
through the same runners selection times, and the select stage chooses per part among them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from generation_fixtures import Metrics, artifact, write_vlm_artifacts

from vxdeploy.components.common.artifacts import Candidates, SelectedModel
from vxdeploy.components.common.config import SelectionConfig
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.compile import stage as compile_stage
from vxdeploy.components.compile import tensorrt
from vxdeploy.components.generation.loop import agreement
from vxdeploy.components.generation.select import FP32, GenerationSelection, generate_all
from vxdeploy.components.select import stage as select_stage

pytestmark = pytest.mark.gpu

PARTS = ("vision_encoder", "projector", "decoder_prefill", "decoder_step")
KINDS = ["onnxruntime_fp32", "onnxruntime_int8", "tensorrt_fp32", "tensorrt_fp16", "tensorrt_int8"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("tensorrt", reason="TensorRT is installed only in the optimizer image")
    d = tmp_path_factory.mktemp("trt-vlm")
    vlm = write_vlm_artifacts(d / "vlm", symmetric=True, eval_samples=200)
    cands = artifact(d / "candidates")
    compile_stage.run(
        vlm["source"],
        vlm["onnx"],
        vlm["qdq"],
        {"candidates": KINDS},
        "",
        0,
        cands,
        Metrics(),
        artifact(d / "c.json"),
    )
    return {"vlm": vlm, "candidates": cands, "dir": d}


def test_every_part_gets_fp32_and_fp16_engines_and_the_encoder_an_int8_one(built: dict[str, Any]) -> None:
    import torch

    meta = Candidates.read(built["candidates"])
    for part in PARTS:
        assert {"tensorrt_fp32", "tensorrt_fp16"} <= set(meta.parts[part]["built"]), meta.parts[part][
            "not_built"
        ]
    assert "tensorrt_int8" in meta.parts["vision_encoder"]["built"]
    manifest = json.loads((Path(built["candidates"].path) / "vision_encoder" / "manifest.json").read_text())
    engine = next(c for c in manifest["candidates"] if c["name"] == "tensorrt_fp32")["engine"]
    assert engine["gpu_name"] == torch.cuda.get_device_name() and engine["build_options"]["strongly_typed"]


def test_the_step_engines_profile_covers_the_generations_cache_lengths(built: dict[str, Any]) -> None:
    manifest = json.loads((Path(built["candidates"].path) / "decoder_step" / "manifest.json").read_text())
    engine = next(c for c in manifest["candidates"] if c["name"] == "tensorrt_fp32")["engine"]
    past = engine["build_options"]["profile"]["past_key_0"]

    assert past["min"][2] == 17 and past["max"][2] == 17 + built["vlm"]["spec"].max_new_tokens - 2


@pytest.mark.parametrize(("kind", "min_agreement"), [("tensorrt_fp32", 0.99), ("tensorrt_fp16", 0.95)])
def test_engines_of_every_part_caption_like_the_fp32_onnx_parts(
    built: dict[str, Any], kind: str, min_agreement: float
) -> None:
    vlm = built["vlm"]
    meta = Candidates.read(built["candidates"])
    cfg = SelectionConfig(batch_sizes=[1, 8])
    data = load_dataset(vlm["eval"].path, ModelSignature.from_dict(meta.signature), what="eval")
    sel = GenerationSelection(built["candidates"].path, meta, vlm["spec"], data, cfg, {})
    try:
        fp32, _ = generate_all(sel.parts_for({}), data.inputs, 8)
        engines, _ = generate_all(sel.parts_for(dict.fromkeys(PARTS, kind)), data.inputs, 8)
        assert all(sel.runner(p, kind).device == "cuda" for p in PARTS)
    finally:
        sel.close()

    assert agreement(engines.tokens, fp32.tokens) >= min_agreement
    assert (
        np.mean([t == r for t, r in zip(engines.texts, vlm["spec"].references(data.labels), strict=True)])
        > 0.9
    )


def test_selection_chooses_per_part_among_the_engines_and_records_them(built: dict[str, Any]) -> None:
    d, vlm = built["dir"], built["vlm"]
    out = {n: artifact(d / n) for n in ("selected", "benchmark.json", "table.md", "select.json")}
    select_stage.run(
        built["candidates"],
        vlm["source"],
        vlm["eval"],
        {"batch_sizes": [1, 8], "min_iterations": 5, "min_seconds": 0.05},
        {},
        {},
        "",
        0,
        out["selected"],
        out["benchmark.json"],
        Metrics(),
        out["table.md"],
        out["select.json"],
    )
    meta = SelectedModel.read(out["selected"])
    e2e = meta.figures["end_to_end"]

    assert e2e["drop_points"] <= SelectionConfig().accuracy_budget
    for facts in meta.parts.values():
        assert (Path(out["selected"].path) / facts["file"]).is_file()
        if facts["runtime"] == "tensorrt":
            assert facts["device"] == "cuda" and facts["engine"]["gpu_name"]
            tensorrt.check_engine_compatibility(
                facts["engine"], facts["engine"]["gpu_name"], facts["engine"]["tensorrt_version"]
            )
    assert any(f["runtime"] == "tensorrt" for f in meta.parts.values()) or all(
        f["candidate"] == FP32 for f in meta.parts.values()
    )
