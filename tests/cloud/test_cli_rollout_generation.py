"""`vxdeploy run --local --model builtin://digits-vlm --api-endpoint ...`: a generation model's rollout.

The same command and fakes as tests/cloud/test_cli_rollout.py, with a multi-part model: the deployed
versions stream real captions through the invoke route's ``generate_stream``. A healthy generator is
promoted step by step; one that answers without errors but captions each digit wrongly is rolled
back, traffic back on the model that served.
"""

import json
from pathlib import Path

import pytest
import yaml

from tests.fakes.serve_fakes import ENDPOINT, RunningFakes, serving_fakes
from vxdeploy.pipelines.cli import main

pytestmark = pytest.mark.slow

FAST = ["--set", "selection.batch_sizes=[1, 8]", "--set", "selection.min_seconds=0.05"]


def _run(fakes: RunningFakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict]:
    config = tmp_path / "fakes.yaml"
    config.write_text(yaml.safe_dump(fakes.config))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fakes.storage_address)
    workdir = tmp_path / "run"
    code = main(
        [
            "run",
            "--local",
            "--model",
            "builtin://digits-vlm",
            "--api-endpoint",
            fakes.vertex_address,
            "--config",
            str(config),
            "--workdir",
            str(workdir),
            *FAST,
        ]
    )
    return code, json.loads((workdir / "report.json").read_text())


def test_a_healthy_generator_is_promoted_through_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving_fakes(interval_s=0.5, generation=True) as fakes:
        code, report = _run(fakes, tmp_path, monkeypatch)
        split = dict(fakes.vertex.endpoint(ENDPOINT).traffic_split)

    canary = report["cloud"]["canary"]
    assert code == 0, report["error"]
    assert canary["status"] == "succeeded"
    steps = canary["steps"]
    assert [s["canary %"] for s in steps if s["verdict"] == "pass"] == [10, 25, 50, 100]
    assert fakes.baseline_deployed_model not in split or split[fakes.baseline_deployed_model] == 0
    assert sum(split.values()) == 100


def test_a_generator_with_wrong_captions_is_rolled_back_to_the_serving_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving_fakes(interval_s=0.5, generation=True, canary_wrong_captions=True) as fakes:
        code, report = _run(fakes, tmp_path, monkeypatch)
        split = dict(fakes.vertex.endpoint(ENDPOINT).traffic_split)

    assert code == 1
    assert report["cloud"]["canary"]["status"] == "failed"
    assert "caption" in report["error"] or "agreement" in report["error"], report["error"]
    assert split == {fakes.baseline_deployed_model: 100}
