"""The rollout under faults: every RPC it calls x every kind of fault x every phase, and kills.

Each scenario starts from an endpoint that a first rollout (``r1``) left serving its version of
the model, injects one fault into a second rollout (``r2``) or into the exit handler after it,
lets the exit handler run when the rollout failed, and checks the invariant
(:func:`tests.fakes.rollout.rollout_invariant`): traffic 100% on the version that served (before
the commit point) or on the new one (after it), no duplicates, the lease released or expiring
within its time-to-live, the aliases on the version that serves. A transient fault (anything but
a burst longer than the retry deadline) must not abort the rollout at all.

The deploy and canary steps and the exit handler are the plain functions, called directly against
the loopback fakes with a 0.4 s retry deadline and no real sleeps, so the whole matrix runs in
minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fakes.rollout import FaultWorld, rollout_invariant
from tests.fakes.vertex import RecordedCall
from vxdeploy.components.cloud.lease import PHASE_KEY, PROMOTED

pytestmark = pytest.mark.slow  # about 300 scenarios: 2-3 minutes on a 2-core machine

TTL_S = 600.0
DEADLINE_S = 0.4
BURST_S = 2.5 * DEADLINE_S  # longer than one call's retry deadline, shorter than a recovery's
EXIT_DEADLINE_S = 4.0

# Faults on Vertex AI (REST, HTTP statuses) and their Cloud Monitoring (gRPC) counterparts.
FAULTS: dict[str, dict[str, Any]] = {
    "500-once": {"statuses": [500]},
    "503-once": {"statuses": [503]},
    "429-once": {"statuses": [429]},
    "500-x3": {"statuses": [500, 500, 500]},
    "504-x2": {"statuses": [504, 504]},
    "burst": {"burst_s": BURST_S},
    "lost-answer": {"lose": True},
}
GRPC_FAULTS: dict[str, tuple[grpc.StatusCode, int, bool]] = {
    "500-once": (grpc.StatusCode.INTERNAL, 1, False),
    "503-once": (grpc.StatusCode.UNAVAILABLE, 1, False),
    "429-once": (grpc.StatusCode.RESOURCE_EXHAUSTED, 1, False),
    "500-x3": (grpc.StatusCode.INTERNAL, 3, False),
    "504-x2": (grpc.StatusCode.DEADLINE_EXCEEDED, 2, False),
    "burst": (grpc.StatusCode.UNAVAILABLE, 10_000, False),
    "lost-answer": (grpc.StatusCode.UNAVAILABLE, 1, True),
}

# Every RPC the second rollout calls, by phase (the data-plane smoke request, Invoke, excluded: its
# answer is what the smoke test judges). test_the_matrix_covers_every_rpc_the_rollout_calls keeps
# this table equal to what the code does.
ROLLOUT_RPCS: dict[str, list[str]] = {
    "deploy": [
        "ListEndpoints",
        "GetEndpoint",
        "UpdateEndpoint",
        "GetModel",
        "ListModelVersions",
        "ListOperations",
        "UploadModel",
        "GetOperation",
        "DeployModel",
    ],
    "step-1": ["GetEndpoint", "UpdateEndpoint", "ListTimeSeries"],
    "step-2": ["GetEndpoint", "UpdateEndpoint", "ListTimeSeries"],
    "step-3": ["GetEndpoint", "UpdateEndpoint", "ListTimeSeries"],
    "promotion": ["MergeVersionAliases", "GetEndpoint", "UpdateEndpoint"],
    "cleanup": ["GetEndpoint", "UpdateEndpoint", "UndeployModel", "GetOperation"],
}
# Where the run is killed before the exit handler runs (RPC, calls of it let through, as a phase of
# the trace), and what the exit handler then calls; test_the_exit_matrix_covers_every_rpc_the_exit_
# handler_calls keeps this table equal to what the code does.
EXIT_KILLS: dict[str, tuple[str, str]] = {
    "exit-during-deploy": ("DeployModel", "deploy"),  # a deploy operation under way
    "exit-at-50pct": ("UpdateEndpoint", "step-2"),  # 50/50 on an unvalidated canary
    "exit-after-aliases": ("MergeVersionAliases", "promotion"),  # 100% and aliases, not yet committed
    "exit-after-commit": ("UpdateEndpoint", "promotion"),  # right after the write of the commit point
}
EXIT_RPCS: dict[str, list[str]] = {
    "exit-during-deploy": ["GetEndpoint", "ListOperations", "CancelOperation", "UpdateEndpoint"],
    "exit-at-50pct": [
        "GetEndpoint",
        "ListOperations",
        "UpdateEndpoint",
        "GetModel",
        "UndeployModel",
        "GetOperation",
    ],
    "exit-after-aliases": [
        "GetEndpoint",
        "ListOperations",
        "UpdateEndpoint",
        "GetModel",
        "MergeVersionAliases",
        "UndeployModel",
        "GetOperation",
    ],
    "exit-after-commit": ["GetEndpoint", "UpdateEndpoint", "UndeployModel", "GetOperation"],
}
# The first rollout's own creates (an endpoint, a model): a lost create must not make two.
FIRST_RPCS = ["CreateEndpoint", "UploadModel"]
MUTATIONS = ("UpdateEndpoint", "UploadModel", "DeployModel", "UndeployModel", "MergeVersionAliases")


@dataclass
class Trace:
    """The calls of one clean second rollout, each with the phase it arrived in."""

    calls: list[tuple[str, str]]

    def skip_before(self, phase: str, rpc: str) -> int:
        """How many calls of ``rpc`` come before its first call in ``phase``."""
        seen = 0
        for call_rpc, call_phase in self.calls:
            if call_rpc == rpc:
                if call_phase == phase:
                    return seen
                seen += 1
        raise AssertionError(f"the rollout makes no {rpc} call in phase {phase}")


def _phase_tagger(world: FaultWorld, calls: list[tuple[str, str]]) -> Any:
    """An observer for the fake that tags each call with the rollout phase it belongs to.

    A canary step begins with the write that shifts traffic to it (and the read that write is
    guarded by); promotion runs from the alias merge to the write of the commit point; cleanup is
    what follows.
    """
    state = {"promoting": False, "committed": False}

    def observe(call: RecordedCall) -> None:
        label = ""
        for endpoint in world.vertex._endpoints.values():  # the observer runs under the fake's lock
            label = endpoint.labels.get(PHASE_KEY, "")
        written = call.body.get("labels", {}).get(PHASE_KEY, "") if call.rpc == "UpdateEndpoint" else ""
        if world.stage == "deploy":
            phase = "deploy"
        elif state["committed"] or label == PROMOTED:
            state["committed"] = True
            phase = "cleanup"
        elif call.rpc == "MergeVersionAliases" or state["promoting"]:
            state["promoting"] = True
            phase = "promotion"
        elif written.startswith("canary-") or label.startswith("canary-"):
            phase = f"step-{(written or label).removeprefix('canary-')}"
        else:
            phase = "step-1"  # the canary's preparation (smoke test) happens under step 1
        if call.rpc == "UpdateEndpoint" and calls and calls[-1][0] == "GetEndpoint":
            calls[-1] = ("GetEndpoint", phase)  # the read that guards this write belongs with it
        calls.append((call.rpc, phase))

    return observe


def _clean_trace(root: Path) -> Trace:
    world = FaultWorld(root, seed=10_000, deadline_s=DEADLINE_S)
    try:
        assert not world.rollout("r1").failed
        calls: list[tuple[str, str]] = []
        world.vertex.observer = _phase_tagger(world, calls)
        attempt = world.rollout("r2")
        assert not attempt.failed, attempt
        return Trace(calls)
    finally:
        world.close()


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Trace:
    return _clean_trace(tmp_path_factory.mktemp("trace"))


_seeds = iter(range(1, 1_000_000))


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[FaultWorld]:
    w = FaultWorld(tmp_path, seed=next(_seeds), deadline_s=DEADLINE_S)
    assert not w.rollout("r1").failed
    yield w
    w.close()


def _finish(world: FaultWorld, attempt: Any) -> str:
    """Run the exit handler when the run failed, then check the invariant; returns who serves."""
    if attempt.failed:
        world.exit_handler("r2", deadline_s=EXIT_DEADLINE_S)
    return rollout_invariant(world, old_run="r1", new_run="r2", ttl_s=TTL_S)


def _arm_monitoring(world: FaultWorld, step: int, fault: str) -> None:
    code, times, after_commit = GRPC_FAULTS[fault]

    def at_analysis(n: int) -> None:
        if n == step:
            world.monitoring.fail_next("ListTimeSeries", code, times=times, after_commit=after_commit)

    world.on_analysis = at_analysis


ROLLOUT_CASES = [
    pytest.param(phase, rpc, fault, id=f"{phase}-{rpc}-{fault}")
    for phase, rpcs in ROLLOUT_RPCS.items()
    for rpc in rpcs
    for fault in FAULTS
]


@pytest.mark.parametrize(("phase", "rpc", "fault"), ROLLOUT_CASES)
def test_a_fault_during_the_rollout_leaves_a_serving_version(
    world: FaultWorld, trace: Trace, phase: str, rpc: str, fault: str
) -> None:
    # Given a fault on the first call of the RPC in that phase of the second rollout
    if rpc == "ListTimeSeries":
        _arm_monitoring(world, int(phase.removeprefix("step-")), fault)
    else:
        world.vertex.inject(rpc, skip=trace.skip_before(phase, rpc), **FAULTS[fault])

    # When the rollout runs (and, if it failed, the exit handler after it)
    attempt = world.rollout("r2")
    serving = _finish(world, attempt)

    # Then the invariant holds; a transient fault did not even abort the rollout
    if fault != "burst":
        assert (attempt.decision, attempt.error, serving) == ("promoted", None, "new")


EXIT_CASES = [
    pytest.param(phase, rpc, fault, id=f"{phase}-{rpc}-{fault}")
    for phase, rpcs in EXIT_RPCS.items()
    for rpc in rpcs
    for fault in FAULTS
]


def _kill_point(trace: Trace, phase: str) -> tuple[str, int]:
    """(RPC, calls of it to let through) of the kill that leaves the rollout where ``phase`` says."""
    rpc, where = EXIT_KILLS[phase]
    return rpc, trace.skip_before(where, rpc)


def _killed_then_exit_handler(world: FaultWorld, trace: Trace, phase: str) -> Any:
    rpc, skip = _kill_point(trace, phase)
    world.vertex.inject(rpc, skip=skip, kill=True)
    attempt = world.rollout("r2")
    world.vertex.revive()
    return attempt


@pytest.mark.parametrize(("phase", "rpc", "fault"), EXIT_CASES)
def test_a_fault_during_the_exit_handler_still_ends_on_a_serving_version(
    world: FaultWorld, trace: Trace, phase: str, rpc: str, fault: str
) -> None:
    # Given a run killed mid-rollout (see EXIT_KILLS)
    attempt = _killed_then_exit_handler(world, trace, phase)
    # ... and a fault on the exit handler's first call of the RPC
    world.vertex.inject(rpc, **FAULTS[fault])

    # When the exit handler runs
    outcome = world.exit_handler("r2", deadline_s=EXIT_DEADLINE_S)

    # Then it restored the old version (before the commit) or finished the new one (after it)
    expected = "new" if phase == "exit-after-commit" else "old"
    assert (
        attempt.failed,
        outcome.action,
        rollout_invariant(world, old_run="r1", new_run="r2", ttl_s=TTL_S),
    ) == (
        True,
        "rolled_back" if expected == "old" else "finished",
        expected,
    )


KILL_CASES = [
    pytest.param(rpc, n, followup, id=f"kill-after-{rpc}-{n}-then-{followup}")
    for rpc, counts in {
        "UpdateEndpoint": range(10),
        "UploadModel": range(1),
        "DeployModel": range(1),
        "MergeVersionAliases": range(1),
        "UndeployModel": range(1),
    }.items()
    for n in counts
    for followup in ("exit-handler", "same-run-retry")
]


@pytest.mark.parametrize(("rpc", "n", "followup"), KILL_CASES)
def test_a_run_killed_at_any_step_is_recovered(
    world: FaultWorld, trace: Trace, rpc: str, n: int, followup: str
) -> None:
    # Given the task killed right after the n-th call of a mutating RPC of the second rollout
    assert sum(1 for r, _ in trace.calls if r == rpc) > n, f"the rollout makes fewer than {n + 1} {rpc} calls"
    world.vertex.inject(rpc, skip=n, kill=True)
    killed = world.rollout("r2")
    world.vertex.revive()

    # When the exit handler runs, or Vertex AI retries the run's tasks with the same run id
    if followup == "exit-handler":
        world.exit_handler("r2", deadline_s=EXIT_DEADLINE_S)
        serving = rollout_invariant(world, old_run="r1", new_run="r2", ttl_s=TTL_S)
        # Then traffic is on a serving version, with the lease released
        assert (killed.failed, world.vertex.endpoint("vxdeploy-endpoint").labels.get(PHASE_KEY)) == (
            True,
            None,
        )
        assert serving in ("old", "new")
    else:
        retried = world.rollout("r2")
        # Then the retry completes the rollout without a duplicate
        assert (killed.failed, retried.decision, retried.error, _finish(world, retried)) == (
            True,
            "promoted",
            None,
            "new",
        )


FIRST_CASES = [pytest.param(rpc, fault, id=f"first-{rpc}-{fault}") for rpc in FIRST_RPCS for fault in FAULTS]


@pytest.mark.parametrize(("rpc", "fault"), FIRST_CASES)
def test_a_fault_on_a_first_rollouts_creates_never_duplicates(tmp_path: Path, rpc: str, fault: str) -> None:
    # Given a project without the endpoint or the model, and a fault on its first create
    world = FaultWorld(tmp_path, seed=next(_seeds), deadline_s=DEADLINE_S)
    try:
        world.vertex.inject(rpc, **FAULTS[fault])

        # When the first rollout runs (and the exit handler after a failure)
        attempt = world.rollout("r1")
        if attempt.failed and world.vertex.endpoints():  # the exit handler skips a missing endpoint
            world.exit_handler("r1", deadline_s=EXIT_DEADLINE_S)

        # Then there is one endpoint and at most one version; a transient fault changed nothing
        endpoints = [e for e in world.vertex.endpoints() if e.display_name == "vxdeploy-endpoint"]
        versions = world.version_of_run("r1")
        assert (len(endpoints) <= 1, len(versions) <= 1) == (True, True)
        if fault != "burst":
            assert (attempt.decision, attempt.error, len(endpoints[0].deployed_models)) == (
                "promoted",
                None,
                1,
            )
    finally:
        world.close()


def test_the_matrix_covers_every_rpc_the_rollout_calls(trace: Trace) -> None:
    # Given the calls of a clean second rollout, by phase (Cloud Monitoring's are made between steps)
    seen: dict[str, set[str]] = {}
    for rpc, phase in trace.calls:
        if rpc != "Invoke":
            seen.setdefault(phase, set()).add(rpc)
    for step in ("step-1", "step-2", "step-3"):
        seen[step].add("ListTimeSeries")

    # Then the matrix injects faults into exactly those
    assert {k: sorted(v) for k, v in seen.items()} == {k: sorted(v) for k, v in ROLLOUT_RPCS.items()}


@pytest.mark.parametrize("phase", list(EXIT_KILLS))
def test_the_exit_matrix_covers_every_rpc_the_exit_handler_calls(
    world: FaultWorld, trace: Trace, phase: str
) -> None:
    # Given a run killed there / When the exit handler runs without faults
    _killed_then_exit_handler(world, trace, phase)
    first = len(world.vertex.calls)
    world.exit_handler("r2")

    # Then the matrix injects faults into exactly the RPCs it called
    assert sorted({c.rpc for c in world.vertex.calls[first:]}) == sorted(EXIT_RPCS[phase])


def test_the_matrix_counts_its_scenarios() -> None:
    # Given the tables / Then the matrix has the size the issue asks for (every RPC x fault x phase, kills)
    assert (len(ROLLOUT_CASES), len(EXIT_CASES), len(KILL_CASES), len(FIRST_CASES)) == (175, 147, 28, 14)
