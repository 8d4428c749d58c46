"""The select stage from artifacts to artifacts: a tiny model compiled, measured and selected."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.errors import ServiceLevelError
from vxdeploy.components.common.signature import signature_from_onnx
from vxdeploy.components.compile import stage as compile_stage
from vxdeploy.components.select import stage as select_stage


class Metrics:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


def artifact(path: Path, **metadata: Any) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), metadata=dict(metadata), uri="")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimpleNamespace]:
    """Source .pt2, FP32 ONNX, eval data and an ONNX Runtime FP32 candidate, as artifacts."""
    d = tmp_path_factory.mktemp("select")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(40, 1, 4, 4)
    (d / "src").mkdir()
    batch = torch.export.Dim("batch", min=1, max=256)
    torch.export.save(
        torch.export.export(module, (x[:2],), dynamic_shapes=({0: batch},)), str(d / "src" / "model.pt2")
    )
    (d / "onnx").mkdir()
    torch.onnx.export(
        module,
        (x[:2],),
        str(d / "onnx" / "model.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=19,
        dynamo=False,
    )
    with torch.no_grad():
        labels = module(x).argmax(1).numpy()
    labels[:4] = (labels[:4] + 1) % 3  # the reference is right on 36 of 40
    Dataset({"input": x.numpy()}, labels).save(d / "eval.npz")
    signature = signature_from_onnx(d / "onnx" / "model.onnx").to_dict()
    arts = {
        "source": artifact(d / "src", format="torch_export", file="model.pt2", signature=signature),
        "onnx": artifact(d / "onnx", signature=signature),
        "eval": artifact(d / "eval.npz"),
        "candidates": artifact(d / "candidates"),
    }
    compile_stage.run(
        arts["source"],
        arts["onnx"],
        artifact(d / "qdq", produced=False, accepted=False, reason="disabled"),
        {"candidates": ["onnxruntime_fp32", "onnxruntime_int8"]},
        "",
        0,
        arts["candidates"],
        Metrics(),
        artifact(d / "compile_report.json"),
    )
    return arts


FAST = {"batch_sizes": [1, 8], "warmup_iterations": 1, "min_iterations": 3, "min_seconds": 0.0}


def run_select(
    arts: dict[str, SimpleNamespace],
    out: Path,
    selection: dict[str, Any],
    service_levels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    outputs = {
        "selected": artifact(out / "selected"),
        "benchmark": artifact(out / "benchmark.json"),
        "metrics": Metrics(),
        "table": artifact(out / "table.md"),
        "report": artifact(out / "report.json"),
    }
    select_stage.run(
        arts["candidates"],
        arts["source"],
        arts["eval"],
        selection,
        service_levels or {},
        {"accelerator_type": "", "accelerator_count": 0, "machine_type": "n1-standard-4"},
        "",
        0,
        outputs["selected"],
        outputs["benchmark"],
        outputs["metrics"],
        outputs["table"],
        outputs["report"],
    )
    return outputs


def test_selected_model_holds_the_winners_files_and_metadata(
    compiled: dict[str, SimpleNamespace], tmp_path: Path
) -> None:
    out = run_select(compiled, tmp_path, FAST)

    meta = out["selected"].metadata
    assert (meta["name"], meta["kind"], meta["precision"], meta["runtime"], meta["file"]) == (
        "onnxruntime_fp32",
        "onnxruntime_fp32",
        "fp32",
        "onnxruntime",
        "model.onnx",
    )
    assert sorted(p.name for p in (tmp_path / "selected").iterdir()) == ["model.onnx", "session_options.json"]
    assert meta["signature"] == compiled["onnx"].metadata["signature"]
    assert meta["figures"]["accuracy"]["task_accuracy"] == pytest.approx(0.9)
    assert set(meta["figures"]["latency"]) == {"1", "8"}


def test_decision_goes_to_report_metrics_table_and_benchmark(
    compiled: dict[str, SimpleNamespace], tmp_path: Path
) -> None:
    out = run_select(compiled, tmp_path, FAST)

    report = json.loads((tmp_path / "report.json").read_text())
    bench = json.loads((tmp_path / "benchmark.json").read_text())
    table = (tmp_path / "table.md").read_text()
    assert (
        report["summary"]["selected"] == "onnxruntime_fp32"
        and "max_throughput" in report["summary"]["reason"]
    )
    assert bench["decision"]["rejected"]["onnxruntime_int8"].startswith("not built (skipped)")
    assert [f["name"] for f in bench["figures"]] == ["pytorch_eager", "onnxruntime_fp32", "onnxruntime_int8"]
    assert table.startswith("**Selected: onnxruntime_fp32**") and "| pytorch_eager |" in table
    assert (
        out["metrics"].logged["selected_cosine"] > 0.9999 and "selected_speedup_b8" in out["metrics"].logged
    )


def test_no_candidate_within_budget_fails_after_writing_the_evidence(
    compiled: dict[str, SimpleNamespace], tmp_path: Path
) -> None:
    impossible = {**FAST, "policy": "max_throughput_within_latency_budget", "latency_budget_ms": 1e-6}

    with pytest.raises(ServiceLevelError, match="latency_budget_ms"):
        run_select(compiled, tmp_path, impossible)

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "failed" and (tmp_path / "table.md").is_file()
    assert not (tmp_path / "selected").exists()


def test_eval_data_that_does_not_fit_the_model_is_a_data_error(
    compiled: dict[str, SimpleNamespace], tmp_path: Path
) -> None:
    from vxdeploy.components.common.errors import DataError

    np.savez(tmp_path / "bad.npz", pixels=np.zeros((4, 1, 4, 4), dtype=np.float32))
    arts = {**compiled, "eval": artifact(tmp_path / "bad.npz")}

    with pytest.raises(DataError, match="missing"):
        run_select(arts, tmp_path, FAST)


def test_an_impossible_latency_target_stops_the_run_naming_it_and_the_best_figure(
    compiled: dict[str, SimpleNamespace], tmp_path: Path
) -> None:
    named = r"service_levels.p50_latency_ms=1e-06: the lowest p50 measured is"
    with pytest.raises(ServiceLevelError, match=named):
        run_select(compiled, tmp_path, FAST, {"p50_latency_ms": 1e-6})

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "failed"
    assert not (tmp_path / "selected").exists()


def test_the_cost_table_names_the_cheapest_candidate_meeting_the_targets(
    compiled: dict[str, SimpleNamespace], tmp_path: Path
) -> None:
    run_select(compiled, tmp_path, FAST, {"p50_latency_ms": 1000, "requests_per_second": 50})

    report = json.loads((tmp_path / "report.json").read_text())
    cost = report["details"]["cost"]
    assert report["summary"]["cheapest"] == "onnxruntime_fp32"
    assert "n1-standard-4" in cost["markdown"]
    assert "## Cost at the target load" in (tmp_path / "table.md").read_text()
