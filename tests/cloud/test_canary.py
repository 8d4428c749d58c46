"""Canary stage and exit handler against the Vertex AI fake, with per-deployed-model metrics injected."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.rollout import FAILING, HEALTHY, NO_DATA, PROJECT, InMemoryMetrics, RolloutHarness
from tests.fakes.vertex import FakeVertex, ServingProfile
from vxdeploy.components.canary.metrics import WindowStats
from vxdeploy.components.canary.rollout import split_for_step
from vxdeploy.components.cloud.labels import MANAGED_BY_KEY
from vxdeploy.components.cloud.lease import EXPIRES_KEY, HOLDER_KEY, PREVIOUS_PREFIX, read_lease
from vxdeploy.components.common.errors import CanaryRolledBackError, RolloutConflictError


@pytest.fixture()
def fake() -> Iterator[FakeVertex]:
    with FakeVertex(project=PROJECT) as f:
        yield f


@pytest.fixture()
def serving(fake: FakeVertex) -> str:
    """An endpoint vxdeploy made earlier, serving one model at 100%; returns that deployed model's id."""
    _, dm_id = fake.seed_serving_endpoint(
        "vxdeploy-endpoint", labels={MANAGED_BY_KEY: "vxdeploy"}, endpoint_id="vxdeploy-endpoint"
    )
    return dm_id


def splits_sent(fake: FakeVertex) -> list[dict[str, int]]:
    """Every traffic split the client sent, in order."""
    return [c.body["trafficSplit"] for c in fake.calls_of("UpdateEndpoint") if "trafficSplit" in c.body]


def test_healthy_canary_is_promoted_through_every_step(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a deployed canary whose metrics match the baseline's
    harness = RolloutHarness(fake, tmp_path)
    deployed = harness.deploy("run-1")

    # When the canary runs
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then traffic moved 10 -> 25 -> 50 -> 100 and the new version holds 100% and the production alias
    canary = deployed.deployed_model_id
    version = next(
        v for v in fake.model_versions() if v.version_id == deployed.vertex_model.metadata["versionId"]
    )
    assert (
        [s.get(canary) for s in splits_sent(fake)],
        dict(fake.endpoint("vxdeploy-endpoint").traffic_split),
        "production" in version.version_aliases,
        run.report["summary"]["decision"],
        run.error,
    ) == ([10, 25, 50, 100], {canary: 100}, True, "promoted", None)


def test_every_split_sent_sums_to_100(fake: FakeVertex, tmp_path: Path) -> None:
    # Given an endpoint whose traffic is shared 67/33 by two models
    endpoint, first = fake.seed_serving_endpoint(
        "vxdeploy-endpoint", labels={MANAGED_BY_KEY: "vxdeploy"}, endpoint_id="vxdeploy-endpoint"
    )
    _, second = fake.seed_serving_endpoint("other", endpoint_id="other")
    _share_traffic(fake, {first: 67}, second)
    harness = RolloutHarness(fake, tmp_path, canary={"steps": [5, 33, 71, 100]})
    deployed = harness.deploy("run-1")

    # When the canary runs
    harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then every split summed to exactly 100, and the baselines kept their 2:1 proportion at each step
    sent = splits_sent(fake)
    assert ([sum(s.values()) for s in sent], [s.get(first, 0) >= 2 * s.get(second, 0) - 1 for s in sent]) == (
        [100, 100, 100, 100],
        [True, True, True, True],
    )


def _share_traffic(fake: FakeVertex, split: dict[str, int], moved: str) -> None:
    """Put deployed model ``moved`` on the managed endpoint and share traffic (set-up on the fake state)."""
    with fake._lock:
        target = next(e for e in fake._endpoints.values() if e.name.endswith("/vxdeploy-endpoint"))
        source = next(e for e in fake._endpoints.values() if e.name.endswith("/other"))
        dm = next(d for d in source.deployed_models if d.id == moved)
        source.deployed_models = []
        source.traffic_split = {}
        target.deployed_models.append(dm)
        target.traffic_split = {**split, moved: 100 - sum(split.values())}


def test_failing_error_rate_rolls_back_to_the_serving_model(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a canary answering 20% errors, and a failure limit of 1
    harness = RolloutHarness(fake, tmp_path, canary={"failure_limit": 1})
    deployed = harness.deploy("run-1")
    metrics = InMemoryMetrics({deployed.deployed_model_id: FAILING}, default=HEALTHY)

    # When the canary runs
    run = harness.run_canary("run-1", deployed, metrics)

    # Then after two failed analyses at 10%, traffic is back on the serving model and the canary undeployed
    endpoint = fake.endpoint("vxdeploy-endpoint")
    assert (
        isinstance(run.error, CanaryRolledBackError),
        dict(endpoint.traffic_split),
        [dm.id for dm in endpoint.deployed_models],
        run.report["summary"]["failed_analyses"],
        read_lease(endpoint),
    ) == (True, {serving: 100}, [serving], 2, None)


def test_rollback_report_names_the_failed_check_and_its_figures(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a canary answering 20% errors with no failure tolerated
    harness = RolloutHarness(fake, tmp_path, canary={"failure_limit": 0})
    deployed = harness.deploy("run-1")

    # When the canary runs
    run = harness.run_canary(
        "run-1", deployed, InMemoryMetrics({deployed.deployed_model_id: FAILING}, HEALTHY)
    )

    # Then the error, the report and the step table give the figures behind the decision
    assert (
        "canary error rate 0.2000 > limit 0.0100" in str(run.error),
        run.report["details"]["analyses"][0]["canary"]["error_rate"],
        run.metrics["rolled_back"],
        "| 1 | 10 | 1 | 1000 | 0.2 |" in run.table,
    ) == (True, 0.2, 1.0, True)


def test_no_data_is_not_a_pass(fake: FakeVertex, serving: str, tmp_path: Path) -> None:
    # Given a canary for which Cloud Monitoring returns nothing
    harness = RolloutHarness(fake, tmp_path, canary={"failure_limit": 0})
    deployed = harness.deploy("run-1")

    # When the canary runs
    run = harness.run_canary(
        "run-1", deployed, InMemoryMetrics({deployed.deployed_model_id: NO_DATA}, HEALTHY)
    )

    # Then it is rolled back because there was no data
    assert (
        "no data is not a pass" in str(run.error),
        dict(fake.endpoint("vxdeploy-endpoint").traffic_split),
    ) == (
        True,
        {serving: 100},
    )


def test_one_failed_analysis_within_the_limit_holds_the_step_then_promotes(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a canary whose first window is bad and later ones are fine, and a failure limit of 1
    harness = RolloutHarness(fake, tmp_path, canary={"failure_limit": 1})
    deployed = harness.deploy("run-1")
    answers = iter([FAILING])

    def canary_then_healthy(dm_id: str) -> WindowStats:
        return next(answers, HEALTHY) if dm_id == deployed.deployed_model_id else HEALTHY

    # When the canary runs
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(canary_then_healthy))

    # Then step 1 was analysed twice and the rollout went on to promotion
    steps = [(s["percent"], s["attempt"], s["verdict"]) for s in run.report["details"]["analyses"]]
    assert (steps, run.report["summary"]["decision"]) == (
        [(10, 1, "fail"), (10, 2, "pass"), (25, 1, "pass"), (50, 1, "pass"), (100, 1, "pass")],
        "promoted",
    )


def test_latency_far_above_the_baseline_rolls_back(fake: FakeVertex, serving: str, tmp_path: Path) -> None:
    # Given a canary with p99 3x the baseline's (still under the absolute limit)
    harness = RolloutHarness(fake, tmp_path, canary={"failure_limit": 0, "max_latency_ratio": 1.5})
    deployed = harness.deploy("run-1")
    slow = WindowStats(requests=1000, errors=1, p99_latency_ms=120.0)

    # When the canary runs
    run = harness.run_canary("run-1", deployed, InMemoryMetrics({deployed.deployed_model_id: slow}, HEALTHY))

    # Then the latency ratio check rolled it back
    assert "ratio 3.00 > 1.50" in str(run.error)


def test_failed_smoke_test_rolls_back_before_any_traffic_moves(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a canary that cannot answer requests
    harness = RolloutHarness(fake, tmp_path)
    deployed = harness.deploy("run-1")
    fake.serving_profile = lambda dm: ServingProfile(fail_predictions=dm.id == deployed.deployed_model_id)

    # When the canary runs
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then no split ever gave it traffic, and it was undeployed
    assert (
        "smoke test failed" in str(run.error),
        [s for s in splits_sent(fake) if s.get(deployed.deployed_model_id, 0) > 0],
        [dm.id for dm in fake.endpoint("vxdeploy-endpoint").deployed_models],
    ) == (True, [], [serving])


def test_smoke_test_reaches_the_canary_itself_through_the_invoke_route(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a deployed canary
    harness = RolloutHarness(fake, tmp_path, canary={"smoke_requests": 3})
    deployed = harness.deploy("run-1")

    # When the canary runs
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then three KServe v2 requests went to that deployed model, before the first split
    invokes = fake.calls_of("Invoke")
    first_split = next(
        i for i, c in enumerate(fake.calls) if c.rpc == "UpdateEndpoint" and "trafficSplit" in c.body
    )
    assert (
        len(invokes),
        {c.path.split("/deployedModels/")[1].split("/")[0] for c in invokes},
        invokes[0].path.endswith("/invoke/v2/models/model/infer"),
        invokes[0].body["inputs"][0]["shape"],
        all(fake.calls.index(c) < first_split for c in invokes),
        run.report["details"]["smoke_test"]["passed"],
    ) == (3, {deployed.deployed_model_id}, True, [1, 1, 8, 8], True, True)


def test_smoke_test_on_a_private_endpoint_uses_the_models_own_url(fake: FakeVertex, tmp_path: Path) -> None:
    # Given a peered private endpoint
    harness = RolloutHarness(
        fake, tmp_path, deployment={"network": "projects/123456789012/global/networks/serving"}
    )
    deployed = harness.deploy("run-1")

    # When the canary runs (first deployment: straight to 100% after the smoke test)
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then the smoke requests went to the deployed model's private predict URL
    assert (len(fake.calls_of("PrivatePredict")), run.report["summary"]["decision"]) == (4, "promoted")


def test_canary_refuses_to_move_traffic_under_another_runs_lease(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given run-1 deployed, then its lease was taken by run-2 after expiring
    harness = RolloutHarness(fake, tmp_path)
    deployed = harness.deploy("run-1")
    _set_labels(fake, {HOLDER_KEY: "run-2", EXPIRES_KEY: str(int(time.time()) + 600)})

    # When run-1's canary runs
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then it stops with a conflict and traffic is untouched
    assert (isinstance(run.error, RolloutConflictError), splits_sent(fake)) == (True, [])


def _set_labels(fake: FakeVertex, labels: dict[str, str]) -> None:
    with fake._lock:
        endpoint = next(e for e in fake._endpoints.values() if e.name.endswith("/vxdeploy-endpoint"))
        endpoint.labels = {**endpoint.labels, **labels}
        fake._touch(endpoint)


def test_crash_between_deploy_and_split_is_rolled_back_by_the_exit_handler(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given the run died after the deploy step, before the canary moved any traffic
    harness = RolloutHarness(fake, tmp_path)
    harness.deploy("run-1")

    # When the exit handler runs for the failed pipeline
    report = harness.rollback("run-1", "FAILED")

    # Then traffic is on the serving model, the canary is gone and the endpoint is free
    endpoint = fake.endpoint("vxdeploy-endpoint")
    assert (
        report["summary"]["action"],
        dict(endpoint.traffic_split),
        [dm.id for dm in endpoint.deployed_models],
        read_lease(endpoint),
    ) == ("rolled_back", {serving: 100}, [serving], None)


def test_crash_between_deploy_and_split_then_task_retry_completes_without_duplicates(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given the run died after the deploy step
    harness = RolloutHarness(fake, tmp_path)
    harness.deploy("run-1")

    # When Vertex retries both tasks of the same run
    deployed = harness.deploy("run-1")
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then the rollout completes with one new version and one new deployed model (the old one is
    # undeployed after the grace period, by default)
    assert (
        run.report["summary"]["decision"],
        len(fake.model_versions()),
        len(fake.endpoint("vxdeploy-endpoint").deployed_models),
        len(fake.calls_of("DeployModel")),
    ) == ("promoted", 2, 1, 1)


def test_crash_mid_canary_is_rolled_back_to_the_split_before_the_rollout(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given the canary took 10%, then every later update was lost (the runner died)
    harness = RolloutHarness(fake, tmp_path, deployment={"retry_timeout_s": 0.5})
    deployed = harness.deploy("run-1")
    canary = deployed.deployed_model_id
    steps = iter([HEALTHY])

    def one_step_then_crash(dm_id: str) -> WindowStats:
        if dm_id == canary and next(steps, None) is None:
            fake.drop_connection("UpdateEndpoint", times=50)
        return HEALTHY

    run = harness.run_canary("run-1", deployed, InMemoryMetrics(one_step_then_crash))
    split_at_crash = dict(fake.endpoint("vxdeploy-endpoint").traffic_split)
    fake.faults.drop_connections.clear()

    # When the exit handler runs
    harness.rollback("run-1", "FAILED")

    # Then the canary had traffic at the crash, and afterwards the serving model has it all again
    assert (
        run.error is not None,
        split_at_crash.get(canary, 0) > 0,
        dict(fake.endpoint("vxdeploy-endpoint").traffic_split),
        [dm.id for dm in fake.endpoint("vxdeploy-endpoint").deployed_models],
    ) == (True, True, {serving: 100}, [serving])


def test_exit_handler_leaves_a_succeeded_run_alone(fake: FakeVertex, serving: str, tmp_path: Path) -> None:
    # Given a promoted rollout
    harness = RolloutHarness(fake, tmp_path)
    deployed = harness.deploy("run-1")
    harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # When the exit handler runs for the (succeeded) pipeline
    report = harness.rollback("run-1", "SUCCEEDED")

    # Then nothing changes
    assert (report["summary"]["action"], dict(fake.endpoint("vxdeploy-endpoint").traffic_split)) == (
        "none",
        {deployed.deployed_model_id: 100},
    )


def test_exit_handler_of_a_run_without_the_lease_touches_nothing(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given run-1 is rolling out
    harness = RolloutHarness(fake, tmp_path)
    harness.deploy("run-1")

    # When run-2 fails and its exit handler runs
    report = harness.rollback("run-2", "FAILED")

    # Then run-1's rollout is untouched
    assert (report["summary"]["action"], read_lease(fake.endpoint("vxdeploy-endpoint")).holder) == (  # type: ignore[union-attr]
        "none",
        "run-1",
    )


def test_expired_lease_of_a_dead_run_is_taken_over_and_its_canary_undone(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given run-1 died with its canary at 25% and its lease has expired
    harness = RolloutHarness(fake, tmp_path)
    dead = harness.deploy("run-1").deployed_model_id
    with fake._lock:
        endpoint = next(e for e in fake._endpoints.values() if e.name.endswith("/vxdeploy-endpoint"))
        endpoint.traffic_split = {serving: 75, dead: 25}
        endpoint.labels = {**endpoint.labels, EXPIRES_KEY: str(int(time.time()) - 1)}
        fake._touch(endpoint)

    # When run-2 deploys
    run2 = harness.deploy("run-2")

    # Then run-2 restored the split from before run-1, undeployed its canary and recorded the true baseline
    endpoint = fake.endpoint("vxdeploy-endpoint")
    assert (
        dict(endpoint.traffic_split),
        sorted(dm.id for dm in endpoint.deployed_models),
        {k: v for k, v in endpoint.labels.items() if k.startswith(PREVIOUS_PREFIX)},
    ) == ({serving: 100}, sorted([serving, run2.deployed_model_id]), {f"{PREVIOUS_PREFIX}{serving}": "100"})


def test_first_deployment_without_a_baseline_goes_to_100_after_the_smoke_test(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given an empty endpoint
    harness = RolloutHarness(fake, tmp_path)
    deployed = harness.deploy("run-1")

    # When the canary runs
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then one step at 100% was analysed against the absolute limits
    assert (
        [(s["percent"], s["baseline"]) for s in run.report["details"]["analyses"]],
        dict(fake.endpoint("vxdeploy-endpoint").traffic_split),
    ) == ([(100, None)], {deployed.deployed_model_id: 100})


def test_promotion_with_a_grace_period_undeploys_the_old_model(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a zero grace period
    harness = RolloutHarness(fake, tmp_path, canary={"undeploy_grace_s": 0})
    deployed = harness.deploy("run-1")

    # When the canary is promoted
    harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then only the new model remains deployed
    assert [dm.id for dm in fake.endpoint("vxdeploy-endpoint").deployed_models] == [
        deployed.deployed_model_id
    ]


@pytest.mark.parametrize(
    ("baseline", "percent", "expected"),
    [
        ({"a": 100}, 10, {"a": 90, "c": 10}),
        ({"a": 50, "b": 50}, 25, {"a": 38, "b": 37, "c": 25}),
        ({"a": 67, "b": 33}, 10, {"a": 60, "b": 30, "c": 10}),
        ({"a": 1, "b": 1, "d": 1}, 50, {"a": 17, "b": 17, "d": 16, "c": 50}),
        ({"a": 100}, 100, {"c": 100}),
        ({}, 10, {"c": 100}),
    ],
)
def test_split_for_step_keeps_baseline_proportions_and_sums_to_100(
    baseline: dict[str, int], percent: int, expected: dict[str, int]
) -> None:
    # Given a baseline split and a canary share / When the step's split is computed / Then it is exact
    assert split_for_step(baseline, "c", percent) == expected


def test_failed_first_deployment_leaves_the_endpoint_without_traffic(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given a first deployment (nothing served before) whose canary fails its analysis
    harness = RolloutHarness(fake, tmp_path, canary={"failure_limit": 0})
    deployed = harness.deploy("run-1")

    # When the canary runs
    run = harness.run_canary(
        "run-1", deployed, InMemoryMetrics({deployed.deployed_model_id: FAILING}, HEALTHY)
    )

    # Then the endpoint is as before the run: no deployed model, no traffic, no lease
    endpoint = fake.endpoint("vxdeploy-endpoint")
    assert (
        isinstance(run.error, CanaryRolledBackError),
        list(endpoint.deployed_models),
        dict(endpoint.traffic_split),
        read_lease(endpoint),
    ) == (True, [], {}, None)


def test_retried_canary_after_promotion_changes_nothing(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a canary that was promoted
    harness = RolloutHarness(fake, tmp_path)
    deployed = harness.deploy("run-1")
    harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))
    updates = len(fake.calls_of("UpdateEndpoint"))

    # When Vertex retries the canary task
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then it reports the promotion and sends no update
    assert (run.report["summary"]["decision"], len(fake.calls_of("UpdateEndpoint"))) == ("promoted", updates)


def test_report_lists_each_steps_figures_as_table_rows(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a healthy canary
    harness = RolloutHarness(fake, tmp_path)
    deployed = harness.deploy("run-1")

    # When it runs
    run = harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then the report's steps are flat rows (what the run report renders), one per analysed step
    rows = run.report["details"]["steps"]
    assert [(r["canary %"], r["canary requests"], r["canary p99 ms"], r["verdict"]) for r in rows] == [
        (10, 1000, 40.0, "pass"),
        (25, 1000, 40.0, "pass"),
        (50, 1000, 40.0, "pass"),
        (100, 1000, 40.0, "pass"),
    ]


def test_the_smoke_test_sends_a_scalar_per_sample_input_as_batch_by_1(
    fake: FakeVertex, tmp_path: Path
) -> None:
    import numpy as np

    # Given a repository whose model takes one scalar per sample ("price": config dims [1] + reshape)
    harness = RolloutHarness(fake, tmp_path)
    harness.repository.metadata["scalar_inputs"] = ["price"]
    np.savez(
        tmp_path / "eval.npz", price=np.arange(4, dtype=np.float32), features=np.ones((4, 3), np.float32)
    )
    deployed = harness.deploy("run-1")

    # When the canary's smoke test runs
    harness.run_canary("run-1", deployed, InMemoryMetrics(default=HEALTHY))

    # Then every request carried price as [1, 1] (what Triton's config takes) and features as is
    shapes = [
        {t["name"]: t["shape"] for t in c.body["inputs"]}
        for c in fake.calls
        if isinstance(c.body, dict) and isinstance(c.body.get("inputs"), list)
    ]
    assert shapes and all(s == {"price": [1, 1], "features": [1, 3]} for s in shapes), shapes
