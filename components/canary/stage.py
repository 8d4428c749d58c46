"""Canary stage: artifacts around :func:`vxdeploy.components.canary.rollout.run_canary`; the exit handler."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vxdeploy.components.canary.metrics import CloudMonitoringMetricsSource, MetricsSource
from vxdeploy.components.canary.rollout import CanaryResult, roll_back_failed_run, run_canary
from vxdeploy.components.canary.smoke import SmokeResult, smoke_test
from vxdeploy.components.cloud.endpoints import find_endpoint
from vxdeploy.components.cloud.recovery import StrandedRolloutError
from vxdeploy.components.cloud.vertex import VertexApi, connect
from vxdeploy.components.common.artifacts import VertexEndpoint, VertexModel
from vxdeploy.components.common.config import CanaryConfig, DeploymentConfig, parse_section
from vxdeploy.components.common.errors import CanaryRolledBackError, CloudOperationError, UserError
from vxdeploy.components.common.stage import (
    StageReport,
    log_metrics,
    markdown_table,
    reports_failure,
    timed,
    write_text_atomic,
)
from vxdeploy.components.generation.rollout import GenerationCanary, GenerationSmokeResult
from vxdeploy.components.generation.spec import GenerationSpec

LABELS_KEY = "labels"
FAILED_STATES = ("FAILED", "CANCELLED", "CANCELING", "CANCELED")


def load_samples(path: str | Path, labels_key: str = LABELS_KEY) -> dict[str, np.ndarray]:
    """The evaluation inputs of an ``.npz`` (every array but the labels)."""
    with np.load(str(path), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != labels_key and not k.startswith(f"{labels_key}/")}


def load_labels(path: str | Path, labels_key: str = LABELS_KEY) -> np.ndarray | None:
    """The labels of an ``.npz`` (``labels/output_ids`` before ``labels``), or None."""
    with np.load(str(path), allow_pickle=False) as npz:
        for key in (f"{labels_key}/output_ids", labels_key):
            if key in npz.files:
                return np.asarray(npz[key])
    return None


@reports_failure("canary")
def run(
    vertex_endpoint: Any,
    vertex_model: Any,
    eval_data: Any,
    deployed_model_id: str,
    deployment: dict[str, Any],
    canary: dict[str, Any],
    run_id: str,
    metrics: Any,
    table: Any,
    report: Any,
    *,
    api: VertexApi | None = None,
    metrics_source: MetricsSource | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryResult:
    """Run the canary and write its report, Metrics and step table.

    Raises:
        CanaryRolledBackError: after writing the outputs, when the canary was rolled back, so the run
            shows the rollout did not go through.
    """
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    canary_cfg = parse_section(CanaryConfig, canary, "canary")
    endpoint_meta, model_meta = VertexEndpoint.read(vertex_endpoint), VertexModel.read(vertex_model)
    endpoint_name, model_version = endpoint_meta.resourceName, model_meta.resourceName
    api = api or connect(deploy_cfg)
    source = metrics_source or CloudMonitoringMetricsSource(
        deploy_cfg.project, api_endpoint=canary_cfg.monitoring_endpoint, retry=api.retry
    )
    rep = StageReport("canary")
    # As requests carry them: an input of one scalar per sample travels as [batch, 1].
    samples = {
        k: v.reshape(*v.shape, 1) if k in model_meta.scalarInputs else v
        for k, v in load_samples(eval_data.path).items()
    }
    smoke: Callable[..., SmokeResult] = smoke_test
    if model_meta.generation:
        # A generation model: the smoke test and every window also compare the captions it streams.
        generation = GenerationCanary(
            api,
            endpoint_name,
            GenerationSpec.from_dict(model_meta.generation),
            samples,
            load_labels(eval_data.path),
            canary_cfg,
            route=deploy_cfg.resolved_smoke_test_route,
            path=model_meta.predictRoute,
            metrics=source,
        )
        source, smoke = generation, generation.smoke
    with timed(rep):
        result = run_canary(
            api,
            endpoint_name,
            deployed_model_id,
            model_version,
            deploy_cfg,
            canary_cfg,
            run_id,
            metrics=source,
            samples=samples,
            predict_path=model_meta.predictRoute,
            sleep=sleep,
            smoke=smoke,
        )
    last = result.steps[-1] if result.steps else None
    figures: dict[str, Any] = {
        "promoted": result.decision == "promoted",
        "rolled_back": result.decision == "rolled_back",
        "steps_analysed": len(result.steps),
        "failed_analyses": result.failed_checks,
        "final_canary_percent": result.final_split.get(result.canary_id, 0),
        "smoke_requests": result.smoke.requests,
        "smoke_succeeded": result.smoke.succeeded,
    }
    if last is not None:
        figures.update(
            {
                "last_canary_requests": last.analysis.canary.requests,
                "last_canary_error_rate": last.analysis.canary.error_rate,
                "last_canary_p99_ms": last.analysis.canary.p99_latency_ms,
            }
        )
        if last.analysis.baseline is not None:
            figures.update(
                {
                    "last_baseline_error_rate": last.analysis.baseline.error_rate,
                    "last_baseline_p99_ms": last.analysis.baseline.p99_latency_ms,
                }
            )
        if last.analysis.canary.generation:
            figures.update(
                {
                    "last_canary_output_agreement": last.analysis.canary.output_agreement,
                    "last_canary_ttft_p95_ms": last.analysis.canary.ttft_p95_ms,
                    "last_canary_tokens_per_s": last.analysis.canary.tokens_per_s,
                }
            )
    if isinstance(result.smoke, GenerationSmokeResult):
        figures["smoke_output_agreement"] = result.smoke.agreement
        figures["smoke_label_exact_match"] = result.smoke.label_exact_match
    log_metrics(metrics, figures)
    rows = [s.row() for s in result.steps]
    write_text_atomic(
        table.path,
        f"**Canary {result.decision.replace('_', ' ')}**: {result.reason}\n\n"
        f"Smoke test: {result.smoke.succeeded}/{result.smoke.requests} requests"
        + (f" (skipped: {result.smoke.skipped_reason})" if result.smoke.skipped_reason else "")
        + _caption_line(result.smoke)
        + "\n\n"
        + markdown_table(rows),
    )
    rep.status = "succeeded" if result.decision == "promoted" else "failed"
    rep.reason = result.reason
    rep.summary = {**figures, "decision": result.decision, "final_split": result.final_split}
    rep.details = result.to_dict()
    rep.write(report.path)
    if result.decision == "rolled_back":
        raise CanaryRolledBackError(
            f"canary rolled back on {endpoint_name}: {result.reason}; traffic is back on {result.final_split}"
        )
    if result.cleanup_error:
        # Committed: the new version serves 100%; the exit handler finishes the cleanup.
        raise CloudOperationError(
            f"canary promoted on {endpoint_name} (traffic {result.final_split}), but the cleanup after "
            f"promotion failed: {result.cleanup_error}"
        )
    return result


def _caption_line(smoke: SmokeResult) -> str:
    """A generation model's smoke captions against their reference, for the step table."""
    if not isinstance(smoke, GenerationSmokeResult) or smoke.skipped_reason:
        return ""
    if smoke.agreement is None:
        return f"; captions not compared (reference: {smoke.reference_source})"
    return (
        f"; captions agree with {smoke.reference_source} on {smoke.agreement:.0%} of "
        f"{len(smoke.captions)} eval images (need >= {smoke.min_agreement:.0%})"
    )


def _state(status: Any) -> str:
    if status is None:
        return ""
    if isinstance(status, dict):
        return str(status.get("state", ""))
    return str(getattr(status, "state", ""))


@reports_failure("rollback_on_failure")
def run_rollback(
    status: Any,
    deployment: dict[str, Any],
    run_id: str,
    report: Any,
    *,
    api: VertexApi | None = None,
    deadline_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Exit handler: recover the rollout this run still holds, from the phase its lease records.

    Before the commit point traffic goes back to the version that served; after it the cleanup is
    finished. When that cannot be done before the deadline, the report and the error say what state
    the endpoint is in and the ``vxdeploy rollback`` command that repairs it.

    Raises:
        StrandedRolloutError: after writing the report, when the endpoint could not be recovered.
    """
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    rep = StageReport("rollback_on_failure")
    state = _state(status)
    stranded: StrandedRolloutError | None = None
    with timed(rep):
        if not deploy_cfg.enabled:
            rep.status, rep.reason = "skipped", "deployment.enabled is false: nothing was deployed"
        else:
            api = api or connect(deploy_cfg)
            try:
                endpoint = find_endpoint(api, deploy_cfg)
            except UserError as exc:
                # An endpoint vxdeploy does not manage was never rolled out to by this run.
                endpoint, unmanaged = None, str(exc)
            else:
                unmanaged = ""
            if unmanaged:
                rep.status, rep.reason = "skipped", f"nothing to roll back: {unmanaged}"
            elif endpoint is None:
                rep.status, rep.reason = (
                    "skipped",
                    f"no endpoint {deploy_cfg.endpoint!r}: nothing to roll back",
                )
            else:
                try:
                    outcome = roll_back_failed_run(
                        api,
                        str(endpoint.name),
                        run_id,
                        run_failed=state.upper() in FAILED_STATES,
                        deploy_cfg=deploy_cfg,
                        deadline_s=deadline_s,
                        sleep=sleep,
                    )
                except StrandedRolloutError as exc:
                    stranded = exc
                    rep.status, rep.reason = "failed", str(exc)
                    rep.summary = {"action": "stranded"}
                    print(f"rollback_on_failure: {exc}", file=sys.stderr)
                else:
                    rep.reason = outcome.reason
                    rep.status = "skipped" if outcome.action == "none" else "succeeded"
                    rep.summary = {"action": outcome.action, "split_after": outcome.split_after}
                    rep.details = outcome.to_dict()
    rep.summary.setdefault("pipeline_state", state)
    rep.write(report.path)
    if stranded is not None:
        raise stranded
