"""Runners timed each in a worker process of its own (components/select/isolated.py)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from isolated_recipes import open_env_checking_runner, open_failing_runner, open_nothing
from torch import nn

from vxdeploy.components.common.config import CompilationConfig, SelectionConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.signature import signature_from_onnx
from vxdeploy.components.compile.build import CompileSources, build_candidates
from vxdeploy.components.select.benchmark import CandidateFigures, benchmark_candidates, time_interleaved
from vxdeploy.components.select.isolated import ProcessTimer, WorkerError, start_process_timers

FEEDS = {"x": np.zeros((4, 3), dtype=np.float32)}


def test_a_worker_runs_its_runner_in_another_process_with_the_measurement_environment() -> None:
    # Given a recipe whose runner fails outside the measurement environment
    timer = ProcessTimer("env", open_env_checking_runner)
    try:
        # When it is timed in its worker
        timer.set_feeds(FEEDS)
        times = timer.time_calls(5)
    finally:
        timer.close()

    # Then every call ran (in the worker's environment) and was timed there
    assert len(times) == 5 and all(t >= 0 for t in times)


def test_a_recipe_that_cannot_open_is_left_out_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    timers = start_process_timers([("broken", open_nothing), ("no recipe", None)])

    assert timers == {}
    assert "no such model: /nowhere/model.onnx" in caplog.text


def test_a_failing_call_in_the_worker_raises_with_the_workers_traceback() -> None:
    timer = ProcessTimer("failing", open_failing_runner)
    try:
        timer.set_feeds(FEEDS)
        with pytest.raises(WorkerError, match="this runner always fails"):
            timer.time_calls(1)
        # The worker survives a failed call
        timer.set_feeds(FEEDS)
    finally:
        timer.close()


def test_interleaved_rounds_time_runners_with_a_recipe_in_their_own_process() -> None:
    ref = CandidateFigures("eager", "reference", "fp32", "pytorch", "cpu", reference=True)
    cand = CandidateFigures("env", "onnxruntime_fp32", "fp32", "onnxruntime", "cpu")
    entries = [(ref, _Here()), (cand, _Here())]
    cfg = SelectionConfig(warmup_iterations=1, min_iterations=3, min_seconds=0.0)

    time_interleaved(
        entries, Dataset(dict(FEEDS)), [4], cfg, openers={"env": open_env_checking_runner, "eager": None}
    )

    # The candidate ran in a worker (its recipe's runner), the reference (no recipe) here
    assert cand.latency[4].timed_in == "own process" and cand.latency[4].iterations >= 3
    assert ref.latency[4].timed_in == "shared process"
    assert cand.speedup[4].rounds == len(ref.latency[4].round_ms)


class _Here:
    def __init__(self) -> None:
        self.name, self.device = "eager", "cpu"
        self.max_batch: int | None = None
        self.output_names = ["y"]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.zeros(1)}

    def close(self) -> None:
        pass


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(x).mean((2, 3))
        return y


def test_selection_times_the_candidates_and_the_reference_each_in_their_own_process(tmp_path: Path) -> None:
    # Given a real ONNX candidate and a reference that can be reopened from its recipe
    module = Tiny().eval()
    onnx_path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        module,
        (torch.zeros(2, 1, 4, 4),),
        str(onnx_path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    signature = signature_from_onnx(onnx_path)
    manifest = build_candidates(
        tmp_path / "c",
        CompilationConfig(candidates=["onnxruntime_fp32"]),
        CompileSources(signature, onnx_path),
    )
    from vxdeploy.components.select.runners import reference_runner

    reference = reference_runner(onnx_path, "onnx", signature)
    data = Dataset({"input": np.random.default_rng(0).standard_normal((8, 1, 4, 4)).astype(np.float32)})
    cfg = SelectionConfig(batch_sizes=[1, 4], warmup_iterations=1, min_iterations=3, min_seconds=0.0)

    # When selection's harness measures them
    result = benchmark_candidates(
        manifest,
        tmp_path / "c",
        reference,
        data,
        cfg,
        reference_opener=partial(reference_runner, onnx_path, "onnx", signature),
    )

    # Then each was timed in a process of its own, at every batch size, against the reference
    by_name = {f.name: f for f in result.figures}
    fp32 = by_name["onnxruntime_fp32"]
    assert {lat.timed_in for f in by_name.values() for lat in f.latency.values()} == {"own process"}
    assert sorted(fp32.latency) == [1, 4] and sorted(fp32.speedup) == [1, 4]
    assert fp32.accuracy is not None and fp32.accuracy.cosine_min > 0.99999


@pytest.mark.parametrize("spinning", ["0", "1"])
def test_sessions_opened_for_timing_spin_as_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spinning: str
) -> None:
    from vxdeploy.components.compile import ort

    onnx_path = tmp_path / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), (torch.zeros(1, 1, 4, 4),), str(onnx_path), dynamo=False)
    monkeypatch.setenv(ort.ALLOW_SPINNING_ENV, spinning)

    session = ort.make_session(onnx_path, ort.session_options_dict("all", ["CPUExecutionProvider"]))

    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == spinning
