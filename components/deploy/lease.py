"""The rollout lease: endpoint labels that let one run at a time roll out to an endpoint.

The lease lives in the endpoint's labels, written with the endpoint's etag (compare-and-set),
so two runs racing for it cannot both win. It records what a rollback needs even when the
run that took it has died: the holder, its expiry, the traffic split before the rollout
(``vxdeploy-prev-<deployed model id>=<percent>``), the canary's deployed model id and the
deploy operation in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1

from components.common.errors import CloudOperationError, RolloutConflictError
from components.deploy.endpoints import (
    apportion,
    deployed_ids,
    get_endpoint,
    serving_split,
    undeploy_model,
    update_endpoint,
)
from components.deploy.vertex import VertexApi, label_value

HOLDER_KEY = "vxdeploy-rollout-holder"
EXPIRES_KEY = "vxdeploy-rollout-expires"
CANARY_KEY = "vxdeploy-rollout-canary"
OPERATION_KEY = "vxdeploy-rollout-op"
PREVIOUS_PREFIX = "vxdeploy-prev-"
_LEASE_KEYS = (HOLDER_KEY, EXPIRES_KEY, CANARY_KEY, OPERATION_KEY)
_CAS_ATTEMPTS = 5


@dataclass(frozen=True)
class RolloutLease:
    """A rollout in progress on one endpoint, as its labels record it."""

    holder: str
    expires_at: float
    previous_split: dict[str, int] = field(default_factory=dict)
    canary_id: str = ""
    operation_id: str = ""

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> RolloutLease | None:
        holder = labels.get(HOLDER_KEY, "")
        if not holder:
            return None
        try:
            expires = float(labels.get(EXPIRES_KEY, "0"))
        except ValueError:
            expires = 0.0
        previous = {
            k.removeprefix(PREVIOUS_PREFIX): int(v)
            for k, v in labels.items()
            if k.startswith(PREVIOUS_PREFIX) and v.isdigit()
        }
        return cls(holder, expires, previous, labels.get(CANARY_KEY, ""), labels.get(OPERATION_KEY, ""))

    def to_labels(self) -> dict[str, str]:
        labels = {HOLDER_KEY: self.holder, EXPIRES_KEY: str(int(self.expires_at))}
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
        f"{lease.expires_at - now:.0f} s (label {HOLDER_KEY}); wait for it to finish, or, if that run is "
        "dead, "
        f"remove the endpoint's vxdeploy-rollout-* labels (or wait for the lease to expire) and run again"
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
    now: Callable[[], float] = time.time,
) -> LeaseAcquisition:
    """Take the endpoint's rollout lease for ``run_id``, recording the current traffic split.

    A retry of the same run keeps the lease it holds (and the split recorded the first time).
    An expired lease of another run is taken over and returned in ``taken_over`` so the caller can
    undo that run's abandoned rollout.

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
            lease = replace(current, expires_at=t + ttl_s)
            outcome.update(lease=lease, resumed=True)
        else:
            if current is not None and not current.expired(t):
                raise _conflict(endpoint, current, t)
            # Taking over a dead run's lease: the split to return to is the one before *its* rollout.
            previous = current.previous_split if current is not None and current.previous_split else None
            lease = RolloutLease(holder, t + ttl_s, previous or serving_split(endpoint))
            outcome.update(lease=lease, resumed=False, taken_over=current)
        return {**_without_lease(endpoint.labels), **lease.to_labels()}, None

    endpoint = _compare_and_set(api, endpoint_name, change)
    return LeaseAcquisition(
        endpoint,
        outcome["lease"],  # type: ignore[arg-type]
        bool(outcome["resumed"]),
        outcome.get("taken_over"),  # type: ignore[arg-type]
    )


def update_lease(
    api: VertexApi,
    endpoint_name: str,
    run_id: str,
    ttl_s: float,
    *,
    traffic_split: Mapping[str, int] | None = None,
    canary_id: str | None = None,
    operation_id: str | None = None,
    now: Callable[[], float] = time.time,
) -> tuple[aiplatform_v1.Endpoint, RolloutLease]:
    """Renew the lease ``run_id`` holds, optionally recording the canary/operation and setting the split.

    The split and the lease renewal go in one etag-guarded update, so traffic never moves under
    a lease this run has lost.

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
                    "released "
                    "or removed, so this run no longer owns the rollout"
                )
            raise _conflict(endpoint, current, t)
        lease = replace(
            current,
            expires_at=t + ttl_s,
            canary_id=current.canary_id if canary_id is None else canary_id,
            operation_id=current.operation_id if operation_id is None else operation_id,
        )
        result[:] = [lease]
        split = dict(traffic_split) if traffic_split is not None else None
        return {**_without_lease(endpoint.labels), **lease.to_labels()}, split

    endpoint = _compare_and_set(api, endpoint_name, change)
    return endpoint, result[0]


def release_lease(
    api: VertexApi, endpoint_name: str, run_id: str, *, traffic_split: Mapping[str, int] | None = None
) -> aiplatform_v1.Endpoint:
    """Remove the lease if ``run_id`` holds it (optionally setting the final split in the same update)."""
    holder = label_value(run_id)

    def change(endpoint: aiplatform_v1.Endpoint) -> tuple[dict[str, str] | None, dict[str, int] | None]:
        current = read_lease(endpoint)
        if current is None or current.holder != holder:
            return None, None
        return _without_lease(endpoint.labels), (dict(traffic_split) if traffic_split is not None else None)

    return _compare_and_set(api, endpoint_name, change)


def release_lease_if_untouched(api: VertexApi, endpoint_name: str, run_id: str) -> bool:
    """Release ``run_id``'s lease when no canary of it was deployed (its traffic is untouched)."""
    lease = read_lease(get_endpoint(api, endpoint_name))
    if lease is None or not lease.held_by(run_id) or lease.canary_id:
        return False
    release_lease(api, endpoint_name, run_id)
    return True


def restorable_split(previous: Mapping[str, int], endpoint: aiplatform_v1.Endpoint) -> dict[str, int]:
    """The recorded split, limited to models still deployed and rescaled to sum to 100."""
    present = set(deployed_ids(endpoint))
    kept = {k: v for k, v in previous.items() if k in present and v > 0}
    if not kept:
        return {}
    return apportion(kept, 100)


@dataclass
class RollbackResult:
    """What :func:`roll_back_rollout` did."""

    restored_split: dict[str, int] | None = None
    undeployed: list[str] = field(default_factory=list)
    cancelled_operation: str = ""
    actions: list[str] = field(default_factory=list)


def roll_back_rollout(
    api: VertexApi,
    endpoint_name: str,
    lease: RolloutLease,
    *,
    run_id: str,
    timeout_s: float,
    ttl_s: float = 3600.0,
    canary_id: str = "",
    release: bool = True,
) -> RollbackResult:
    """Undo the rollout ``lease`` records: traffic back to the recorded split, canary undeployed, lease freed.

    Each step is idempotent, so a rollback that is itself interrupted can be run again. The caller
    must hold the lease (as ``run_id``), having taken it over from a dead run if need be.

    Args:
        api: Vertex AI clients.
        endpoint_name: The endpoint.
        lease: The rollout to undo (its recorded split, canary and deploy operation).
        run_id: The run holding the lease now.
        timeout_s: Longest wait for the undeploy operation.
        ttl_s: Lease time-to-live while rolling back.
        canary_id: The canary's deployed model id when the lease does not record it yet.
        release: Release the lease at the end (False when the caller goes on with its own rollout).
    """
    from components.deploy.vertex import cancel_operation, get_operation

    result = RollbackResult()
    canary = canary_id or lease.canary_id
    if lease.operation_id and not canary:
        op_name = f"{endpoint_name}/operations/{lease.operation_id}"
        try:
            op = get_operation(api, op_name)
            if not op.done:
                cancel_operation(api, op_name)
                result.cancelled_operation = op_name
                result.actions.append(f"cancelled the deploy operation {op_name} still in flight")
            elif not op.HasField("error"):
                # It finished after the run died, before the run recorded the canary.
                canary = str(
                    aiplatform_v1.DeployModelResponse.deserialize(op.response.value).deployed_model.id
                )
        except gexc.NotFound:
            pass
    endpoint = get_endpoint(api, endpoint_name)
    current = serving_split(endpoint)
    target = restorable_split(lease.previous_split, endpoint)
    if lease.previous_split and not target:
        raise CloudOperationError(
            f"cannot roll back on {endpoint_name}: none of the deployed models that served before the "
            "rollout "
            f"({', '.join(lease.previous_split)}) is still deployed; traffic left as it is: {current}"
        )
    if current != target:
        endpoint, _ = update_lease(api, endpoint_name, run_id, ttl_s, traffic_split=target)
        result.restored_split = target
        result.actions.append(f"traffic split {current} -> {target}")
    if canary and canary in deployed_ids(endpoint) and canary not in target:
        if undeploy_model(api, endpoint_name, canary, timeout_s=timeout_s):
            result.undeployed.append(canary)
            result.actions.append(f"undeployed canary {canary}")
    if release:
        release_lease(api, endpoint_name, run_id)
        result.actions.append("released the rollout lease")
    return result
