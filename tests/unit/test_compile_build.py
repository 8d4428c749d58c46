"""build_candidates and the compile stage on a tiny CNN exported here (no GPU needed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from vxdeploy.components.common.config import CompilationConfig
from vxdeploy.components.common.errors import ConfigError, InternalError
from vxdeploy.components.common.signature import signature_from_onnx
from vxdeploy.components.compile import stage
from vxdeploy.components.compile.build import CompileSources, build_candidates
from vxdeploy.components.compile.candidates import read_manifest, sha256_file
from vxdeploy.components.compile.gpus import check_build_hardware


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    ).eval()


def export_tiny_onnx(path: Path) -> Path:
    torch.onnx.export(
        tiny_cnn(),
        (torch.zeros(2, 1, 8, 8),),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=19,
        dynamo=False,
    )
    return path


def quantize_tiny(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": calib[i : i + 8]} for i in range(0, 32, 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
    )
    return dst


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("onnx")
    fp32 = export_tiny_onnx(d / "model.onnx")
    return fp32, quantize_tiny(fp32, d / "qdq.onnx")


def ort_only(**kw: Any) -> CompilationConfig:
    return CompilationConfig(candidates=["onnxruntime_fp32", "onnxruntime_int8", "tensorrt_fp16"], **kw)


def test_onnxruntime_candidates_are_built_with_their_session_options(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, qdq = onnx_models
    sources = CompileSources(signature_from_onnx(fp32), fp32, qdq)

    manifest = build_candidates(tmp_path, ort_only(), sources)

    built = {c.name: c for c in manifest.built}
    assert set(built) == {"onnxruntime_fp32", "onnxruntime_int8"}
    int8 = built["onnxruntime_int8"]
    assert (int8.precision, int8.runtime, int8.file) == ("int8", "onnxruntime", "onnxruntime_int8/model.onnx")
    assert int8.sha256 == sha256_file(tmp_path / int8.file)
    assert int8.options["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert json.loads((tmp_path / "onnxruntime_int8" / "session_options.json").read_text()) == int8.options


def test_tensorrt_without_a_gpu_is_skipped_with_the_reason_not_faked(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, qdq = onnx_models

    manifest = build_candidates(tmp_path, ort_only(), CompileSources(signature_from_onnx(fp32), fp32, qdq))

    trt = next(c for c in manifest.candidates if c.name == "tensorrt_fp16")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert trt.status == "skipped" and ("TensorRT" in trt.reason or "GPU" in trt.reason)
    assert not (tmp_path / "tensorrt_fp16").exists()


def test_int8_candidate_carries_the_calibration_gate_reason_when_rejected(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, _ = onnx_models
    sources = CompileSources(signature_from_onnx(fp32), fp32, None, "INT8 dropped 3.1 points > budget 0.5")

    manifest = build_candidates(tmp_path, ort_only(), sources)

    int8 = next(c for c in manifest.candidates if c.name == "onnxruntime_int8")
    assert int8.status == "skipped" and "3.1 points" in int8.reason


def test_fp32_model_passed_as_int8_is_refused(onnx_models: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, _ = onnx_models
    sources = CompileSources(signature_from_onnx(fp32), fp32, qdq_path=fp32)

    manifest = build_candidates(tmp_path, ort_only(), sources)

    int8 = next(c for c in manifest.candidates if c.name == "onnxruntime_int8")
    assert int8.status == "skipped" and "Q/DQ" in int8.reason


def test_manifest_round_trips_every_candidate_and_the_signature(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, qdq = onnx_models
    written = build_candidates(tmp_path, ort_only(), CompileSources(signature_from_onnx(fp32), fp32, qdq))

    read = read_manifest(tmp_path)

    assert [c.to_dict() for c in read.candidates] == [c.to_dict() for c in written.candidates]
    assert read.model_signature() == signature_from_onnx(fp32)


def test_tensorrt_profile_errors_surface_even_where_tensorrt_cannot_run(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, qdq = onnx_models
    cfg = ort_only(dim_profiles={"seq": {"min": 1, "opt": 4, "max": 8}})

    with pytest.raises(ConfigError, match="compilation.dim_profiles"):
        build_candidates(tmp_path, cfg, CompileSources(signature_from_onnx(fp32), fp32, qdq))


def _artifact(path: Path, **metadata: Any) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), metadata=dict(metadata), uri="")


class _Metrics:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


def test_compile_stage_writes_candidates_report_and_metrics(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, qdq = onnx_models
    onnx_dir, qdq_dir = tmp_path / "onnx", tmp_path / "qdq"
    onnx_dir.mkdir(), qdq_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(fp32.read_bytes())
    (qdq_dir / "model.onnx").write_bytes(qdq.read_bytes())
    signature = signature_from_onnx(fp32).to_dict()
    candidates = _artifact(tmp_path / "candidates")
    metrics = _Metrics()

    stage.run(
        _artifact(tmp_path / "src", format="onnx", file="model.onnx", signature=signature),
        _artifact(onnx_dir, signature=signature),
        _artifact(qdq_dir, accepted=True, reason="", file="model.onnx"),
        {"candidates": ["onnxruntime_fp32", "onnxruntime_int8", "aoti"]},
        "",
        0,
        candidates,
        metrics,
        _artifact(tmp_path / "report.json"),
    )

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["built"] == ["onnxruntime_fp32", "onnxruntime_int8"]
    assert "ONNX" in candidates.metadata["not_built"]["aoti_cpu"]
    assert metrics.logged["candidates_built"] == 2.0
    assert (tmp_path / "candidates" / "manifest.json").is_file()


def test_compile_stage_fails_naming_each_reason_when_nothing_can_be_built(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, _ = onnx_models
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(fp32.read_bytes())
    signature = signature_from_onnx(fp32).to_dict()

    with pytest.raises(ConfigError, match="onnxruntime_int8: no INT8 Q/DQ model"):
        stage.run(
            _artifact(tmp_path / "src", format="onnx", file="model.onnx", signature=signature),
            _artifact(onnx_dir, signature=signature),
            _artifact(tmp_path / "qdq", produced=False, accepted=False, reason="gate failed"),
            {"candidates": ["onnxruntime_int8"]},
            "",
            0,
            _artifact(tmp_path / "candidates"),
            _Metrics(),
            _artifact(tmp_path / "report.json"),
        )


def test_a_broken_build_is_reported_failed_and_leaves_no_folder(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    signature = signature_from_onnx(export_tiny_onnx(tmp_path / "ok.onnx"))
    cfg = CompilationConfig(candidates=["onnxruntime_fp32"])

    manifest = build_candidates(tmp_path / "out", cfg, CompileSources(signature, broken))

    (cand,) = manifest.candidates
    assert cand.status == "failed" and cand.reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json"]


def test_build_on_the_requested_gpu_passes_and_reports_it() -> None:
    assert check_build_hardware("NVIDIA_L4", 1, ["NVIDIA L4"]) == "NVIDIA L4"


def test_build_task_on_another_gpu_is_stopped() -> None:
    with pytest.raises(InternalError, match="asked for NVIDIA_L4 but runs on 'Tesla T4'"):
        check_build_hardware("NVIDIA_L4", 1, ["Tesla T4"])


def test_build_task_without_the_gpu_it_asked_for_is_stopped() -> None:
    with pytest.raises(InternalError, match="sees no GPU"):
        check_build_hardware("NVIDIA_TESLA_T4", 1, [])


def test_accelerator_type_without_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="build_accelerator_count"):
        check_build_hardware("NVIDIA_L4", 0, ["NVIDIA L4"])


def test_cpu_build_needs_no_gpu() -> None:
    assert check_build_hardware("", 0) == "cpu"


def test_dynamic_int8_candidate_is_built_from_calibrations_dynamic_model(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, qdq = onnx_models
    dynamic = tmp_path / "model.dynamic.onnx"
    quantize_dynamic(
        str(fp32), str(dynamic), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )
    sources = CompileSources(signature_from_onnx(fp32), fp32, qdq, dynamic_path=dynamic)
    cfg = CompilationConfig(candidates=["onnxruntime_int8_dynamic"])

    manifest = build_candidates(tmp_path / "candidates", cfg, sources)

    (cand,) = manifest.candidates
    assert (cand.status, cand.precision, cand.runtime) == ("built", "int8", "onnxruntime")


def test_dynamic_int8_candidate_is_skipped_with_the_gate_reason(
    onnx_models: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, qdq = onnx_models
    sources = CompileSources(
        signature_from_onnx(fp32),
        fp32,
        qdq,
        dynamic_unavailable_reason="dynamic INT8 misses the gate: cosine 0.97",
    )

    manifest = build_candidates(tmp_path, CompilationConfig(candidates=["onnxruntime_int8_dynamic"]), sources)

    (cand,) = manifest.candidates
    assert cand.status == "skipped" and "cosine 0.97" in cand.reason


def test_fp32_model_passed_as_dynamic_int8_is_refused(onnx_models: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, qdq = onnx_models
    sources = CompileSources(signature_from_onnx(fp32), fp32, qdq, dynamic_path=fp32)

    manifest = build_candidates(tmp_path, CompilationConfig(candidates=["onnxruntime_int8_dynamic"]), sources)

    (cand,) = manifest.candidates
    assert cand.status == "skipped" and "not dynamic INT8" in cand.reason
