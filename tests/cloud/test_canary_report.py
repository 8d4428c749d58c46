"""What the canary and its exit handler say in the run report: the step table and the rollback's reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.rollout import FAILING, HEALTHY, PROJECT, InMemoryMetrics, RolloutHarness
from tests.fakes.vertex import FakeVertex
from vxdeploy.components.cloud.labels import MANAGED_BY_KEY


@pytest.fixture()
def fake() -> Iterator[FakeVertex]:
    with FakeVertex(project=PROJECT) as f:
        f.seed_serving_endpoint(
            "vxdeploy-endpoint", labels={MANAGED_BY_KEY: "vxdeploy"}, endpoint_id="vxdeploy-endpoint"
        )
        yield f


def test_the_100_percent_step_names_the_baseline_window_it_was_compared_with(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given a healthy canary promoted through 10, 25, 50 and 100 %
    harness = RolloutHarness(fake, tmp_path)
    run = harness.run_canary("run-1", harness.deploy("run-1"), InMemoryMetrics(default=HEALTHY))

    # When its step table is read
    steps = run.report["details"]["steps"]
    analyses = run.report["details"]["analyses"]

    # Then the 100 % step shows no baseline figures of its own and says they are step 3's
    assert [s["canary %"] for s in steps] == [10, 25, 50, 100]
    assert (steps[-1]["baseline requests"], steps[-1]["baseline p99 ms"]) == ("-", "-")
    assert "compared with step 3's baseline" in steps[-1]["reason"]
    assert [a["baseline_step"] for a in analyses] == [None, None, None, 3]
    assert "| 100 | 1 |" in run.table and "compared with step 3's baseline" in run.table


def test_the_exit_handler_of_a_rolled_back_run_does_not_claim_traffic_was_untouched(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given a canary that failed its analyses and rolled itself back
    harness = RolloutHarness(fake, tmp_path)
    deployed = harness.deploy("run-1")
    run = harness.run_canary(
        "run-1", deployed, InMemoryMetrics({deployed.deployed_model_id: FAILING}, default=HEALTHY)
    )
    assert run.report["summary"]["decision"] == "rolled_back"

    # When the exit handler runs for the failed pipeline
    report = harness.rollback("run-1", "FAILED")

    # Then it says there is nothing left to roll back, and where traffic stays
    split = dict(fake.endpoint("vxdeploy-endpoint").traffic_split)
    assert report["summary"]["action"] == "none"
    assert "untouched" not in report["reason"]
    assert "nothing left to roll back" in report["reason"] and str(split) in report["reason"]
