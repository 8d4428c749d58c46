"""The generation model's Triton repository: one model per part plus the streaming BLS generator.

Every ``config.pbtxt`` is parsed back through Triton's own ``model_config_pb2``; no server here (the
served repository is checked in tests/components/test_generation_serve_check.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from kfp import dsl
from tritonclient.grpc import model_config_pb2 as mc

from tests.generation_support import digits_vlm_files, selected_model_dir
from vxdeploy.components.common.artifacts import TritonRepository as TritonRepositoryMetadata
from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.errors import ModelIntakeError
from vxdeploy.components.common.signature import signature_from_onnx
from vxdeploy.components.generation.serving import (
    CONFIGURED_ONLY_DIR,
    check_vllm_part,
    generator_source,
    generator_wiring,
    package_generation_repository,
)
from vxdeploy.components.generation.spec import GenerationSpec
from vxdeploy.components.package.ensemble import EnsembleWiringError
from vxdeploy.components.package.model_config import write_model_config
from vxdeploy.components.package.repository import MODEL_REPOSITORY_DIR

PARTS = ("vision_encoder", "projector", "decoder_prefill", "decoder_step")
TRITON = TritonConfig(max_batch_size=8, dynamic_batching={"preferred_batch_sizes": [4, 8]})


@pytest.fixture(scope="module")
def selected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("vlm")
    return selected_model_dir(digits_vlm_files(root / "files"), root / "selected")


def _parse(path: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse(path.read_text(), config)  # unknown fields fail here
    return config


def _package(
    selected: tuple[Path, dict[str, Any]], out: Path, triton: TritonConfig = TRITON, **kw: Any
) -> Any:
    sel_dir, meta = selected
    spec = GenerationSpec.from_dict(meta["generation"])
    return package_generation_repository(
        sel_dir,
        meta["parts"],
        spec,
        model_name="digits-vlm",
        triton=triton,
        instance_kind="KIND_CPU",
        out_dir=out,
        **kw,
    )


def test_each_part_holds_its_selected_artifact_and_the_generator_streams(
    selected: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    packaged = _package(selected, tmp_path / "repo")
    repo = packaged.repository
    models = repo.root / MODEL_REPOSITORY_DIR
    assert sorted(p.name for p in models.iterdir()) == sorted([*PARTS, "digits-vlm"])
    assert repo.default_model == "digits-vlm"
    assert repo.kinds == {**{p: "onnxruntime_fp32" for p in PARTS}, "digits-vlm": "generator"}

    sel_dir, meta = selected
    for part in PARTS:
        config = _parse(models / part / "config.pbtxt")
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
        served = models / part / "1" / "model.onnx"
        want = hashlib.sha256((sel_dir / meta["parts"][part]["file"]).read_bytes()).hexdigest()
        assert hashlib.sha256(served.read_bytes()).hexdigest() == want
        assert repo.manifest["files"][f"{MODEL_REPOSITORY_DIR}/{part}/1/model.onnx"]["sha256"] == want
        # Only the encoder caches; it always batches.
        assert config.response_cache.enable is (part == "vision_encoder")
        assert config.HasField("dynamic_batching")
        assert [t.name for t in config.input] == signature_from_onnx(served).input_names

    gen = _parse(models / "digits-vlm" / "config.pbtxt")
    assert gen.backend == "python"
    assert gen.model_transaction_policy.decoupled is True
    assert not gen.response_cache.enable  # Triton caches no decoupled model
    assert gen.max_batch_size == 8 and list(gen.dynamic_batching.preferred_batch_size) == [4, 8]
    # The image, or its 64 values as one list (what Triton's generate extension can send): either.
    assert [(t.name, t.data_type, list(t.dims), t.optional) for t in gen.input] == [
        ("images", mc.TYPE_FP32, [1, 8, 8], True),
        ("images_flat", mc.TYPE_FP32, [-1], True),
    ]
    assert [(t.name, t.data_type) for t in gen.output] == [
        ("output_ids", mc.TYPE_INT64),
        ("text", mc.TYPE_STRING),
        ("encode_ms", mc.TYPE_FP32),
    ]
    assert (models / "digits-vlm" / "1" / "model.py").read_text() == generator_source()
    wiring = json.loads(gen.parameters["wiring"].string_value)
    assert wiring["parts"] == {p: p for p in PARTS}
    assert wiring["flat_inputs"] == {"images_flat": [1, 8, 8]}
    assert wiring["past"] == ["past_key_0", "past_value_0", "past_key_1", "past_value_1"]
    assert wiring["present"] == [n.replace("past_", "present_") for n in wiring["past"]]
    generation = json.loads(gen.parameters["generation"].string_value)
    assert generation["vocabulary"][:3] == ["<pad>", "<bos>", "<eos>"] and generation["max_new_tokens"] == 4
    assert not (repo.root / CONFIGURED_ONLY_DIR).exists()
    assert any("no vLLM-backend part" in n for n in packaged.notes)


def test_the_package_stage_dispatches_a_generation_model_and_its_metadata_names_the_generator(
    selected: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from vxdeploy.components.package.stage import run_package

    sel_dir, meta = selected
    selected_model = dsl.Model(name="selected_model", uri=str(sel_dir), metadata=dict(meta))
    out = dsl.Model(name="triton_repository", uri=str(tmp_path / "repo"), metadata={})
    report = dsl.Artifact(name="report", uri=str(tmp_path / "report.json"), metadata={})

    run_package(selected_model, {"name": "digits-vlm"}, TRITON.model_dump(), {}, out, report)

    repo = TritonRepositoryMetadata.from_metadata(out.metadata)
    assert repo.model_name == "digits-vlm" and repo.kind == "generator"
    assert sorted(repo.models) == sorted([*PARTS, "digits-vlm"])
    assert repo.parts["vision_encoder"]["kind"] == "onnxruntime_fp32"
    assert repo.generation and repo.generation["parts"] == {p: p for p in PARTS}
    args = repo.serving_container.args
    assert "--vertex-ai-default-model=digits-vlm" in args
    assert any(a.startswith("--cache-config=local,size=") for a in args)
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["status"] == "succeeded", written
    assert written["summary"]["model_name"] == "digits-vlm"
    for name, text in written["details"]["configs"].items():
        _parse_text(text)  # every config in the report parses too
        assert name in (*PARTS, "digits-vlm")


def _parse_text(text: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse(text, config)
    return config


def test_wiring_names_the_tensor_that_does_not_fit(
    selected: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    packaged = _package(selected, tmp_path / "repo")
    models = packaged.repository.root / MODEL_REPOSITORY_DIR
    spec = GenerationSpec.from_dict(selected[1]["generation"])
    configs = {p: _parse(models / p / "config.pbtxt") for p in PARTS}
    assert generator_wiring(configs, spec)["image_tokens"] == "image_tokens"

    broken = {p: _parse(models / p / "config.pbtxt") for p in PARTS}
    next(t for t in broken["decoder_step"].input if t.name == "past_value_1").data_type = mc.TYPE_FP16
    with pytest.raises(EnsembleWiringError, match="present_value_1 -> decoder_step.past_value_1"):
        generator_wiring(broken, spec)

    wrong_width = {p: _parse(models / p / "config.pbtxt") for p in PARTS}
    del wrong_width["projector"].output[0].dims[:]
    wrong_width["projector"].output[0].dims.extend([16, 32])
    with pytest.raises(EnsembleWiringError, match="decoder_prefill.image_tokens"):
        generator_wiring(wrong_width, spec)

    small = GenerationSpec.from_dict({**spec.to_dict(), "vocabulary": list(spec.vocabulary[:5])})
    with pytest.raises(EnsembleWiringError, match="scores 14 tokens but model.generation.vocabulary has 5"):
        generator_wiring(configs, small)


def test_a_missing_part_or_an_engine_without_a_signature_is_refused(
    selected: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    sel_dir, meta = selected
    spec = GenerationSpec.from_dict(meta["generation"])
    parts = {p: f for p, f in meta["parts"].items() if p != "decoder_step"}
    with pytest.raises(ModelIntakeError, match="no part 'decoder_step'"):
        package_generation_repository(
            sel_dir,
            parts,
            spec,
            model_name="m",
            triton=TRITON,
            instance_kind="KIND_CPU",
            out_dir=tmp_path / "a",
        )
    engine = sel_dir / "vision_encoder" / "model.plan"
    engine.write_bytes(b"not built here")
    plan = {**meta["parts"], "vision_encoder": {"kind": "tensorrt_fp16", "file": "vision_encoder/model.plan"}}
    with pytest.raises(ModelIntakeError, match="records each part's signature"):
        package_generation_repository(
            sel_dir,
            plan,
            spec,
            model_name="m",
            triton=TRITON,
            instance_kind="KIND_GPU",
            out_dir=tmp_path / "b",
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_tensorrt_part_gets_a_tensorrt_plan_config_on_the_gpu(
    selected: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    sel_dir, meta = selected
    spec = GenerationSpec.from_dict(meta["generation"])
    (sel_dir / "vision_encoder" / "model.plan").write_bytes(b"engine bytes")
    facts = {**meta["parts"]["vision_encoder"], "kind": "tensorrt_fp16", "file": "vision_encoder/model.plan"}
    packaged = package_generation_repository(
        sel_dir,
        {**meta["parts"], "vision_encoder": facts},
        spec,
        model_name="digits-vlm",
        triton=TRITON,
        instance_kind="KIND_GPU",
        out_dir=tmp_path / "repo",
    )
    models = packaged.repository.root / MODEL_REPOSITORY_DIR
    enc = _parse(models / "vision_encoder" / "config.pbtxt")
    assert enc.platform == "tensorrt_plan" and enc.response_cache.enable
    assert enc.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (models / "vision_encoder" / "1" / "model.plan").read_bytes() == b"engine bytes"
    gen = _parse(models / "digits-vlm" / "config.pbtxt")
    assert gen.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU  # BLS runs on the CPU
    assert packaged.repository.needs_project_image


def test_the_vllm_part_is_configured_only_and_checked(
    selected: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    triton = TRITON.model_copy(
        update={"vllm_engine_args": {"model": "Qwen/Qwen2-VL-2B-Instruct", "gpu_memory_utilization": 0.85}}
    )
    packaged = _package(selected, tmp_path / "repo", triton)
    root = packaged.repository.root
    vllm_dir = root / CONFIGURED_ONLY_DIR / "digits-vlm_vllm"
    config = _parse(vllm_dir / "config.pbtxt")
    assert config.backend == "vllm" and config.model_transaction_policy.decoupled
    assert config.max_batch_size == 0 and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_MODEL
    engine = json.loads((vllm_dir / "1" / "model.json").read_text())
    assert engine == {"model": "Qwen/Qwen2-VL-2B-Instruct", "gpu_memory_utilization": 0.85}
    assert not (root / MODEL_REPOSITORY_DIR / "digits-vlm_vllm").exists()  # never loaded
    assert f"{CONFIGURED_ONLY_DIR}/digits-vlm_vllm/config.pbtxt" in packaged.repository.manifest["files"]
    assert len(packaged.vllm_checks) == 3 and "configured only" in packaged.notes[0]

    next(t for t in config.input if t.name == "text_input").data_type = mc.TYPE_FP32
    write_model_config(config, vllm_dir)
    with pytest.raises(EnsembleWiringError, match="'text_input' should be object"):
        check_vllm_part(vllm_dir)


def test_the_generators_text_pieces_join_to_the_specs_decoded_caption(tmp_path: Path) -> None:
    """The generator decodes as GenerationSpec.decode does, one streamed piece per token."""
    import importlib.util
    import sys

    from vxdeploy.components.common import builtin_vlm as vlm
    from vxdeploy.components.package.tritonserver import find_bundled_triton

    install, why = find_bundled_triton()
    if install is None:
        pytest.skip(why)
    sys.path.insert(0, str(install.python_backend))  # Triton's triton_python_backend_utils.py
    try:
        path = tmp_path / "generator_model.py"
        path.write_text(generator_source())
        module_spec = importlib.util.spec_from_file_location("generator_model", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(install.python_backend))
    spec = vlm.generation_spec()
    decoder = module._Decoder(spec.to_dict())
    for ids in ([3, 7, 2], [3, 12, 2, 0], [1, 3, 0, 9], [2, 3], [3, 4, 5, 6], []):
        pieces, before = [], []
        for t in ids:
            pieces.append(decoder.piece(before, t))
            before.append(t)
        assert "".join(pieces) == spec.decode(ids) == decoder.decode(ids)


def test_without_triton_batching_every_model_takes_the_batch_dim_itself(
    selected: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    packaged = _package(selected, tmp_path / "repo", TritonConfig(max_batch_size=0))
    models = packaged.repository.root / MODEL_REPOSITORY_DIR
    for name in (*PARTS, "digits-vlm"):
        config = _parse(models / name / "config.pbtxt")
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert all(list(t.dims)[0] == -1 for t in config.input)
    enc = _parse(models / "vision_encoder" / "config.pbtxt")
    assert enc.response_cache.enable
