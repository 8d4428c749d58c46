"""The export and calibration stages on real KFP artifact objects, chained as the pipeline chains them."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model

from vxdeploy.components.calibrate import stage as calibrate_stage
from vxdeploy.components.common.config import (
    DataConfig,
    ExportConfig,
    ModelConfig,
    QuantizationConfig,
    SelectionConfig,
)
from vxdeploy.components.common.errors import DataError
from vxdeploy.components.export import stage as export_stage
from vxdeploy.components.intake.intake import read_signature


def _intake_artifacts(digits_dir: Path, root: Path) -> tuple[Model, Dataset, Dataset]:
    """What the intake stage hands on: the model in a folder with its metadata, and two .npz files."""
    src = root / "source_model"
    src.mkdir(parents=True)
    shutil.copyfile(digits_dir / "digits_cnn.pt2", src / "model.pt2")
    sig = read_signature(src / "model.pt2", "torch_export", ModelConfig())
    source = Model(
        uri=str(src), metadata={"format": "torch_export", "file": "model.pt2", "signature": sig.to_dict()}
    )
    calibration = Dataset(uri=str(digits_dir / "digits_calibration.npz"))
    evaluation = Dataset(uri=str(digits_dir / "digits_eval.npz"))
    return source, calibration, evaluation


@pytest.fixture(scope="module")
def exported(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("stages")
    source, calibration, evaluation = _intake_artifacts(digits_dir, root)
    onnx_model = Model(uri=str(root / "onnx_model"))
    metrics, report = (
        Metrics(uri=str(root / "export_metrics")),
        Artifact(uri=str(root / "export_report.json")),
    )
    start = time.perf_counter()
    export_stage.run(
        source,
        evaluation,
        ModelConfig().model_dump(),
        ExportConfig().model_dump(),
        onnx_model,
        metrics,
        report,
    )
    seconds = time.perf_counter() - start
    return {
        "root": root,
        "onnx_model": onnx_model,
        "metrics": metrics,
        "report": report,
        "calibration": calibration,
        "evaluation": evaluation,
        "seconds": seconds,
    }


def test_export_stage_writes_a_model_with_signature_and_parity_metadata(exported: dict) -> None:
    onnx_model = exported["onnx_model"]

    meta = onnx_model.metadata

    assert (Path(onnx_model.path) / "model.onnx").is_file()
    assert meta["opset"] == 19 and meta["signature"]["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert len(meta["sha256"]) == 64 and meta["parity"]["min_top1_agreement"] == 1.0
    assert exported["metrics"].metadata["parity_max_abs_diff"] < 1e-4


def test_export_stage_report_says_what_it_did(exported: dict) -> None:
    report = json.loads(Path(exported["report"].path).read_text())

    assert report["stage"] == "export" and report["status"] == "succeeded"
    assert report["details"]["parity"][0]["name"] == "output"


def _calibrate(exported: dict, name: str, quantization: dict, data: dict | None = None) -> dict[str, object]:
    root = Path(exported["root"]) / name
    outs = {
        "qdq_model": Model(uri=str(root / "qdq_model")),
        "metrics": Metrics(uri=str(root / "metrics")),
        "table": Markdown(uri=str(root / "table.md")),
        "report": Artifact(uri=str(root / "report.json")),
    }
    start = time.perf_counter()
    calibrate_stage.run(
        exported["onnx_model"],
        exported["calibration"],
        exported["evaluation"],
        data or DataConfig().model_dump(),
        quantization,
        SelectionConfig().model_dump(),
        outs["qdq_model"],
        outs["metrics"],
        outs["table"],
        outs["report"],
    )
    outs["seconds"] = time.perf_counter() - start
    return outs


def test_calibration_stage_accepts_digits_int8_and_writes_every_artifact(exported: dict) -> None:
    outs = _calibrate(exported, "default", QuantizationConfig().model_dump())

    qdq = outs["qdq_model"]
    files = sorted(p.name for p in Path(qdq.path).iterdir())
    assert files == ["accuracy.json", "accuracy.md", "calibration_ranges.json", "model.onnx"]
    assert qdq.metadata["accepted"] is True and qdq.metadata["excluded_layers"] == []
    assert qdq.metadata["fp32_accuracy"] - qdq.metadata["int8_accuracy"] <= 0.5
    assert outs["metrics"].metadata["accepted"] == 1.0
    assert "Verdict: accepted" in Path(outs["table"].path).read_text()


def test_calibration_stage_skips_when_disabled(exported: dict) -> None:
    outs = _calibrate(exported, "disabled", {"enabled": False})

    assert outs["qdq_model"].metadata == {
        "accepted": False,
        "reason": "quantization.enabled is false",
        "produced": False,
    }
    assert json.loads(Path(outs["report"].path).read_text())["status"] == "skipped"


def test_calibration_stage_rejects_too_few_samples(exported: dict, tmp_path: Path) -> None:
    few = tmp_path / "few.npz"
    np.savez(few, input=np.zeros((10, 1, 8, 8), np.float32))
    exported = {**exported, "calibration": Dataset(uri=str(few))}

    with pytest.raises(DataError, match="at least data.min_calibration_samples=64"):
        _calibrate(exported, "few", QuantizationConfig().model_dump())
