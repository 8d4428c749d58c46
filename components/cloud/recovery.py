"""Recovering a rollout from what its lease records: restore before the commit point, finish after it.

Used by the canary step when it rolls back or promotes, by the exit handler, by the deploy step when
it takes over a dead run's lease, and by ``vxdeploy rollback``. Every step is idempotent, so a
recovery that is itself interrupted can be run again; :func:`recover_until_deadline` does so until
its own deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import requests
from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1

from vxdeploy.components.cloud.aliases import restore_aliases
from vxdeploy.components.cloud.endpoints import (
    apportion,
    deployed_ids,
    get_endpoint,
    serving_split,
    undeploy_model,
)
from vxdeploy.components.cloud.labels import MANAGED_BY_KEY, MANAGED_BY_VALUE, RUN_ID_KEY
from vxdeploy.components.cloud.lease import (
    CLEANED,
    ROLLED_BACK,
    RolloutLease,
    read_lease,
    release_lease,
    take_over_lease,
    update_lease,
)
from vxdeploy.components.cloud.retry import describe
from vxdeploy.components.cloud.vertex import (
    VertexApi,
    call,
    cancel_operation,
    get_operation,
    pending_operations,
)
from vxdeploy.components.common.errors import CloudOperationError, RolloutConflictError


class StrandedRolloutError(CloudOperationError):
    """A recovery gave up before its deadline: the endpoint needs ``vxdeploy rollback``."""


@dataclass
class RollbackResult:
    """What a recovery did."""

    action: str = "rolled_back"  # "rolled_back", "finished" or "none"
    restored_split: dict[str, int] | None = None
    undeployed: list[str] = field(default_factory=list)
    cancelled_operation: str = ""
    actions: list[str] = field(default_factory=list)


def restorable_split(previous: Mapping[str, int], endpoint: aiplatform_v1.Endpoint) -> dict[str, int]:
    """The recorded split, limited to models still deployed and rescaled to sum to 100."""
    present = set(deployed_ids(endpoint))
    kept = {k: v for k, v in previous.items() if k in present and v > 0}
    if not kept:
        return {}
    return apportion(kept, 100)


def _model_labels(api: VertexApi, dm: aiplatform_v1.DeployedModel) -> dict[str, str]:
    from vxdeploy.components.cloud.aliases import versioned_name

    try:
        model = call(api.models.get_model, aiplatform_v1.GetModelRequest(name=versioned_name(dm)), api=api)
    except gexc.NotFound:
        return {}
    return dict(model.labels)


def _made_by(api: VertexApi, endpoint: aiplatform_v1.Endpoint, holder: str, exclude: set[str]) -> list[str]:
    """Deployed models (not in ``exclude``, taking no traffic) whose model version run ``holder`` uploaded."""
    out = []
    for dm in endpoint.deployed_models:
        dm_id = str(dm.id)
        if dm_id in exclude or int(endpoint.traffic_split.get(dm_id, 0)) > 0:
            continue
        if _model_labels(api, dm).get(RUN_ID_KEY) == holder:
            out.append(dm_id)
    return out


def roll_back_rollout(
    api: VertexApi,
    endpoint_name: str,
    lease: RolloutLease,
    *,
    run_id: str,
    timeout_s: float,
    ttl_s: float | None = None,
    canary_id: str = "",
    release: bool = True,
    made_by: str = "",
) -> RollbackResult:
    """Undo a rollout before its commit point: the recorded split back, aliases back, canary undeployed.

    The caller must hold the lease (as ``run_id``), having taken it over from a dead run if need be.

    Args:
        api: Vertex AI clients.
        endpoint_name: The endpoint.
        lease: The rollout to undo (its recorded split, canary and deploy operation).
        run_id: The run holding the lease now.
        timeout_s: Longest wait for an undeploy operation.
        ttl_s: Lease time-to-live while rolling back; None: the one the lease records.
        canary_id: The canary's deployed model id when the lease does not record it yet.
        release: Release the lease at the end (False when the caller goes on with its own rollout).
        made_by: The run whose model versions count as its canaries (default: the lease's holder).

    Raises:
        CloudOperationError: none of the models that served before is still deployed.
    """
    result = RollbackResult()
    canary = canary_id or lease.canary_id
    # A deploy still under way (recorded, or whose answer was lost) must not land after the rollback.
    in_flight = pending_operations(api, endpoint_name, aiplatform_v1.DeployModelOperationMetadata)
    if lease.operation_id:
        recorded = f"{endpoint_name}/operations/{lease.operation_id}"
        try:
            op = get_operation(api, recorded)
        except gexc.NotFound:
            op = None
        if op is not None and op.done and not op.HasField("error") and not canary:
            # It finished after the run died, before the run recorded the canary.
            canary = str(aiplatform_v1.DeployModelResponse.deserialize(op.response.value).deployed_model.id)
    for op_name in in_flight:
        cancel_operation(api, op_name)
        result.cancelled_operation = op_name
        result.actions.append(f"cancelled the deploy operation {op_name} still in flight")
    endpoint = get_endpoint(api, endpoint_name)
    current = serving_split(endpoint)
    target = restorable_split(lease.previous_split, endpoint)
    if lease.previous_split and not target:
        raise CloudOperationError(
            f"cannot roll back on {endpoint_name}: none of the deployed models that served before the "
            f"rollout ({', '.join(lease.previous_split)}) is still deployed; traffic left as it is: {current}"
        )
    if current != target and target:
        endpoint, _ = update_lease(api, endpoint_name, run_id, ttl_s, traffic_split=target)
        result.restored_split = target
        result.actions.append(f"traffic split {current} -> {target}")
    if canary:
        result.actions += restore_aliases(api, endpoint, canary, target)
    strays = [canary] if canary and canary in deployed_ids(endpoint) and canary not in target else []
    strays += [d for d in _made_by(api, endpoint, made_by or lease.holder, set(target) | set(strays))]
    for dm_id in strays:
        if undeploy_model(api, endpoint_name, dm_id, timeout_s=timeout_s):
            result.undeployed.append(dm_id)
            result.actions.append(f"undeployed canary {dm_id}")
    if release:
        release_lease(api, endpoint_name, run_id, outcome=ROLLED_BACK)
        result.actions.append("released the rollout lease")
    return result


def old_deployed_models(
    api: VertexApi, endpoint: aiplatform_v1.Endpoint, lease: RolloutLease, serving_id: str
) -> tuple[list[str], str]:
    """(deployed models to undeploy after the commit, the one kept at 0% or '').

    Old ones are those that served before the rollout and earlier vxdeploy versions left at 0%;
    with ``keep_previous`` the one that served most before stays.
    """
    present = [str(dm.id) for dm in endpoint.deployed_models if str(dm.id) != serving_id]
    previous = [
        k for k in sorted(lease.previous_split, key=lambda k: -lease.previous_split[k]) if k in present
    ]
    kept = previous[0] if lease.keep_previous and previous else ""
    old = [k for k in previous if k != kept]
    for dm in endpoint.deployed_models:
        dm_id = str(dm.id)
        if dm_id in present and dm_id not in old and dm_id != kept:
            if _model_labels(api, dm).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE:
                old.append(dm_id)
    return old, kept


def finish_rollout(
    api: VertexApi,
    endpoint_name: str,
    lease: RolloutLease,
    *,
    run_id: str,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    release: bool = True,
) -> RollbackResult:
    """Finish a rollout past its commit point: old versions undeployed after the grace period, lease freed.

    Never moves traffic: the promoted version keeps serving 100%.
    """
    result = RollbackResult(action="finished")
    serving = lease.canary_id
    endpoint = get_endpoint(api, endpoint_name)
    old, kept = old_deployed_models(api, endpoint, lease, serving)
    if old:
        wait = lease.phase_at + lease.grace_s - now()
        if wait > 0:
            result.actions.append(f"waited {wait:.0f} s of the {lease.grace_s:g} s grace period")
            sleep(wait)
    for dm_id in old:
        update_lease(api, endpoint_name, run_id)  # renew: undeploying can take a while
        if undeploy_model(api, endpoint_name, dm_id, timeout_s=timeout_s):
            result.undeployed.append(dm_id)
            result.actions.append(f"undeployed old deployed model {dm_id}")
    if kept:
        result.actions.append(f"kept the previous deployed model {kept} at 0% (canary.keep_previous)")
    if release:
        release_lease(api, endpoint_name, run_id, outcome=CLEANED)
        result.actions.append("released the rollout lease")
    return result


def recover_rollout(
    api: VertexApi,
    endpoint_name: str,
    lease: RolloutLease,
    *,
    run_id: str,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    release: bool = True,
    made_by: str = "",
) -> RollbackResult:
    """Restore (before the commit point) or finish (after it) the rollout ``lease`` records."""
    if lease.committed:
        return finish_rollout(
            api,
            endpoint_name,
            lease,
            run_id=run_id,
            timeout_s=timeout_s,
            sleep=sleep,
            now=now,
            release=release,
        )
    return roll_back_rollout(
        api, endpoint_name, lease, run_id=run_id, timeout_s=timeout_s, release=release, made_by=made_by
    )


RECOVERABLE = (gexc.GoogleAPIError, CloudOperationError, requests.RequestException)
"""Failures of a recovery step: it stops there, and the endpoint keeps what its lease records."""

_RETRIED = (
    gexc.RetryError,  # transient errors until one call's deadline
    gexc.Aborted,  # ABORTED / 409: an etag race
    gexc.Conflict,
    gexc.FailedPrecondition,  # e.g. an operation on the endpoint still running
    CloudOperationError,  # an operation that failed or did not finish in time
    requests.RequestException,
)


def _worth_retrying(exc: BaseException) -> bool:
    """Whether a recovery should try again after ``exc``: not after a refusal (403, 400) that will stay."""
    from vxdeploy.components.cloud.retry import is_transient

    return is_transient(exc) or isinstance(exc, _RETRIED)


def recover_until_deadline(
    api: VertexApi,
    endpoint_name: str,
    run_id: str,
    *,
    deadline_s: float,
    timeout_s: float,
    take_over: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    repair_hint: str = "",
) -> RollbackResult:
    """Recover the rollout ``run_id`` holds (or, with ``take_over``, whichever one the endpoint records).

    Tries again after any failure but a conflict, with growing pauses, until ``deadline_s``.

    Raises:
        StrandedRolloutError: the deadline passed; the message says what state the endpoint is in
            and the one command that repairs it. The lease is left to expire by the time-to-live
            it records.
        RolloutConflictError: another run holds the lease (and ``take_over`` is False).
    """
    start = time.monotonic()
    pause = 0.05
    last: BaseException | None = None
    made_by = ""  # the run whose rollout this is, as first seen (before a take-over renames the holder)
    while True:
        try:
            endpoint = get_endpoint(api, endpoint_name)
            lease = read_lease(endpoint)
            if lease is not None and not made_by:
                made_by = lease.holder
            if take_over and lease is not None and not lease.held_by(run_id):
                endpoint, _ = take_over_lease(api, endpoint_name, run_id, now=now)
                lease = read_lease(endpoint)
            if lease is None or not lease.held_by(run_id):
                holder = f"held by {lease.holder!r}" if lease else "not held"
                return RollbackResult(
                    action="none", actions=[f"no rollout lease of this run on the endpoint ({holder})"]
                )
            return recover_rollout(
                api,
                endpoint_name,
                lease,
                run_id=run_id,
                timeout_s=timeout_s,
                sleep=sleep,
                now=now,
                made_by=made_by,
            )
        except RolloutConflictError:
            raise
        except RECOVERABLE as exc:
            last = exc
            if not _worth_retrying(exc):
                break
        elapsed = time.monotonic() - start
        if elapsed + pause > deadline_s:
            break
        sleep(pause)
        pause = min(pause * 2, 30.0)
    raise StrandedRolloutError(
        f"could not recover the rollout on {endpoint_name} (within {deadline_s:g} s; last error: "
        f"{describe(last) if last else 'none'}). {endpoint_state(api, endpoint_name)} "
        f"Repair it with: {repair_command(endpoint_name, repair_hint)}"
    ) from last


def repair_command(endpoint_name: str, extra: str = "") -> str:
    """The one command that repairs a stranded endpoint."""
    return f"vxdeploy rollback --endpoint {endpoint_name}" + (f" {extra}" if extra else "")


def endpoint_state(api: VertexApi, endpoint_name: str) -> str:
    """One sentence on the endpoint's traffic, deployed models and rollout lease (best effort)."""
    try:
        endpoint = get_endpoint(api, endpoint_name)
    except RECOVERABLE as exc:
        return f"The endpoint could not be read either ({describe(exc)})."
    lease = read_lease(endpoint)
    split = serving_split(endpoint)
    text = f"Endpoint state: traffic {split}, deployed models {deployed_ids(endpoint)}"
    if lease is None:
        return text + ", no rollout lease."
    left = lease.expires_at - time.time()
    return (
        text + f", rollout lease of {lease.holder!r} in phase {lease.phase!r} "
        f"(canary {lease.canary_id or 'none'}, split before {lease.previous_split}), "
        f"expiring in {left:.0f} s."
    )
