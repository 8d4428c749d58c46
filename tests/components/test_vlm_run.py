"""``vxdeploy run --local --model builtin://digits-vlm``: a vision-language model through every stage.

One plain run (the command a user types, no settings) serves every test here: the parts go through
export, calibration, compilation and selection one by one, the served repository is a streaming
generator over the selected parts, and the report says what was decided per part and what the
served model generates.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from vxdeploy.components.common import builtin_vlm
from vxdeploy.pipelines.cli import main

pytestmark = pytest.mark.slow

OPTIMIZATION = ("validate", "intake", "export", "calibrate", "compile", "select", "package", "serve_check")


class VlmRun:
    def __init__(self, workdir: Path, rc: int, wall_s: float) -> None:
        self.workdir, self.rc, self.wall_s = workdir, rc, wall_s
        self.report: dict[str, Any] = json.loads((workdir / "report.json").read_text())

    def stage(self, name: str) -> dict[str, Any]:
        return next(s for s in self.report["stages"] if s["stage"] == name)


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory: pytest.TempPathFactory) -> VlmRun:
    workdir = tmp_path_factory.mktemp("vlm") / "run"
    start = time.perf_counter()
    rc = main(["run", "--local", "--model", "builtin://digits-vlm", "--workdir", str(workdir)])
    return VlmRun(workdir, rc, time.perf_counter() - start)


def test_the_run_succeeds_through_every_optimization_stage(vlm_run: VlmRun) -> None:
    statuses = {s["stage"]: s["status"] for s in vlm_run.report["stages"]}

    assert vlm_run.rc == 0, (vlm_run.report.get("error"), vlm_run.report.get("failed_log_tail"))
    assert {s: statuses[s] for s in OPTIMIZATION} == dict.fromkeys(OPTIMIZATION, "succeeded")
    print(f"digits-vlm local run: {vlm_run.wall_s:.0f} s")  # the budget: under 5 minutes here


def test_every_part_has_its_candidates_and_a_decision(vlm_run: VlmRun) -> None:
    assert vlm_run.rc == 0, vlm_run.report.get("error")
    parts = vlm_run.report["generation"]["parts"]

    assert set(parts) == set(builtin_vlm.PARTS)
    for name, part in parts.items():
        assert part["selected"], name
        assert part["candidates"], name
        assert part["decision"], name
    # INT8 is where it pays: the vision encoder was calibrated and judged end to end
    calibrated = vlm_run.report["stage_reports"]["calibrate"]["details"]["parts"]
    assert calibrated["vision_encoder"]["produced"]
    assert not calibrated["decoder_step"]["produced"]


def test_the_report_shows_end_to_end_caption_accuracy_of_fp32_and_of_the_served_generator(
    vlm_run: VlmRun,
) -> None:
    assert vlm_run.rc == 0, vlm_run.report.get("error")
    end_to_end = vlm_run.report["generation"]["end_to_end"]
    served = vlm_run.report["serve_check"]
    markdown = (vlm_run.workdir / "report.md").read_text()

    # captions are scored against the held-out digits' labels: real accuracy, not agreement only
    assert end_to_end["fp32_exact"] > 0.9
    assert end_to_end["fp32_exact"] - end_to_end["selected_exact"] <= 0.005  # the default budget
    # the served generator streams what the selected parts generate in process
    assert served["served_exact"] > 0.9
    assert served["agreement_in_process"] == 1.0
    for figure in ("ttft_ms", "tokens_per_s", "encode_ms"):
        assert served[figure] > 0, figure
    assert served["repeat_hit"]  # the vision encoder's response cache answered a repeated image
    assert "## Generation: per-part decisions" in markdown and "## Generation: end to end" in markdown


def test_the_repository_holds_a_streaming_generator_over_the_selected_parts(vlm_run: VlmRun) -> None:
    assert vlm_run.rc == 0, vlm_run.report.get("error")
    root = Path(vlm_run.report["triton_repository"]) / "model_repository"
    configs = {
        p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in root.glob("*/config.pbtxt")
    }

    generator = configs["digits-vlm"]
    assert generator.backend == "python"
    assert generator.model_transaction_policy.decoupled
    assert set(builtin_vlm.PARTS) <= set(configs)
    assert configs["vision_encoder"].response_cache.enable
    assert configs["vision_encoder"].HasField("dynamic_batching")
