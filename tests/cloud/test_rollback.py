"""`vxdeploy rollback`, the exit handler when it truly cannot recover, and failures after the commit point."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.rollout import FaultWorld, rollout_invariant
from vxdeploy.components.cloud.lease import HOLDER_KEY, PHASE_KEY, read_lease
from vxdeploy.components.cloud.recovery import StrandedRolloutError
from vxdeploy.pipelines.cli import main
from vxdeploy.pipelines.rollback import deployment_for

TTL_S = 600.0


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[FaultWorld]:
    w = FaultWorld(tmp_path, seed=7, lease_ttl_s=TTL_S)
    assert not w.rollout("r1").failed
    yield w
    w.close()


def _kill_after_update(world: FaultWorld, n: int) -> None:
    """Kill the second rollout right after its n-th (0-based) UpdateEndpoint; then the fake serves again."""
    world.vertex.inject("UpdateEndpoint", skip=n, kill=True)
    assert world.rollout("r2").failed
    world.vertex.revive()


def _rollback_cli(world: FaultWorld, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(
        [
            "rollback",
            "--endpoint",
            world.endpoint_name,
            "--api-endpoint",
            world.vertex.address,
            "--deadline-s",
            "10",
        ]
    )
    return code, capsys.readouterr().out


# UpdateEndpoint calls of a clean second rollout: 0 lease, 1 deploy operation, 2 canary (deploy),
# 3 canary (canary step), 4 step 1 (25%), 5 step 2 (50%), 6 step 3 (100%), 7 commit, 8 cleanup
# renewal, 9 release.
AT_50_PERCENT = 5
AT_COMMIT = 7


def test_an_exit_handler_that_cannot_recover_says_what_is_left_and_the_command(world: FaultWorld) -> None:
    # Given a run killed at 50% and an outage of GetEndpoint longer than the exit handler's deadline
    _kill_after_update(world, AT_50_PERCENT)
    split = dict(world.vertex.endpoint("vxdeploy-endpoint").traffic_split)
    world.vertex.inject("GetEndpoint", burst_s=5.0)

    # When the exit handler runs with a 1 s deadline
    with pytest.raises(StrandedRolloutError) as raised:
        world.exit_handler("r2", deadline_s=1.0)

    # Then it names the one repair command, and the lease still expires within its time-to-live
    world.vertex.revive()
    lease = read_lease(world.vertex.endpoint("vxdeploy-endpoint"))
    assert (
        f"vxdeploy rollback --endpoint {world.endpoint_name}" in str(raised.value),
        sorted(split.values()),
        lease is not None and lease.phase == "canary-2",
        lease is not None and lease.expires_at - time.time() <= TTL_S,
    ) == (True, [50, 50], True, True)


def test_rollback_restores_a_stranded_endpoint_from_its_recorded_state(
    world: FaultWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an endpoint a killed run left at 50/50 on an unvalidated canary, its lease held
    _kill_after_update(world, AT_50_PERCENT)

    # When an operator runs the repair command
    code, out = _rollback_cli(world, capsys)

    # Then the old version serves 100% with its aliases, the canary is gone and the lease released
    endpoint = world.vertex.endpoint("vxdeploy-endpoint")
    assert (
        code,
        "phase 'canary-2' (before its commit point)" in out,
        rollout_invariant(world, old_run="r1", new_run="r2", ttl_s=TTL_S),
        endpoint.labels.get(HOLDER_KEY),
        len(endpoint.deployed_models),
    ) == (0, True, "old", None, 1)


def test_rollback_after_the_commit_point_finishes_the_promotion(
    world: FaultWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a run killed right after its commit point (new version at 100% with its aliases)
    _kill_after_update(world, AT_COMMIT)

    # When an operator runs the repair command
    code, out = _rollback_cli(world, capsys)

    # Then the new version keeps serving, the old one is undeployed and the lease released
    assert (
        code,
        "after its commit point" in out,
        rollout_invariant(world, old_run="r1", new_run="r2", ttl_s=TTL_S),
        len(world.vertex.endpoint("vxdeploy-endpoint").deployed_models),
    ) == (0, True, "new", 1)


def test_rollback_of_an_endpoint_without_a_rollout_changes_nothing(
    world: FaultWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an endpoint serving r1 with no lease / When rollback runs / Then it says so and moves nothing
    updates = len(world.vertex.calls_of("UpdateEndpoint"))
    code, out = _rollback_cli(world, capsys)
    assert (code, "nothing to do" in out, len(world.vertex.calls_of("UpdateEndpoint"))) == (0, True, updates)


def test_a_failure_after_the_commit_point_leaves_the_new_version_serving_with_its_aliases(
    world: FaultWorld,
) -> None:
    # Given every undeploy of the old version failing for longer than the cleanup keeps trying
    world.deploy_cfg = world.deploy_cfg.model_copy(update={"operation_timeout_s": 0.5})
    for _ in range(200):
        world.vertex.fail_next_operation("UndeployModel", "injected: undeploy failed")

    # When the second rollout runs
    attempt = world.rollout("r2")
    endpoint = world.vertex.endpoint("vxdeploy-endpoint")
    serving_during = rollout_invariant(world, old_run="r1", new_run="r2", ttl_s=TTL_S)
    world.vertex.faults.fail_operations.clear()
    outcome = world.exit_handler("r2")

    # Then the rollout stayed promoted (the cleanup error reported), and the exit handler finished it
    assert (
        attempt.decision,
        bool(attempt.cleanup_error),
        endpoint.labels.get(PHASE_KEY),
        serving_during,
        outcome.action,
        rollout_invariant(world, old_run="r1", new_run="r2", ttl_s=TTL_S),
        len(world.vertex.endpoint("vxdeploy-endpoint").deployed_models),
    ) == ("promoted", True, "promoted", "new", "finished", "new", 1)


def test_three_rollouts_leave_one_deployed_model_by_default(world: FaultWorld) -> None:
    # Given the endpoint serving r1 / When two more rollouts promote
    results = [world.rollout(run).decision for run in ("r2", "r3")]

    # Then only the last version stays deployed (no replica billed for an old one)
    assert (results, len(world.vertex.endpoint("vxdeploy-endpoint").deployed_models)) == (
        ["promoted", "promoted"],
        1,
    )


def test_keep_previous_keeps_exactly_the_version_that_served_before(tmp_path: Path) -> None:
    # Given canary.keep_previous
    world = FaultWorld(tmp_path, seed=8, keep_previous=True)
    try:
        # When three rollouts promote
        results = [world.rollout(run).decision for run in ("r1", "r2", "r3")]

        # Then r3 serves 100% and r2 stays deployed at 0%; r1 is undeployed
        endpoint = world.vertex.endpoint("vxdeploy-endpoint")
        versions = {dm.id: dm.model_version_id for dm in endpoint.deployed_models}
        split = {k: v for k, v in endpoint.traffic_split.items() if v}
        assert (results, sorted(versions.values()), [versions[k] for k in split]) == (
            ["promoted"] * 3,
            ["2", "3"],
            ["3"],
        )
    finally:
        world.close()


def test_the_endpoint_resource_name_gives_project_and_location() -> None:
    # Given the name the exit handler prints / When it is parsed / Then project and location come from it
    cfg = deployment_for("projects/123/locations/europe-west4/endpoints/42")
    assert (cfg.project, cfg.location, cfg.endpoint) == (
        "123",
        "europe-west4",
        "projects/123/locations/europe-west4/endpoints/42",
    )
