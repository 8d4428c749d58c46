"""The rollout lease on the endpoint's labels: one run at a time, even when two race for it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.fakes.vertex import FakeVertex
from vxdeploy.components.cloud.lease import acquire_lease, read_lease, update_lease
from vxdeploy.components.cloud.vertex import VertexApi, connect
from vxdeploy.components.common.config import DeploymentConfig
from vxdeploy.components.common.errors import RolloutConflictError

PROJECT = "vxdeploy-test"


@pytest.fixture()
def fake() -> Iterator[FakeVertex]:
    with FakeVertex(project=PROJECT) as f:
        yield f


@pytest.fixture()
def api(fake: FakeVertex) -> VertexApi:
    return connect(DeploymentConfig(project=PROJECT, api_endpoint=fake.address, max_poll_interval_s=0.05))


@pytest.fixture()
def endpoint_name(fake: FakeVertex) -> str:
    endpoint, _ = fake.seed_serving_endpoint("e", endpoint_id="e")
    return str(endpoint.name)


def test_two_runs_racing_for_the_lease_cannot_both_win(api: VertexApi, endpoint_name: str) -> None:
    # Given run-1 has read the endpoint, and run-2 takes the lease before run-1 writes
    raced = []

    def clock() -> float:
        if not raced:
            raced.append(acquire_lease(api, endpoint_name, "run-2", 600))
        return time.time()

    # When run-1 tries to write its lease
    with pytest.raises(RolloutConflictError) as err:
        acquire_lease(api, endpoint_name, "run-1", 600, now=clock)

    # Then run-1's etag-guarded write was refused, and on re-reading it saw run-2 holding the endpoint
    assert ("run-2" in str(err.value), read_lease(api.endpoints.get_endpoint(name=endpoint_name)).holder) == (  # type: ignore[union-attr]
        True,
        "run-2",
    )


def test_the_same_run_keeps_the_split_it_recorded_first(
    api: VertexApi, fake: FakeVertex, endpoint_name: str
) -> None:
    # Given run-1 took the lease over a 100% split, then its canary took 10%
    first = acquire_lease(api, endpoint_name, "run-1", 600)
    serving = next(iter(first.lease.previous_split))
    _, canary = fake.seed_serving_endpoint("f", endpoint_id="f")
    with fake._lock:
        source = next(e for e in fake._endpoints.values() if e.name.endswith("/f"))
        target = next(e for e in fake._endpoints.values() if e.name.endswith("/e"))
        target.deployed_models.append(source.deployed_models.pop())
    update_lease(api, endpoint_name, "run-1", 600, traffic_split={serving: 90, canary: 10})

    # When run-1 takes the lease again (a retried task)
    again = acquire_lease(api, endpoint_name, "run-1", 600)

    # Then it resumes with the split recorded before the rollout
    assert (again.resumed, again.lease.previous_split) == (True, {serving: 100})


def test_an_expired_lease_is_taken_over(api: VertexApi, endpoint_name: str) -> None:
    # Given run-1's lease expired
    acquire_lease(api, endpoint_name, "run-1", 600, now=lambda: time.time() - 3600)

    # When run-2 takes the lease
    taken = acquire_lease(api, endpoint_name, "run-2", 600)

    # Then run-2 holds it and knows whose rollout it took over
    assert (taken.lease.holder, taken.taken_over.holder if taken.taken_over else None) == ("run-2", "run-1")


def test_a_run_that_lost_its_lease_cannot_move_traffic(api: VertexApi, endpoint_name: str) -> None:
    # Given run-1's lease expired and run-2 took it
    first = acquire_lease(api, endpoint_name, "run-1", 600, now=lambda: time.time() - 3600)
    acquire_lease(api, endpoint_name, "run-2", 600)
    serving = next(iter(first.lease.previous_split))

    # When run-1 tries to set a split / Then it is refused
    with pytest.raises(RolloutConflictError):
        update_lease(api, endpoint_name, "run-1", 600, traffic_split={serving: 100})
