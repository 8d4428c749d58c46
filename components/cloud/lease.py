"""The rollout lease and the rollout's phase: endpoint labels that let one run at a time roll out.

The lease lives in the endpoint's labels, written with the endpoint's etag (compare-and-set),
so two runs racing for it cannot both win. It records what a recovery needs even when the run
that took it has died: the holder, its expiry and time-to-live, the traffic split before the
rollout (``vxdeploy-prev-<deployed model id>=<percent>``), the canary's deployed model id, the
deploy operation in flight, the cleanup policy, and the phase::

    deploying -> canary-<step> -> promoted -> cleaned

``promoted`` is the commit point: it is written once traffic is 100% on the new version and its
aliases are set. Before it, a recovery restores the split that served; from it on, a recovery
only finishes the cleanup. Releasing the lease leaves ``vxdeploy-last-rollout`` (the holder) and
``vxdeploy-last-rollout-phase`` (``cleaned`` or ``rolled-back``) behind as a record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1

from vxdeploy.components.cloud.endpoints import get_endpoint, serving_split, update_endpoint
from vxdeploy.components.cloud.labels import label_value
from vxdeploy.components.cloud.vertex import VertexApi
from vxdeploy.components.common.errors import CloudOperationError, RolloutConflictError

HOLDER_KEY = "vxdeploy-rollout-holder"
EXPIRES_KEY = "vxdeploy-rollout-expires"
TTL_KEY = "vxdeploy-rollout-ttl"
CANARY_KEY = "vxdeploy-rollout-canary"
OPERATION_KEY = "vxdeploy-rollout-op"
PHASE_KEY = "vxdeploy-rollout-phase"
PHASE_AT_KEY = "vxdeploy-rollout-phase-at"
KEEP_PREVIOUS_KEY = "vxdeploy-rollout-keep-previous"
GRACE_KEY = "vxdeploy-rollout-grace"
PREVIOUS_PREFIX = "vxdeploy-prev-"
LAST_RUN_KEY = "vxdeploy-last-rollout"
LAST_PHASE_KEY = "vxdeploy-last-rollout-phase"
_LEASE_KEYS = (
    HOLDER_KEY,
    EXPIRES_KEY,
    TTL_KEY,
    CANARY_KEY,
    OPERATION_KEY,
    PHASE_KEY,
    PHASE_AT_KEY,
    KEEP_PREVIOUS_KEY,
    GRACE_KEY,
)
_CAS_ATTEMPTS = 8

DEPLOYING = "deploying"
PROMOTED = "promoted"
CLEANED = "cleaned"
ROLLED_BACK = "rolled-back"


def canary_phase(step: int) -> str:
    """The phase of canary step ``step`` (1-based)."""
    return f"canary-{step}"


@dataclass(frozen=True)
class RolloutLease:
    """A rollout in progress on one endpoint, as its labels record it."""

    holder: str
    expires_at: float
    previous_split: dict[str, int] = field(default_factory=dict)
    canary_id: str = ""
    operation_id: str = ""
    phase: str = DEPLOYING
    ttl_s: float = 0.0
    phase_at: float = 0.0
    keep_previous: bool = False
    grace_s: float = 0.0

    @property
    def committed(self) -> bool:
        """Whether the rollout passed its commit point (new version at 100% with its aliases)."""
        return self.phase in (PROMOTED, CLEANED)

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> RolloutLease | None:
        holder = labels.get(HOLDER_KEY, "")
        if not holder:
            return None
        previous = {
            k.removeprefix(PREVIOUS_PREFIX): int(v)
            for k, v in labels.items()
            if k.startswith(PREVIOUS_PREFIX) and v.isdigit()
        }
        return cls(
            holder,
            _number(labels.get(EXPIRES_KEY)),
            previous,
            labels.get(CANARY_KEY, ""),
            labels.get(OPERATION_KEY, ""),
            labels.get(PHASE_KEY, DEPLOYING) or DEPLOYING,
            _number(labels.get(TTL_KEY)),
            _number(labels.get(PHASE_AT_KEY)),
            labels.get(KEEP_PREVIOUS_KEY, "") == "true",
            _number(labels.get(GRACE_KEY)),
        )

    def to_labels(self) -> dict[str, str]:
        labels = {
            HOLDER_KEY: self.holder,
            EXPIRES_KEY: str(int(self.expires_at)),
            PHASE_KEY: self.phase,
            KEEP_PREVIOUS_KEY: "true" if self.keep_previous else "false",
        }
        for key, value in ((TTL_KEY, self.ttl_s), (PHASE_AT_KEY, self.phase_at), (GRACE_KEY, self.grace_s)):
            if value:
                labels[key] = str(int(value))
        if self.canary_id:
            labels[CANARY_KEY] = self.canary_id
        if self.operation_id:
            labels[OPERATION_KEY] = self.operation_id
        labels.update({f"{PREVIOUS_PREFIX}{k}": str(v) for k, v in self.previous_split.items()})
        return labels

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def held_by(self, run_id: str) -> bool:
        return self.holder == label_value(run_id)


def _number(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class LeaseAcquisition:
    """The outcome of :func:`acquire_lease`."""

    endpoint: aiplatform_v1.Endpoint
    lease: RolloutLease
    resumed: bool
    taken_over: RolloutLease | None = None


def read_lease(endpoint: aiplatform_v1.Endpoint) -> RolloutLease | None:
    return RolloutLease.from_labels(dict(endpoint.labels))


def _without_lease(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in _LEASE_KEYS and not k.startswith(PREVIOUS_PREFIX)}


def _conflict(endpoint: aiplatform_v1.Endpoint, lease: RolloutLease, now: float) -> RolloutConflictError:
    return RolloutConflictError(
        f"endpoint {endpoint.name} is held by rollout {lease.holder!r} for another "
        f"{lease.expires_at - now:.0f} s (label {HOLDER_KEY}, phase {lease.phase}); wait for it to finish, "
        f"or, if that run is dead, repair the endpoint with: vxdeploy rollback --endpoint {endpoint.name}"
    )


def _compare_and_set(
    api: VertexApi,
    endpoint_name: str,
    change: Callable[[aiplatform_v1.Endpoint], tuple[dict[str, str] | None, dict[str, int] | None]],
) -> aiplatform_v1.Endpoint:
    """Read the endpoint, compute new labels/split, write them guarded by its etag; retry on a race."""
    for _ in range(_CAS_ATTEMPTS):
        endpoint = get_endpoint(api, endpoint_name)
        labels, split = change(endpoint)
        if labels is None and split is None:
            return endpoint
        try:
            return update_endpoint(api, endpoint, traffic_split=split, labels=labels)
        except gexc.Conflict:
            # 409 ABORTED (a Conflict over REST): someone changed the endpoint between our read and write.
            continue
    raise CloudOperationError(
        f"endpoint {endpoint_name} kept changing under {_CAS_ATTEMPTS} read-modify-write attempts; try again"
    )


def acquire_lease(
    api: VertexApi,
    endpoint_name: str,
    run_id: str,
    ttl_s: float,
    *,
    keep_previous: bool = False,
    grace_s: float = 0.0,
    now: Callable[[], float] = time.time,
) -> LeaseAcquisition:
    """Take the endpoint's rollout lease for ``run_id``, recording the current traffic split.

    A retry of the same run keeps the lease it holds (its split, canary and phase recorded the
    first time). An expired lease of another run is taken over, keeping its record, and returned
    in ``taken_over``: the caller recovers that run's abandoned rollout, then takes a fresh lease.

    Args:
        api: Vertex AI clients.
        endpoint_name: The endpoint.
        run_id: The run taking the lease.
        ttl_s: The lease's time-to-live (``canary.lease_ttl_s``); recorded, so that whoever renews
            it later (the exit handler, ``vxdeploy rollback``) renews it by the same amount.
        keep_previous: Recorded cleanup policy: keep the previous version deployed at 0%.
        grace_s: Recorded cleanup policy: seconds between promotion and undeploying old versions.
        now: The clock.

    Raises:
        RolloutConflictError: another run holds an unexpired lease.
    """
    holder = label_value(run_id)
    outcome: dict[str, object] = {}

    def change(endpoint: aiplatform_v1.Endpoint) -> tuple[dict[str, str] | None, dict[str, int] | None]:
        t = now()
        current = read_lease(endpoint)
        outcome.clear()
        if current is not None and current.holder == holder:
            lease = replace(current, expires_at=t + ttl_s, ttl_s=ttl_s)
            outcome.update(lease=lease, resumed=True)
        else:
            if current is not None and not current.expired(t):
                raise _conflict(endpoint, current, t)
            if current is not None:
                # A dead run's rollout: keep what its lease records (split, canary, phase) under the new
                # holder until the caller has recovered it, so a crash meanwhile loses nothing.
                lease = replace(current, holder=holder, expires_at=t + ttl_s, ttl_s=ttl_s)
                outcome.update(lease=lease, resumed=False, taken_over=current)
                return {**_without_lease(endpoint.labels), **lease.to_labels()}, None
            lease = RolloutLease(
                holder,
                t + ttl_s,
                serving_split(endpoint),
                phase=DEPLOYING,
                ttl_s=ttl_s,
                phase_at=t,
                keep_previous=keep_previous,
                grace_s=grace_s,
            )
            outcome.update(lease=lease, resumed=False, taken_over=current)
        return {**_without_lease(endpoint.labels), **lease.to_labels()}, None

    endpoint = _compare_and_set(api, endpoint_name, change)
    return LeaseAcquisition(
        endpoint,
        outcome["lease"],  # type: ignore[arg-type]
        bool(outcome["resumed"]),
        outcome.get("taken_over"),  # type: ignore[arg-type]
    )


def take_over_lease(
    api: VertexApi,
    endpoint_name: str,
    run_id: str,
    *,
    now: Callable[[], float] = time.time,
) -> tuple[aiplatform_v1.Endpoint, RolloutLease | None]:
    """Make ``run_id`` the holder of the endpoint's lease, whoever held it, keeping what it records.

    What ``vxdeploy rollback`` does before it repairs a stranded endpoint: the recorded split,
    canary, phase and time-to-live stay; only the holder changes (and the expiry is renewed by the
    recorded time-to-live), so the dead run can no longer move traffic. Returns the lease as it
    was (None when the endpoint has none).
    """
    holder = label_value(run_id)
    found: list[RolloutLease | None] = [None]

    def change(endpoint: aiplatform_v1.Endpoint) -> tuple[dict[str, str] | None, dict[str, int] | None]:
        current = read_lease(endpoint)
        found[0] = current
        if current is None:
            return None, None
        ttl = current.ttl_s or max(current.expires_at - now(), 60.0)
        lease = replace(current, holder=holder, expires_at=now() + ttl)
        return {**_without_lease(endpoint.labels), **lease.to_labels()}, None

    endpoint = _compare_and_set(api, endpoint_name, change)
    return endpoint, found[0]


def update_lease(
    api: VertexApi,
    endpoint_name: str,
    run_id: str,
    ttl_s: float | None = None,
    *,
    traffic_split: Mapping[str, int] | None = None,
    canary_id: str | None = None,
    operation_id: str | None = None,
    phase: str | None = None,
    now: Callable[[], float] = time.time,
) -> tuple[aiplatform_v1.Endpoint, RolloutLease]:
    """Renew the lease ``run_id`` holds, optionally recording canary, operation or phase, setting the split.

    The split, the phase and the lease renewal go in one etag-guarded update, so traffic never
    moves under a lease this run has lost, and the phase always describes the split in force.

    Args:
        api: Vertex AI clients.
        endpoint_name: The endpoint.
        run_id: The run that must hold the lease.
        ttl_s: Renew by this much; None: by the time-to-live the lease records.
        traffic_split: The split to set in the same update.
        canary_id: The canary's deployed model id to record.
        operation_id: The deploy operation in flight to record ('' clears it).
        phase: The rollout phase to record (``canary-<step>``, ``promoted``).
        now: The clock.

    Raises:
        RolloutConflictError: the lease is not held by ``run_id`` (it expired and another run took it).
    """
    holder = label_value(run_id)
    result: list[RolloutLease] = []

    def change(endpoint: aiplatform_v1.Endpoint) -> tuple[dict[str, str] | None, dict[str, int] | None]:
        t = now()
        current = read_lease(endpoint)
        if current is None or current.holder != holder:
            if current is None:
                raise RolloutConflictError(
                    f"endpoint {endpoint.name} has no rollout lease for run {run_id!r}; the lease was "
                    "released or removed, so this run no longer owns the rollout"
                )
            raise _conflict(endpoint, current, t)
        ttl = ttl_s if ttl_s is not None else (current.ttl_s or 3600.0)
        lease = replace(
            current,
            expires_at=t + ttl,
            ttl_s=ttl,
            canary_id=current.canary_id if canary_id is None else canary_id,
            operation_id=current.operation_id if operation_id is None else operation_id,
            phase=current.phase if phase is None else phase,
            phase_at=current.phase_at if phase is None or phase == current.phase else t,
        )
        result[:] = [lease]
        split = dict(traffic_split) if traffic_split is not None else None
        return {**_without_lease(endpoint.labels), **lease.to_labels()}, split

    endpoint = _compare_and_set(api, endpoint_name, change)
    return endpoint, result[0]


def release_lease(
    api: VertexApi,
    endpoint_name: str,
    run_id: str,
    *,
    traffic_split: Mapping[str, int] | None = None,
    outcome: str = CLEANED,
) -> aiplatform_v1.Endpoint:
    """Remove the lease if ``run_id`` holds it (optionally setting the final split in the same update).

    The endpoint keeps a record of the rollout: ``vxdeploy-last-rollout`` and its final phase.
    """
    holder = label_value(run_id)

    def change(endpoint: aiplatform_v1.Endpoint) -> tuple[dict[str, str] | None, dict[str, int] | None]:
        current = read_lease(endpoint)
        if current is None or current.holder != holder:
            return None, None
        labels = {**_without_lease(endpoint.labels), LAST_RUN_KEY: holder, LAST_PHASE_KEY: outcome}
        return labels, (dict(traffic_split) if traffic_split is not None else None)

    return _compare_and_set(api, endpoint_name, change)


def read_endpoint_lease(deployment: object, api: VertexApi | None = None) -> RolloutLease | None:
    """The rollout lease on the endpoint ``deployment`` (a ``DeploymentConfig``) names; None without one.

    None too when there is no such endpoint yet.
    """
    from vxdeploy.components.cloud.endpoints import find_endpoint
    from vxdeploy.components.cloud.vertex import connect
    from vxdeploy.components.common.config import DeploymentConfig

    assert isinstance(deployment, DeploymentConfig)
    api = api or connect(deployment)
    endpoint = find_endpoint(api, deployment)
    return read_lease(endpoint) if endpoint is not None else None


def release_lease_if_untouched(api: VertexApi, endpoint_name: str, run_id: str) -> bool:
    """Release ``run_id``'s lease when no canary of it was deployed (its traffic is untouched)."""
    lease = read_lease(get_endpoint(api, endpoint_name))
    if lease is None or not lease.held_by(run_id) or lease.canary_id or lease.operation_id:
        return False
    release_lease(api, endpoint_name, run_id, outcome=ROLLED_BACK)
    return True
