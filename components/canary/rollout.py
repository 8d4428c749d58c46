"""The canary rollout: smoke test, progressive traffic steps with analysis, then promote or roll back.

Every traffic change goes through the rollout lease (one etag-guarded endpoint update that also
renews the lease and records the phase ``canary-<step>``), so a run that lost its lease never
moves traffic. The split of each step is computed from the split recorded when the rollout began:
the caller never names baseline ids. Promotion sets the aliases and then records ``promoted``,
the commit point: from there on a failure (undeploying old versions) is retried and reported,
never rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from google.api_core import exceptions as gexc

from vxdeploy.components.canary.analysis import Analysis, analyse
from vxdeploy.components.canary.metrics import MetricsSource, WindowStats, combine
from vxdeploy.components.canary.smoke import SmokeResult, smoke_test
from vxdeploy.components.cloud.aliases import PROMOTED_ALIASES, merge_aliases
from vxdeploy.components.cloud.endpoints import apportion, deployed_ids, get_endpoint, serving_split
from vxdeploy.components.cloud.labels import label_value
from vxdeploy.components.cloud.lease import (
    CLEANED,
    LAST_PHASE_KEY,
    LAST_RUN_KEY,
    PROMOTED,
    RolloutLease,
    canary_phase,
    read_lease,
    update_lease,
)
from vxdeploy.components.cloud.recovery import (
    RollbackResult,
    StrandedRolloutError,
    recover_until_deadline,
    roll_back_rollout,
)
from vxdeploy.components.cloud.vertex import VertexApi, resource_id
from vxdeploy.components.common import progress
from vxdeploy.components.common.config import CanaryConfig, DeploymentConfig
from vxdeploy.components.common.errors import CloudOperationError

__all__ = ["PROMOTED_ALIASES", "CanaryResult", "ExitRollback", "StepRecord", "run_canary", "split_for_step"]


def recovery_deadline_s(deploy_cfg: DeploymentConfig) -> float:
    """How long a recovery (exit handler, cleanup after promotion) keeps trying before it reports."""
    return deploy_cfg.operation_timeout_s + 5 * deploy_cfg.retry_timeout_s


def split_for_step(baseline: Mapping[str, int], canary_id: str, percent: int) -> dict[str, int]:
    """The traffic split with ``percent`` on the canary and the rest shared as ``baseline`` was.

    Always sums to 100. Without a baseline the canary takes everything.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"canary percent {percent} is outside (0, 100]")
    rest = {k: v for k, v in baseline.items() if k != canary_id and v > 0}
    if percent == 100 or not rest:
        return {canary_id: 100}
    split = apportion(rest, 100 - percent)
    split[canary_id] = percent
    return {k: v for k, v in split.items() if v > 0 or k == canary_id}


@dataclass
class StepRecord:
    """One analysis of one step."""

    step: int
    percent: int
    attempt: int
    split: dict[str, int]
    window_start: str
    window_end: str
    analysis: Analysis
    baseline_source: str
    # The step whose baseline window this one was compared with, when no baseline served in its own
    # (the 100 % step): its figures are that step's, not measured again.
    baseline_step: int | None = None

    @property
    def verdict(self) -> str:
        return "pass" if self.analysis.passed else "fail"

    def row(self) -> dict[str, Any]:
        """One row of the step table."""
        c, b = self.analysis.canary, self.analysis.baseline
        reason = "; ".join(self.analysis.failures) or "all checks passed"
        if self.baseline_step is not None:
            # Shown once, in the row of the step that measured them; here only where they come from.
            reason += f" (no baseline traffic: compared with step {self.baseline_step}'s baseline)"
            b = None
        return {
            "step": self.step,
            "canary %": self.percent,
            "attempt": self.attempt,
            "canary requests": c.requests,
            "canary error rate": _fmt(c.error_rate),
            "canary p99 ms": _fmt(c.p99_latency_ms),
            "baseline requests": b.requests if b else "-",
            "baseline error rate": _fmt(b.error_rate) if b else "-",
            "baseline p99 ms": _fmt(b.p99_latency_ms) if b else "-",
            "verdict": self.verdict,
            "reason": reason,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "percent": self.percent,
            "attempt": self.attempt,
            "split": self.split,
            "window": [self.window_start, self.window_end],
            "baseline_source": self.baseline_source,
            "baseline_step": self.baseline_step,
            "verdict": self.verdict,
            **self.analysis.to_dict(),
        }


def _fmt(value: float | None) -> Any:
    return "no data" if value is None else round(value, 4)


@dataclass
class CanaryResult:
    """The outcome of :func:`run_canary`."""

    decision: Literal["promoted", "rolled_back"]
    reason: str
    endpoint: str
    canary_id: str
    baseline: dict[str, int]
    smoke: SmokeResult
    steps: list[StepRecord] = field(default_factory=list)
    failed_checks: int = 0
    final_split: dict[str, int] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    undeployed: list[str] = field(default_factory=list)
    rollback: RollbackResult | None = None
    decisions: list[str] = field(default_factory=list)
    cleanup_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "endpoint": self.endpoint,
            "canary_deployed_model_id": self.canary_id,
            "baseline_split": self.baseline,
            "smoke_test": self.smoke.to_dict(),
            "steps": [s.row() for s in self.steps],
            "analyses": [s.to_dict() for s in self.steps],
            "failed_checks": self.failed_checks,
            "final_split": self.final_split,
            "aliases": self.aliases,
            "undeployed": self.undeployed,
            "rollback_actions": self.rollback.actions if self.rollback else [],
            "decisions": self.decisions,
            **({"cleanup_error": self.cleanup_error} if self.cleanup_error else {}),
        }


def run_canary(
    api: VertexApi,
    endpoint_name: str,
    canary_id: str,
    model_version: str,
    deploy_cfg: DeploymentConfig,
    cfg: CanaryConfig,
    run_id: str,
    *,
    metrics: MetricsSource,
    samples: Mapping[str, np.ndarray],
    predict_path: str,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    smoke: Callable[..., SmokeResult] = smoke_test,
) -> CanaryResult:
    """Shift traffic to the canary step by step, analysing each step; promote or roll back.

    Args:
        api: Vertex AI clients.
        endpoint_name: The endpoint (its rollout lease must be held by ``run_id``).
        canary_id: The new deployed model (deployed at 0% by the deploy step).
        model_version: The new model version (``projects/.../models/M@V``), aliased on promotion.
        deploy_cfg: The deployment section (smoke test route, operation timeout).
        cfg: Steps, interval, limits, failure limit, grace period, lease time-to-live.
        run_id: This run.
        metrics: Where per-deployed-model figures come from.
        samples: Evaluation inputs for the smoke test.
        predict_path: The container's inference path for the smoke test.
        sleep: How to wait (tests pass a no-op).
        now: The clock.
        smoke: The smoke test, called as :func:`~vxdeploy.components.canary.smoke.smoke_test` is (a
            generation model's checks its captions:
            :meth:`~vxdeploy.components.generation.rollout.GenerationCanary.smoke`).

    Raises:
        RolloutConflictError: this run does not hold the endpoint's lease.
    """
    already = _already_promoted(api, endpoint_name, canary_id, run_id)
    if already is not None:
        return already
    endpoint, lease = update_lease(api, endpoint_name, run_id, cfg.lease_ttl_s, canary_id=canary_id)
    if lease.committed:
        # An earlier try passed the commit point: only its cleanup is left.
        result = CanaryResult(
            "promoted",
            "an earlier try of this task promoted the canary",
            endpoint_name,
            canary_id,
            {},
            SmokeResult("none", skipped_reason="already promoted"),
        )
        return _clean_up(api, result, deploy_cfg, run_id, sleep, now)
    if canary_id not in deployed_ids(endpoint):
        raise CloudOperationError(
            f"deployed model {canary_id} is not on endpoint {endpoint_name} (deployed: "
            f"{deployed_ids(endpoint)}); "
            "the deploy step must run first"
        )
    present = set(deployed_ids(endpoint))
    baseline = {k: v for k, v in lease.previous_split.items() if k != canary_id and k in present and v > 0}
    result = CanaryResult("promoted", "", endpoint_name, canary_id, baseline, SmokeResult("none"))
    deployed = next(dm for dm in endpoint.deployed_models if str(dm.id) == canary_id)
    result.smoke = smoke(
        api,
        endpoint,
        deployed,
        route=deploy_cfg.resolved_smoke_test_route,
        predict_path=predict_path,
        samples=samples,
        count=cfg.smoke_requests,
        timeout_s=cfg.smoke_timeout_s,
    )
    if not result.smoke.passed:
        reason = (
            f"smoke test failed ({result.smoke.succeeded}/{result.smoke.requests} requests answered): "
            + ("; ".join(result.smoke.failures[:3]))
        )
        return _roll_back(api, result, lease, deploy_cfg, cfg, run_id, reason)
    if result.smoke.skipped_reason:
        result.decisions.append(f"smoke test skipped: {result.smoke.skipped_reason}")
    else:
        result.decisions.append(
            f"smoke test passed: {result.smoke.succeeded}/{result.smoke.requests} requests"
        )

    steps = list(cfg.steps) if baseline else [100]
    if not baseline:
        result.decisions.append(
            "no model served before this rollout: the canary takes 100% at once, "
            "checked against the absolute limits only"
        )
    endpoint_id = resource_id(endpoint_name)
    last_baseline: WindowStats | None = None
    last_baseline_step: int | None = None
    for index, percent in enumerate(steps, start=1):
        split = split_for_step(baseline, canary_id, percent)
        endpoint, lease = update_lease(
            api, endpoint_name, run_id, cfg.lease_ttl_s, traffic_split=split, phase=canary_phase(index)
        )
        result.decisions.append(f"step {index}: traffic split {split}")
        window_start = now()
        attempt = 0
        while True:
            attempt += 1
            progress.step(
                f"canary at {percent}%, {cfg.interval_s:g} s wait", index - 1, len(steps), unit="steps"
            )
            sleep(cfg.interval_s)
            end = now()
            start = end - cfg.analysis_window_s if cfg.analysis_window_s else window_start
            canary_stats = _stats(metrics, endpoint_id, canary_id, start, end)
            live = [k for k in split if k != canary_id]
            if live:
                baseline_stats: WindowStats | None = combine(
                    [_stats(metrics, endpoint_id, k, start, end) for k in live]
                )
                source, compared_step = "baseline, same window", None
            else:
                baseline_stats, source = last_baseline, "baseline, its last window with traffic"
                compared_step = last_baseline_step
            analysis = analyse(canary_stats, baseline_stats, cfg, baseline_label=source.split(",")[0])
            record = StepRecord(
                index, percent, attempt, split, _iso(start), _iso(end), analysis, source, compared_step
            )
            result.steps.append(record)
            if analysis.passed:
                if live:
                    last_baseline, last_baseline_step = baseline_stats, index
                result.decisions.append(f"step {index} ({percent}%): pass")
                break
            result.failed_checks += 1
            failure = f"step {index} ({percent}%) attempt {attempt}: " + "; ".join(analysis.failures)
            result.decisions.append(
                f"{failure} [failed analyses {result.failed_checks}, limit {cfg.failure_limit}]"
            )
            if result.failed_checks > cfg.failure_limit:
                return _roll_back(api, result, lease, deploy_cfg, cfg, run_id, failure)
            window_start = now()  # hold the step and analyse a fresh window
            update_lease(api, endpoint_name, run_id, cfg.lease_ttl_s)
    return _promote(api, result, model_version, deploy_cfg, cfg, run_id, sleep, now)


def _already_promoted(api: VertexApi, endpoint_name: str, canary_id: str, run_id: str) -> CanaryResult | None:
    """A retried task whose earlier try promoted and cleaned up (lease released) has nothing to do."""
    endpoint = get_endpoint(api, endpoint_name)
    lease = read_lease(endpoint)
    labels = dict(endpoint.labels)
    finished = labels.get(LAST_RUN_KEY) == label_value(run_id) and labels.get(LAST_PHASE_KEY) == CLEANED
    if lease is not None or not finished or serving_split(endpoint) != {canary_id: 100}:
        return None
    result = CanaryResult(
        "promoted",
        "an earlier try of this task promoted the canary",
        endpoint_name,
        canary_id,
        {},
        SmokeResult("none", skipped_reason="already promoted"),
        final_split={canary_id: 100},
    )
    result.decisions.append(
        f"{canary_id} already takes 100% and the rollout lease is released: nothing to do"
    )
    return result


def _stats(metrics: MetricsSource, endpoint_id: str, dm_id: str, start: float, end: float) -> WindowStats:
    try:
        return metrics.window_stats(
            endpoint_id, dm_id, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
        )
    except gexc.GoogleAPICallError as exc:
        # A failed query is missing data, and missing data fails the check.
        return WindowStats(note=f"metrics query failed: {exc}")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _promote(
    api: VertexApi,
    result: CanaryResult,
    model_version: str,
    deploy_cfg: DeploymentConfig,
    cfg: CanaryConfig,
    run_id: str,
    sleep: Callable[[float], None],
    now: Callable[[], float],
) -> CanaryResult:
    """Aliases on the new version, then the commit point (phase ``promoted``), then the cleanup."""
    endpoint_name = result.endpoint
    result.aliases = merge_aliases(api, model_version, PROMOTED_ALIASES)
    update_lease(api, endpoint_name, run_id, cfg.lease_ttl_s, phase=PROMOTED)
    result.decisions.append(
        f"promoted (committed): 100% on {result.canary_id}; {model_version} aliased "
        f"{', '.join(PROMOTED_ALIASES)}"
    )
    result.reason = (
        f"all {len(cfg.steps) if result.baseline else 1} step(s) passed with {result.failed_checks} failed "
        f"analyses (limit {cfg.failure_limit})"
    )
    return _clean_up(api, result, deploy_cfg, run_id, sleep, now)


def _clean_up(
    api: VertexApi,
    result: CanaryResult,
    deploy_cfg: DeploymentConfig,
    run_id: str,
    sleep: Callable[[float], None],
    now: Callable[[], float],
) -> CanaryResult:
    """After the commit point: undeploy old versions (after the grace period) and free the lease.

    Retried until :func:`recovery_deadline_s`; a failure then is reported in ``cleanup_error`` (the
    new version keeps serving; the exit handler or ``vxdeploy rollback`` finishes the cleanup).
    """
    try:
        cleanup = recover_until_deadline(
            api,
            result.endpoint,
            run_id,
            deadline_s=recovery_deadline_s(deploy_cfg),
            timeout_s=deploy_cfg.operation_timeout_s,
            sleep=sleep,
            now=now,
        )
    except StrandedRolloutError as exc:
        result.cleanup_error = str(exc)
        result.decisions.append(f"cleanup after promotion failed: {exc}")
    else:
        result.undeployed = list(cleanup.undeployed)
        result.decisions += cleanup.actions
    result.final_split = serving_split(get_endpoint(api, result.endpoint))
    return result


def _roll_back(
    api: VertexApi,
    result: CanaryResult,
    lease: RolloutLease,
    deploy_cfg: DeploymentConfig,
    cfg: CanaryConfig,
    run_id: str,
    reason: str,
) -> CanaryResult:
    result.decision = "rolled_back"
    result.reason = reason
    result.rollback = roll_back_rollout(
        api,
        result.endpoint,
        lease,
        run_id=run_id,
        timeout_s=deploy_cfg.operation_timeout_s,
        ttl_s=cfg.lease_ttl_s,
        canary_id=result.canary_id,
    )
    result.decisions.append(f"rolled back: {reason}; " + "; ".join(result.rollback.actions))
    result.final_split = serving_split(get_endpoint(api, result.endpoint))
    return result


@dataclass
class ExitRollback:
    """What the exit handler found and did."""

    action: Literal["none", "rolled_back", "finished"]
    reason: str
    endpoint: str = ""
    rollback: RollbackResult | None = None
    split_before: dict[str, int] = field(default_factory=dict)
    split_after: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "endpoint": self.endpoint,
            "split_before": self.split_before,
            "split_after": self.split_after,
            "rollback_actions": self.rollback.actions if self.rollback else [],
        }


def roll_back_failed_run(
    api: VertexApi,
    endpoint_name: str,
    run_id: str,
    *,
    run_failed: bool,
    deploy_cfg: DeploymentConfig,
    deadline_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> ExitRollback:
    """The exit handler's work: recover the rollout this run holds, from the phase its lease records.

    Before the commit point the split recorded before the rollout is restored, the canary undeployed
    (its deploy cancelled if still running) and its aliases given back; after it the cleanup is
    finished and traffic stays on the new version. It retries, with growing pauses, until
    ``deadline_s`` (default :func:`recovery_deadline_s`). Does nothing when this run holds no lease
    (it never started a rollout, or finished it).

    Raises:
        StrandedRolloutError: the deadline passed; the message gives the endpoint's state and the
            ``vxdeploy rollback`` command that repairs it. The lease expires within its time-to-live.
    """
    try:
        endpoint = get_endpoint(api, endpoint_name)
    except gexc.NotFound:
        return ExitRollback("none", f"endpoint {endpoint_name} does not exist: nothing to roll back")
    except RECOVERABLE_READ:
        endpoint = None
    before = serving_split(endpoint) if endpoint is not None else {}
    lease = read_lease(endpoint) if endpoint is not None else None
    if endpoint is not None and (lease is None or not lease.held_by(run_id)):
        holder = f"held by {lease.holder!r}" if lease else "not held"
        reason = (
            "the run succeeded"
            if not run_failed
            # A canary that rolled itself back already restored the split and released the lease.
            else (
                f"this run holds no rollout lease on the endpoint ({holder}): no rollout of this run is "
                f"open, nothing left to roll back; traffic stays {before}"
            )
        )
        return ExitRollback("none", reason, endpoint_name, split_before=before, split_after=before)
    committed = lease.committed if lease is not None else False
    outcome = recover_until_deadline(
        api,
        endpoint_name,
        run_id,
        deadline_s=recovery_deadline_s(deploy_cfg) if deadline_s is None else deadline_s,
        timeout_s=deploy_cfg.operation_timeout_s,
        sleep=sleep,
        now=now,
        repair_hint=_repair_flags(deploy_cfg),
    )
    after = serving_split(get_endpoint(api, endpoint_name))
    if outcome.action == "none":
        return ExitRollback("none", "; ".join(outcome.actions), endpoint_name, None, before, after)
    if outcome.action == "finished" or committed:
        return ExitRollback(
            "finished",
            "the run failed after its commit point: cleanup finished",
            endpoint_name,
            outcome,
            before,
            after,
        )
    return ExitRollback(
        "rolled_back", "the run failed during its rollout", endpoint_name, outcome, before, after
    )


def _repair_flags(deploy_cfg: DeploymentConfig) -> str:
    flags = [f"--project {deploy_cfg.project}", f"--location {deploy_cfg.location}"]
    if deploy_cfg.api_endpoint:
        flags.append(f"--api-endpoint {deploy_cfg.api_endpoint}")
    return " ".join(flags)


RECOVERABLE_READ = (gexc.GoogleAPIError, CloudOperationError)
