"""The benchmark harness: latency statistics, adaptive iterations, accuracy, candidates measured alike."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vxdeploy.components.common.config import CompilationConfig, SelectionConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.signature import ModelSignature, TensorSpec, signature_from_onnx
from vxdeploy.components.compile.build import CompileSources, build_candidates
from vxdeploy.components.select.benchmark import (
    AccuracyFigures,
    CandidateFigures,
    batch_feeds,
    benchmark_candidates,
    compare_with_reference,
    evaluation_batch_sizes,
    latency_figures,
    measure_latency,
    time_interleaved,
)
from vxdeploy.components.verify.accuracy import output_metrics, resolve_output_metrics, targets_for
from vxdeploy.components.verify.runners import TorchRunner


class CountingRunner:
    """Advances a fake clock by ``cost_s`` per call, so iteration counts are exact."""

    def __init__(self, cost_s: float, max_batch: int | None = None) -> None:
        self.name, self.device, self.max_batch = "counting", "cpu", max_batch
        self.now = 0.0
        self.calls = 0
        self.cost_s = cost_s

    def clock(self) -> float:
        return self.now

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        self.now += self.cost_s
        return [np.zeros((len(feeds["x"]), 2), dtype=np.float32)]

    def close(self) -> None:
        pass


FEEDS = {"x": np.zeros((8, 4), dtype=np.float32)}


def test_percentiles_throughput_and_spread_come_from_the_timings() -> None:
    times = [0.010] * 8 + [0.020, 0.100]

    lat = latency_figures(8, times)

    assert lat.p50_ms == pytest.approx(10.0)
    assert lat.p99_ms == pytest.approx(92.8)
    assert lat.throughput == pytest.approx(800.0)
    assert lat.throughput_mean == pytest.approx(400.0)
    assert lat.iqr_pct == pytest.approx(0.0) and lat.cv_pct > 100


def test_fast_model_runs_until_min_seconds() -> None:
    runner = CountingRunner(cost_s=0.01)

    lat = measure_latency(runner, FEEDS, warmup=2, min_iterations=5, min_seconds=0.2, clock=runner.clock)

    assert lat.iterations == 20 and runner.calls == 22


def test_slow_model_runs_min_iterations() -> None:
    runner = CountingRunner(cost_s=1.0)

    lat = measure_latency(runner, FEEDS, warmup=0, min_iterations=3, min_seconds=0.5, clock=runner.clock)

    assert lat.iterations == 3 and lat.batch_size == 8


def _judge(
    reference: np.ndarray, candidate: np.ndarray, name: str, labels: np.ndarray | None = None
) -> AccuracyFigures:
    inputs = (TensorSpec("x", "float32", ("batch", 4)),)
    outputs = (TensorSpec(name, "float32", ("batch", *reference.shape[1:])),)
    signature = resolve_output_metrics(
        ModelSignature(inputs, outputs), "classification", {}, labels=labels is not None
    )
    targets = targets_for(output_metrics(signature), {}, labels)
    return compare_with_reference({name: reference}, {name: candidate}, signature, SelectionConfig(), targets)


LOGITS = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 1.5, 0.0]], dtype=np.float32)


def test_identical_outputs_agree_fully() -> None:
    acc = _judge(LOGITS, LOGITS.copy(), "logits")

    assert acc.cosine_mean == pytest.approx(1.0)
    assert (acc.max_abs_diff, acc.top1_agreement, acc.drop_points) == (0.0, 1.0, 0.0)
    assert acc.drop_basis == "top1_agreement"


def test_one_flipped_prediction_in_four_drops_agreement_by_25_points() -> None:
    flipped = LOGITS.copy()
    flipped[3] = [1.5, 2.0, 0.0]

    acc = _judge(LOGITS, flipped, "logits")

    assert acc.top1_agreement == 0.75 and acc.drop_points == pytest.approx(25.0)
    assert acc.cosine_min < 1.0 and acc.max_abs_diff == pytest.approx(0.5)


def test_with_labels_the_drop_is_in_task_accuracy() -> None:
    labels = np.array([0, 1, 2, 1])  # the reference gets 3 of 4
    flipped = LOGITS.copy()
    flipped[3] = [1.5, 2.0, 0.0]  # the candidate now gets the fourth right too

    acc = _judge(LOGITS, flipped, "logits", labels)

    assert (acc.reference_accuracy, acc.task_accuracy) == (0.75, 1.0)
    assert acc.drop_points == pytest.approx(-25.0) and acc.drop_basis == "top1_accuracy"


def test_non_classifier_outputs_are_judged_by_cosine_only() -> None:
    emb = np.random.default_rng(0).standard_normal((5, 1, 16)).astype(np.float32)

    acc = _judge(emb, emb * 2, "embedding")

    assert acc.drop_points is None and acc.cosine_mean == pytest.approx(1.0)


def test_all_zero_outputs_on_both_sides_agree() -> None:
    zeros = np.zeros((2, 3), dtype=np.float32)

    assert _judge(zeros, zeros, "y").cosine_min == 1.0


def test_fixed_batch_model_is_timed_at_its_batch_only() -> None:
    static = ModelSignature((TensorSpec("x", "float32", (4, 3)),), (TensorSpec("y", "float32", (4, 2)),))

    assert evaluation_batch_sizes(static, SelectionConfig(batch_sizes=[1, 8])) == [4]


def test_batches_larger_than_the_data_repeat_real_samples() -> None:
    data = Dataset({"x": np.arange(3, dtype=np.float32).reshape(3, 1)})

    feeds = batch_feeds(data, 7)

    assert feeds["x"].ravel().tolist() == [0, 1, 2, 0, 1, 2, 0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    path = tmp_path_factory.mktemp("bench") / "model.onnx"
    torch.onnx.export(
        module,
        (torch.zeros(2, 1, 4, 4),),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=19,
        dynamo=False,
    )
    return module, path


FAST = SelectionConfig(batch_sizes=[1, 4], warmup_iterations=1, min_iterations=3, min_seconds=0.0)


def test_reference_and_every_candidate_are_measured_the_same_way(
    tiny: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    module, onnx_path = tiny
    signature = signature_from_onnx(onnx_path)
    cfg = CompilationConfig(candidates=["onnxruntime_fp32", "onnxruntime_int8"])
    manifest = build_candidates(tmp_path, cfg, CompileSources(signature, onnx_path))
    data = Dataset(
        {"input": np.random.default_rng(0).standard_normal((10, 1, 4, 4)).astype(np.float32)},
        np.zeros(10, dtype=np.int64),
    )
    reference = TorchRunner("pytorch_eager", module, signature)

    result = benchmark_candidates(manifest, tmp_path, reference, data, FAST)

    ref, fp32, int8 = result.figures
    assert ref.reference and ref.name == "pytorch_eager" and sorted(ref.latency) == [1, 4]
    assert fp32.name == "onnxruntime_fp32" and sorted(fp32.latency) == [1, 4]
    assert fp32.accuracy is not None and fp32.accuracy.cosine_min > 0.99999 and fp32.accuracy.samples == 10
    assert fp32.accuracy.reference_accuracy is not None
    assert int8.rejected_reason.startswith("not built (skipped): no INT8 Q/DQ model") and not int8.latency


def test_batches_beyond_a_runner_profile_are_reported_not_run(
    tiny: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    module, onnx_path = tiny
    manifest = build_candidates(
        tmp_path,
        CompilationConfig(candidates=["onnxruntime_fp32"]),
        CompileSources(signature_from_onnx(onnx_path), onnx_path),
    )
    limited = TorchRunner("limited", module, signature_from_onnx(onnx_path))
    limited.max_batch = 2
    data = Dataset({"input": np.zeros((6, 1, 4, 4), dtype=np.float32)})
    figures = CandidateFigures("limited", "aoti", "fp32", "aoti", "cpu")

    result = benchmark_candidates(
        manifest,
        tmp_path,
        TorchRunner("ref", module, signature_from_onnx(onnx_path)),
        data,
        FAST,
        extra_runners=[(figures, limited)],
    )

    measured = next(f for f in result.figures if f.name == "limited")
    assert sorted(measured.latency) == [1] and "max 2" in measured.not_measured[4]
    assert measured.accuracy is not None and measured.accuracy.samples == 6


class LoadedMachine:
    """A fake clock whose load doubles after ``switch_s`` seconds, as when a neighbour starts a job."""

    def __init__(self, switch_s: float) -> None:
        self.now, self.switch_s = 0.0, switch_s

    def clock(self) -> float:
        return self.now

    def load(self) -> float:
        return 1.0 if self.now < self.switch_s else 2.0


class LoadedRunner:
    """Costs ``cost_s`` times the machine's load per call."""

    def __init__(
        self, name: str, cost_s: float, machine: LoadedMachine, max_batch: int | None = None
    ) -> None:
        self.name, self.device, self.max_batch = name, "cpu", max_batch
        self.cost_s, self.machine = cost_s, machine

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.machine.now += self.cost_s * self.machine.load()
        return {"y": np.zeros((len(feeds["x"]), 2), dtype=np.float32)}

    def close(self) -> None:
        pass


def test_interleaved_rounds_keep_the_ratio_when_the_load_changes_midway() -> None:
    # Given eager at 10 ms and a candidate at 5 ms per call, and a machine whose load doubles midway
    machine = LoadedMachine(switch_s=1.0)
    ref = CandidateFigures("eager", "reference", "fp32", "pytorch", "cpu", reference=True)
    cand = CandidateFigures("fast", "onnxruntime_fp32", "fp32", "onnxruntime", "cpu")
    entries = [(ref, LoadedRunner("eager", 0.010, machine)), (cand, LoadedRunner("fast", 0.005, machine))]
    cfg = SelectionConfig(warmup_iterations=1, min_iterations=20, min_seconds=0.5)

    # When timing them in interleaved rounds
    time_interleaved(entries, Dataset({"x": FEEDS["x"]}), [8], cfg, clock=machine.clock)

    # Then the speed-up is 2x with no spread, although each runner's own latencies moved 2x
    speedup = cand.speedup[8]
    assert speedup.ratio == pytest.approx(2.0)
    assert speedup.ratio_p25 == pytest.approx(2.0) and speedup.verdict == "faster"
    assert ref.latency[8].max_ms == pytest.approx(2 * ref.latency[8].min_ms)
    assert len(ref.latency[8].round_ms) == len(cand.latency[8].round_ms) >= 20


def test_interleaved_rounds_time_fast_and_slow_runners_for_about_the_same_time() -> None:
    machine = LoadedMachine(switch_s=1e9)
    slow = CandidateFigures("slow", "aoti", "fp32", "aoti", "cpu")
    fast = CandidateFigures("fast", "onnxruntime_fp32", "fp32", "onnxruntime", "cpu")
    entries = [(slow, LoadedRunner("slow", 0.050, machine)), (fast, LoadedRunner("fast", 0.001, machine))]

    cfg = SelectionConfig(warmup_iterations=0, min_iterations=10, min_seconds=0.45)
    time_interleaved(entries, Dataset({"x": FEEDS["x"]}), [8], cfg, clock=machine.clock)

    assert slow.latency[8].iterations == 10
    assert fast.latency[8].seconds == pytest.approx(slow.latency[8].seconds, rel=0.1)


def test_interleaved_rounds_skip_batches_beyond_a_runner_profile() -> None:
    machine = LoadedMachine(switch_s=1e9)
    capped = CandidateFigures("trt", "tensorrt_fp16", "fp16", "tensorrt", "cuda")
    entries = [(capped, LoadedRunner("trt", 0.001, machine, max_batch=8))]

    time_interleaved(entries, Dataset({"x": FEEDS["x"]}), [8, 32], SelectionConfig(min_seconds=0.01))

    assert set(capped.latency) == {8} and "above the engine's optimization profile" in capped.not_measured[32]
