"""Monitoring stage: KFP artifacts in and out around :func:`reconcile.setup_monitoring`."""

from __future__ import annotations

from typing import Any

from vxdeploy.components.cloud.monitoring import MonitoringClients
from vxdeploy.components.cloud.retry import RetryPolicy
from vxdeploy.components.common.artifacts import VertexEndpoint
from vxdeploy.components.common.config import DeploymentConfig, MonitoringConfig, parse_section
from vxdeploy.components.common.stage import StageReport, reports_failure, timed
from vxdeploy.components.monitoring.policies import ServingShape
from vxdeploy.components.monitoring.reconcile import MonitoringResult, setup_monitoring


@reports_failure("monitoring")
def run(
    vertex_endpoint: Any,
    deployment: dict[str, Any],
    monitoring: dict[str, Any],
    report: Any,
    *,
    clients: MonitoringClients | None = None,
    retry: RetryPolicy | None = None,
) -> MonitoringResult | None:
    """Set up the endpoint's monitoring and write the stage report (``clients``/``retry`` for tests).

    The ``google.VertexEndpoint`` artifact's metadata follows
    :class:`~vxdeploy.components.common.artifacts.VertexEndpoint` (``resourceName`` is
    ``projects/P/locations/L/endpoints/ID``, GCPC's convention), as the deploy stage writes it.
    """
    cfg = parse_section(MonitoringConfig, monitoring, "monitoring")
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    rep = StageReport("monitoring")
    if not cfg.enabled:
        rep.status = "skipped"
        rep.reason = "monitoring.enabled is false"
        rep.write(report.path)
        return None
    endpoint = VertexEndpoint.read(vertex_endpoint)
    deployed = endpoint.deployedModelId
    shape = ServingShape(
        accelerator_type=deploy_cfg.accelerator_type if deploy_cfg.accelerator_count > 0 else "",
        max_replicas=deploy_cfg.max_replicas,
    )
    with timed(rep):
        result = setup_monitoring(
            endpoint.resourceName,
            cfg,
            deploy_cfg.project,
            shape=shape,
            deployed_model_ids=[deployed] if deployed else [],
            endpoint_display_name=endpoint.displayName,
            clients=clients,
            retry=retry,
            generation=bool(endpoint.generation),
        )
    rep.summary = result.summary()
    rep.details = {
        **result.to_dict(),
        "thresholds": {
            "p99_latency_ms": cfg.p99_latency_ms,
            "error_rate": cfg.error_rate,
            "gpu_duty_cycle_percent": cfg.gpu_duty_cycle if shape.accelerator_type else None,
            "cpu_utilization_percent": None if shape.accelerator_type else cfg.cpu_utilization,
            "max_replicas": shape.max_replicas if cfg.replica_saturation else None,
            **(
                {"ttft_p95_ms": cfg.ttft_ms, "min_tokens_per_s": cfg.min_tokens_per_s}
                if endpoint.generation
                else {}
            ),
        },
    }
    rep.write(report.path)
    return result
