"""`vxdeploy run --local --api-endpoint ...` drives a whole rollout against the loopback fakes."""

from pathlib import Path

import pytest

from tests.fakes.serve_fakes import ENDPOINT, run_local_rollout, serving_fakes

pytestmark = pytest.mark.slow


def test_a_healthy_version_is_promoted_through_every_step(tmp_path: Path) -> None:
    with serving_fakes(interval_s=0.5) as fakes:
        code, report = run_local_rollout(fakes, tmp_path)
        split = dict(fakes.vertex.endpoint(ENDPOINT).traffic_split)

    canary = report["cloud"]["canary"]
    assert code == 0, report["error"]
    assert canary["status"] == "succeeded"
    # Each step ends in a passing analysis, in order. On a loaded machine a 0.5 s window can miss
    # (too few requests, a slow p99): the step is then held and analysed again, within the limit.
    steps = canary["steps"]
    assert [s["canary %"] for s in steps if s["verdict"] == "pass"] == [10, 25, 50, 100]
    held = [s for s in steps if s["verdict"] != "pass"]
    assert len(held) <= 1, held  # canary.failure_limit's default
    assert all(s["reason"] != "all checks passed" for s in held)
    assert fakes.baseline_deployed_model not in split or split[fakes.baseline_deployed_model] == 0
    assert sum(split.values()) == 100


def test_a_failing_version_is_rolled_back_to_the_serving_model(tmp_path: Path) -> None:
    with serving_fakes(interval_s=0.5, canary_error_rate=0.3) as fakes:
        code, report = run_local_rollout(fakes, tmp_path)
        split = dict(fakes.vertex.endpoint(ENDPOINT).traffic_split)

    assert code == 1
    assert report["cloud"]["canary"]["status"] == "failed"
    assert "error rate" in report["error"]
    assert split == {fakes.baseline_deployed_model: 100}
