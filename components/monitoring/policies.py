"""The alert policies vxdeploy keeps on a Vertex AI endpoint: p99 latency, error rate, saturation.

A generation model's endpoint also gets time to first token and decode speed, on the custom metrics
of :mod:`vxdeploy.components.monitoring.generation_metrics`.

Each condition is evaluated per deployed model (series grouped by ``deployed_model_id``), so a
canary that misbehaves alerts on its own even while it takes a small share of the traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.cloud import monitoring_v3
from google.protobuf import duration_pb2

from vxdeploy.components.common.config import MonitoringConfig
from vxdeploy.components.monitoring import generation_metrics as gm
from vxdeploy.components.monitoring import vertex_metrics as vm
from vxdeploy.components.monitoring.vertex_metrics import EndpointRef

Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer
Condition = monitoring_v3.AlertPolicy.Condition
MetricThreshold = monitoring_v3.AlertPolicy.Condition.MetricThreshold

ROLE_LATENCY = "p99-latency"
ROLE_ERRORS = "error-rate"
ROLE_SATURATION = "saturation"
ROLE_TTFT = "time-to-first-token"
ROLE_TOKENS_PER_S = "tokens-per-second"
AUTO_CLOSE_S = 1800
# A saturated GPU or a full replica set is worth an alert only when it lasts: autoscaling needs
# a few minutes to add replicas after a burst.
SATURATION_MIN_DURATION_S = 900


@dataclass(frozen=True)
class ServingShape:
    """What the deployment serves on, which decides the saturation conditions.

    Attributes:
        accelerator_type: e.g. ``NVIDIA_L4``; '' for CPU serving.
        max_replicas: The autoscaling ceiling; 0 when unknown (no replica condition).
    """

    accelerator_type: str = ""
    max_replicas: int = 0


def policy_display_name(endpoint: EndpointRef, role: str) -> str:
    """The display name of one managed policy: stable per endpoint and role, so it can be matched."""
    titles = {
        ROLE_LATENCY: "p99 latency",
        ROLE_ERRORS: "error rate",
        ROLE_SATURATION: "saturation",
        ROLE_TTFT: "time to first token",
        ROLE_TOKENS_PER_S: "tokens per second",
    }
    return f"vxdeploy endpoint {endpoint.endpoint_id}: {titles[role]}"


def build_alert_policies(
    endpoint: EndpointRef,
    cfg: MonitoringConfig,
    shape: ServingShape,
    labels: dict[str, str],
    notification_channels: list[str],
    *,
    generation: bool = False,
) -> dict[str, monitoring_v3.AlertPolicy]:
    """The alert policies the endpoint should have, by role.

    Args:
        endpoint: The endpoint watched.
        cfg: Thresholds and windows.
        shape: Accelerator and replica ceiling of the deployment.
        labels: User labels every managed policy carries (managed-by, endpoint); the role is added.
        notification_channels: Channel resource names to notify.
        generation: The endpoint serves a generation model: also alert on time to first token and
            decode speed.

    Returns:
        ``{role: AlertPolicy}`` for ``p99-latency``, ``error-rate``, when there is something to
        watch ``saturation``, and for a generation model ``time-to-first-token`` and
        ``tokens-per-second``.
    """
    policies = {
        ROLE_LATENCY: _policy(
            endpoint,
            ROLE_LATENCY,
            [
                _threshold(
                    f"p99 latency above {cfg.p99_latency_ms:g} ms",
                    vm.endpoint_filter(vm.PREDICTION_LATENCIES, endpoint, extra=vm.TOTAL_LATENCY),
                    Aligner.ALIGN_PERCENTILE_99,
                    Reducer.REDUCE_MAX,
                    cfg.p99_latency_ms,
                    cfg,
                )
            ],
            _latency_doc(endpoint, cfg),
            monitoring_v3.AlertPolicy.Severity.WARNING,
            labels,
            notification_channels,
        ),
        ROLE_ERRORS: _policy(
            endpoint,
            ROLE_ERRORS,
            [_error_rate_condition(endpoint, cfg)],
            _errors_doc(endpoint, cfg),
            monitoring_v3.AlertPolicy.Severity.ERROR,
            labels,
            notification_channels,
        ),
    }
    saturation = _saturation_conditions(endpoint, cfg, shape)
    if saturation:
        policies[ROLE_SATURATION] = _policy(
            endpoint,
            ROLE_SATURATION,
            saturation,
            _saturation_doc(endpoint, cfg, shape),
            monitoring_v3.AlertPolicy.Severity.WARNING,
            labels,
            notification_channels,
        )
    if generation:
        policies.update(_generation_policies(endpoint, cfg, labels, notification_channels))
    return policies


def _generation_policies(
    endpoint: EndpointRef, cfg: MonitoringConfig, labels: dict[str, str], notification_channels: list[str]
) -> dict[str, monitoring_v3.AlertPolicy]:
    """p95 time to first token above ``monitoring.ttft_ms``; median tokens/s below ``min_tokens_per_s``."""
    ttft = _threshold(
        f"p95 time to first token above {cfg.ttft_ms:g} ms",
        gm.generation_filter(gm.TIME_TO_FIRST_TOKEN, endpoint),
        Aligner.ALIGN_PERCENTILE_95,
        Reducer.REDUCE_MAX,
        cfg.ttft_ms,
        cfg,
    )
    tokens = _threshold(
        f"median decode speed below {cfg.min_tokens_per_s:g} tokens/s",
        gm.generation_filter(gm.TOKENS_PER_SECOND, endpoint),
        Aligner.ALIGN_PERCENTILE_50,
        # The slowest replica set decides: a canary decoding slowly alerts on its own.
        Reducer.REDUCE_MIN,
        cfg.min_tokens_per_s,
        cfg,
        comparison=monitoring_v3.ComparisonType.COMPARISON_LT,
    )
    return {
        ROLE_TTFT: _policy(
            endpoint,
            ROLE_TTFT,
            [ttft],
            _generation_doc(
                endpoint,
                cfg,
                f"The 95th percentile of time to first token of a deployed model stayed above "
                f"**{cfg.ttft_ms:g} ms**",
                "monitoring.ttft_ms",
            ),
            monitoring_v3.AlertPolicy.Severity.WARNING,
            labels,
            notification_channels,
        ),
        ROLE_TOKENS_PER_S: _policy(
            endpoint,
            ROLE_TOKENS_PER_S,
            [tokens],
            _generation_doc(
                endpoint,
                cfg,
                f"The median decode speed of a deployed model stayed below **{cfg.min_tokens_per_s:g} "
                "tokens/s**",
                "monitoring.min_tokens_per_s",
            ),
            monitoring_v3.AlertPolicy.Severity.WARNING,
            labels,
            notification_channels,
        ),
    }


def _generation_doc(endpoint: EndpointRef, cfg: MonitoringConfig, what: str, field: str) -> str:
    return (
        f"{what} on endpoint `{endpoint.resource_name}` for {cfg.alert_duration_s // 60} min (aligned over "
        f"{cfg.alignment_period_s // 60} min), from the generation metrics the serving side writes "
        f"(`{gm.TIME_TO_FIRST_TOKEN}`, `{gm.TOKENS_PER_SECOND}`).\n\n"
        "A slow first token with normal decode speed points at the vision encoder or queueing (GPU duty "
        "cycle, replicas); slow decoding at the decoder steps. If it started with a new deployed model, "
        "roll it back.\n\n"
        f"Managed by vxdeploy: edits here are overwritten by the next run; change `{field}` instead."
    )


def _policy(
    endpoint: EndpointRef,
    role: str,
    conditions: list[monitoring_v3.AlertPolicy.Condition],
    documentation: str,
    severity: int,
    labels: dict[str, str],
    notification_channels: list[str],
) -> monitoring_v3.AlertPolicy:
    return monitoring_v3.AlertPolicy(
        display_name=policy_display_name(endpoint, role),
        user_labels={**labels, "vxdeploy_alert": role},
        conditions=conditions,
        combiner=monitoring_v3.AlertPolicy.ConditionCombinerType.OR,
        enabled=True,
        notification_channels=sorted(notification_channels),
        documentation=monitoring_v3.AlertPolicy.Documentation(
            content=documentation,
            mime_type="text/markdown",
            subject=f"[vxdeploy] {policy_display_name(endpoint, role)}",
        ),
        alert_strategy=monitoring_v3.AlertPolicy.AlertStrategy(
            auto_close=duration_pb2.Duration(seconds=AUTO_CLOSE_S)
        ),
        severity=severity,
    )


def _aggregation(cfg: MonitoringConfig, aligner: int, reducer: int) -> monitoring_v3.Aggregation:
    return monitoring_v3.Aggregation(
        alignment_period=duration_pb2.Duration(seconds=cfg.alignment_period_s),
        per_series_aligner=aligner,
        cross_series_reducer=reducer,
        group_by_fields=[vm.DEPLOYED_MODEL_LABEL],
    )


def _threshold(
    display_name: str,
    filter_: str,
    aligner: int,
    reducer: int,
    value: float,
    cfg: MonitoringConfig,
    *,
    comparison: int = monitoring_v3.ComparisonType.COMPARISON_GT,
    duration_s: int | None = None,
) -> monitoring_v3.AlertPolicy.Condition:
    return Condition(
        display_name=display_name,
        condition_threshold=MetricThreshold(
            filter=filter_,
            aggregations=[_aggregation(cfg, aligner, reducer)],
            comparison=comparison,
            threshold_value=value,
            duration=duration_pb2.Duration(
                seconds=cfg.alert_duration_s if duration_s is None else duration_s
            ),
        ),
    )


def _error_rate_condition(
    endpoint: EndpointRef, cfg: MonitoringConfig
) -> monitoring_v3.AlertPolicy.Condition:
    # A ratio condition: errors per second over responses per second, per deployed model. A
    # threshold on the error count alone would alert on a busy model and miss a quiet one.
    return Condition(
        display_name=f"error rate above {cfg.error_rate:.2%}",
        condition_threshold=MetricThreshold(
            filter=vm.endpoint_filter(vm.ERROR_COUNT, endpoint),
            aggregations=[_aggregation(cfg, Aligner.ALIGN_RATE, Reducer.REDUCE_SUM)],
            denominator_filter=vm.endpoint_filter(vm.RESPONSE_COUNT, endpoint),
            denominator_aggregations=[_aggregation(cfg, Aligner.ALIGN_RATE, Reducer.REDUCE_SUM)],
            comparison=monitoring_v3.ComparisonType.COMPARISON_GT,
            threshold_value=cfg.error_rate,
            duration=duration_pb2.Duration(seconds=cfg.alert_duration_s),
        ),
    )


def _saturation_conditions(
    endpoint: EndpointRef, cfg: MonitoringConfig, shape: ServingShape
) -> list[monitoring_v3.AlertPolicy.Condition]:
    duration = max(cfg.alert_duration_s, SATURATION_MIN_DURATION_S)
    conditions = []
    if shape.accelerator_type:
        # Vertex AI writes duty cycle as a fraction (unit 10^2.%): 90% is 0.9.
        conditions.append(
            _threshold(
                f"GPU duty cycle above {cfg.gpu_duty_cycle:g}%",
                vm.endpoint_filter(vm.ACCELERATOR_DUTY_CYCLE, endpoint),
                Aligner.ALIGN_MEAN,
                Reducer.REDUCE_MEAN,
                cfg.gpu_duty_cycle / 100,
                cfg,
                duration_s=duration,
            )
        )
    else:
        conditions.append(
            _threshold(
                f"CPU utilization above {cfg.cpu_utilization:g}%",
                vm.endpoint_filter(vm.CPU_UTILIZATION, endpoint),
                Aligner.ALIGN_MEAN,
                Reducer.REDUCE_MEAN,
                cfg.cpu_utilization / 100,
                cfg,
                duration_s=duration,
            )
        )
    if cfg.replica_saturation and shape.max_replicas > 0:
        conditions.append(
            _threshold(
                f"replicas at the maximum of {shape.max_replicas}",
                vm.endpoint_filter(vm.REPLICAS, endpoint),
                # The fewest replicas in each window: at the ceiling for the whole window.
                Aligner.ALIGN_MIN,
                Reducer.REDUCE_MAX,
                float(shape.max_replicas),
                cfg,
                comparison=monitoring_v3.ComparisonType.COMPARISON_GE,
                duration_s=duration,
            )
        )
    return conditions


def _latency_doc(endpoint: EndpointRef, cfg: MonitoringConfig) -> str:
    return (
        f"The 99th percentile of end-to-end prediction latency of a deployed model on endpoint "
        f"`{endpoint.resource_name}` stayed above **{cfg.p99_latency_ms:g} ms** for "
        f"{cfg.alert_duration_s // 60} min (aligned over {cfg.alignment_period_s // 60} min).\n\n"
        "Check the vxdeploy dashboard of this endpoint: if one deployed model (a canary) is slower than "
        "the others, roll it back; if all are slow, look at GPU duty cycle and replicas (raise "
        "`deployment.max_replicas`) or at request sizes.\n\n"
        "Managed by vxdeploy: edits here are overwritten by the next run; change "
        "`monitoring.p99_latency_ms` instead."
    )


def _errors_doc(endpoint: EndpointRef, cfg: MonitoringConfig) -> str:
    return (
        f"More than **{cfg.error_rate:.2%}** of the responses of a deployed model on endpoint "
        f"`{endpoint.resource_name}` were errors for {cfg.alert_duration_s // 60} min.\n\n"
        "Look at `response_count` by `response_code` on the dashboard and at the serving container's "
        "logs; if the errors started with a new deployed model, roll it back.\n\n"
        "Managed by vxdeploy: edits here are overwritten by the next run; change "
        "`monitoring.error_rate` instead."
    )


def _saturation_doc(endpoint: EndpointRef, cfg: MonitoringConfig, shape: ServingShape) -> str:
    what = (
        f"GPU duty cycle above {cfg.gpu_duty_cycle:g}%"
        if shape.accelerator_type
        else f"CPU utilization above {cfg.cpu_utilization:g}%"
    )
    replicas = (
        f", or its replica count at the maximum of {shape.max_replicas}"
        if cfg.replica_saturation and shape.max_replicas > 0
        else ""
    )
    return (
        f"A deployed model on endpoint `{endpoint.resource_name}` ran with {what}{replicas} for "
        f"{max(cfg.alert_duration_s, SATURATION_MIN_DURATION_S) // 60} min: it has no headroom left and "
        "latency will follow.\n\n"
        "Raise `deployment.max_replicas`, pick a larger machine or GPU, or a faster serving candidate.\n\n"
        "Managed by vxdeploy: edits here are overwritten by the next run."
    )
