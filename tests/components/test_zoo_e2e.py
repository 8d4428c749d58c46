"""The zoo end to end: each model users bring goes through ``vxdeploy run --local`` and is served right.

For every zoo model (:mod:`tests.zoo.models`): the run exits 0; Triton, serving the packaged
repository, answers like the eager FP32 PyTorch model, output by output, by each output's own
metric; and ``config.pbtxt`` carries the model's own input and output names, dtypes and dims
(dynamic sequence dims as -1).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.zoo import models
from tests.zoo.models import ZooModel
from vxdeploy.components.common.config import load_config
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.intake.intake import intake
from vxdeploy.components.package.model_config import numpy_dtype
from vxdeploy.components.package.repository import MODEL_REPOSITORY_DIR
from vxdeploy.components.package.serve_check import serve_copy
from vxdeploy.components.package.tritonserver import find_bundled_triton, running_triton
from vxdeploy.components.verify.accuracy import measure_accuracy, output_metrics, targets_for
from vxdeploy.components.verify.runners import TritonRunner, run_batches
from vxdeploy.pipelines.cli import main

pytestmark = pytest.mark.slow

FAST = {
    "selection.batch_sizes": [1, 8],
    "selection.min_iterations": 5,
    "selection.min_seconds": 0.05,
    "selection.max_eval_samples": 64,
    "triton.serve_check_requests": 16,
    "triton.serve_check_sweep": [1, 16],
    "triton.serve_check_sweep_window_s": 0.5,
    "compilation.candidates": ["onnxruntime_fp32", "onnxruntime_int8", "onnxruntime_int8_dynamic"],
    "quantization.max_excluded_layers": 2,
    "quantization.sensitivity_candidates": 4,
}
"""Small measurement settings and a short INT8 fallback: the zoo tests check shapes and numbers
(INT8 may be refused), not speed; tests/unit/test_calibration*.py cover the fallback."""

_MAX_CALIBRATION = {"quantization.method": "max"}
PER_MODEL: dict[str, dict[str, Any]] = {
    # The kwargs + ModelOutput encoder also builds AOT Inductor: its build check and its Triton
    # Python-backend model must call the program by keyword and flatten the ModelOutput.
    "bert_encoder": {
        **_MAX_CALIBRATION,
        "compilation.candidates": [
            "onnxruntime_fp32",
            "onnxruntime_int8",
            "onnxruntime_int8_dynamic",
            "aoti",
        ],
    },
    "vit_classifier": _MAX_CALIBRATION,
    # Fifty layers of FP32 reassociation: a few of 32000 logits differ by 2e-4 (cosine 1.0).
    # Max calibration: entropy's histograms over ~120 activations cost ~80 s here, and the
    # random-init backbone misses the gate either way (tests/unit/test_calibration*.py cover entropy).
    "resnet50": {"export.atol": 1e-3, **_MAX_CALIBRATION, "quantization.sensitivity_candidates": 2},
    "minilm_sentence_embedding": _MAX_CALIBRATION,
    "minilm_onnx": _MAX_CALIBRATION,
}


@dataclass
class ZooRun:
    zoo: ZooModel
    config_path: Path
    rc: int
    report: dict[str, Any]
    wall_s: float

    @property
    def repository(self) -> Path:
        return Path(self.report["triton_repository"])

    def signature(self, workdir: Path) -> ModelSignature:
        """The signature intake gives the model under this run's config (tasks and metrics set)."""
        config = load_config(self.config_path)
        return intake(config.model, config.data, workdir).signature


_RUNS: dict[str, ZooRun] = {}


def zoo_run(name: str, tmp_path_factory: pytest.TempPathFactory) -> ZooRun:
    """Build the zoo model and run ``vxdeploy run --local`` on it once per session."""
    if name not in _RUNS:
        folder = tmp_path_factory.mktemp(name)
        zoo = models.BUILDERS[name](folder)
        config_path = folder / "run.yaml"
        overrides = zoo.config_overrides(**{**FAST, **PER_MODEL.get(name, {})})
        config_path.write_text(yaml.safe_dump(_nested(overrides)))
        start = time.perf_counter()
        rc = main(["run", "--local", "--config", str(config_path), "--workdir", str(folder / "run")])
        wall = time.perf_counter() - start
        report = json.loads((folder / "run" / "report.json").read_text())
        _RUNS[name] = ZooRun(zoo, config_path, rc, report, wall)
        _record(_RUNS[name])
    return _RUNS[name]


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, field = key.partition(".")
        node = out.setdefault(section, {})
        parts = field.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _record(run: ZooRun) -> None:
    """One line per run for the zoo table (tests/zoo/RESULTS.jsonl is written only when asked)."""
    import os

    target = os.environ.get("VXDEPLOY_ZOO_RESULTS")
    if not target:
        return
    rep = run.report
    chosen = next((c for c in rep.get("candidates", []) if c.get("status") == "SELECTED"), {})
    row = {
        "model": run.zoo.name,
        "weights": run.zoo.weights,
        "rc": run.rc,
        "selected": rep.get("selected"),
        "speedup": {k: v for k, v in chosen.items() if k.startswith("speedup")},
        "selection_reason": rep.get("selection_reason"),
        "quantization": rep.get("quantization"),
        "wall_s": round(run.wall_s, 1),
    }
    with open(target, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


NAMES = sorted(models.BUILDERS)


@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_runs_end_to_end_with_rc_0(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = zoo_run(name, tmp_path_factory)

    failed = [
        (s["stage"], s.get("reason") or s.get("error"))
        for s in run.report["stages"]
        if s["status"] == "failed"
    ]
    assert run.rc == 0, (run.report.get("error"), failed)
    assert {s["stage"]: s["status"] for s in run.report["stages"]}["serve_check"] == "succeeded"


@pytest.mark.parametrize("name", NAMES)
def test_config_pbtxt_carries_the_models_own_names_dtypes_and_dims(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = zoo_run(name, tmp_path_factory)
    assert run.rc == 0, run.report.get("error")

    model_dir = run.repository / MODEL_REPOSITORY_DIR / run.report["config"]["model"]["name"]
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())

    def tensors(items: Any) -> dict[str, tuple[str, list[int]]]:
        return {t.name: (numpy_dtype(t.data_type), list(t.dims)) for t in items}

    assert config.max_batch_size > 0
    assert tensors(config.input) == run.zoo.inputs
    assert tensors(config.output) == run.zoo.outputs
    assert [t.name for t in config.output] == list(run.zoo.outputs)  # the model's own order


@pytest.mark.parametrize("name", NAMES)
def test_served_model_answers_like_fp32_pytorch_per_output_per_metric(
    name: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    run = zoo_run(name, tmp_path_factory)
    assert run.rc == 0, run.report.get("error")
    install, reason = find_bundled_triton()
    if install is None:
        pytest.skip(reason)
    signature = run.signature(tmp_path / "intake")
    evaluation = load_dataset(run.zoo.eval_path, signature, what="eval")
    samples = evaluation.take(min(len(evaluation), 32))
    reference = run.zoo.reference(samples.inputs)
    model_name = run.report["config"]["model"]["name"]

    served_repo = tmp_path / MODEL_REPOSITORY_DIR
    serve_copy(run.repository / MODEL_REPOSITORY_DIR, served_repo, gpu_available=False)
    with running_triton(served_repo, install=install, workdir=tmp_path / "server") as server:
        runner = TritonRunner(server.grpc_url, model_name, signature)
        try:
            served = run_batches(runner, samples.inputs, (8,))
        finally:
            runner.close()

    metrics = output_metrics(signature)
    targets = targets_for(metrics, samples.targets, samples.labels)
    verdict = measure_accuracy(
        reference, served, metrics=metrics, targets=targets, accuracy_budget=5.0, min_cosine=0.99
    )
    assert list(served) == list(reference)
    assert verdict.within_budget, verdict.describe()
    assert {o.name: o.metric for o in verdict.outputs} == {n: m.metric for n, m in metrics.items()}


def test_every_zoo_builder_has_an_end_to_end_test() -> None:
    assert sorted(models.BUILDERS) == NAMES and len(NAMES) >= 7
