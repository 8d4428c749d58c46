"""`vxdeploy run --local --model builtin://digits-vlm --api-endpoint ...`: a generation model's rollout.

The same command and fakes as tests/cloud/test_cli_rollout.py, with a multi-part model: the deployed
versions stream real captions through the invoke route's ``generate_stream``. A healthy generator is
promoted step by step; one that answers without errors but captions each digit wrongly is rolled
back, traffic back on the model that served.
"""

from pathlib import Path

import pytest

from tests.fakes.serve_fakes import ENDPOINT, run_local_rollout, serving_fakes

pytestmark = pytest.mark.slow


def test_a_healthy_generator_is_promoted_through_every_step(tmp_path: Path) -> None:
    with serving_fakes(interval_s=0.5, generation=True) as fakes:
        code, report = run_local_rollout(fakes, tmp_path, "--model", "builtin://digits-vlm")
        split = dict(fakes.vertex.endpoint(ENDPOINT).traffic_split)

    canary = report["cloud"]["canary"]
    assert code == 0, report["error"]
    assert canary["status"] == "succeeded"
    steps = canary["steps"]
    assert [s["canary %"] for s in steps if s["verdict"] == "pass"] == [10, 25, 50, 100]
    assert fakes.baseline_deployed_model not in split or split[fakes.baseline_deployed_model] == 0
    assert sum(split.values()) == 100


def test_a_generator_with_wrong_captions_is_rolled_back_to_the_serving_model(tmp_path: Path) -> None:
    with serving_fakes(interval_s=0.5, generation=True, canary_wrong_captions=True) as fakes:
        code, report = run_local_rollout(fakes, tmp_path, "--model", "builtin://digits-vlm")
        split = dict(fakes.vertex.endpoint(ENDPOINT).traffic_split)

    assert code == 1
    assert report["cloud"]["canary"]["status"] == "failed"
    assert "caption" in report["error"] or "agreement" in report["error"], report["error"]
    assert split == {fakes.baseline_deployed_model: 100}
