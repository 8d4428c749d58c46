"""Deploy stage: artifacts around :func:`vxdeploy.components.deploy.deployment.deploy_to_endpoint`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from vxdeploy.components.cloud.vertex import VertexApi, resource_id
from vxdeploy.components.common.artifacts import VertexEndpoint, VertexModel
from vxdeploy.components.common.config import CanaryConfig, DeploymentConfig, ModelConfig, parse_section
from vxdeploy.components.common.stage import StageReport, reports_failure, timed, write_json
from vxdeploy.components.deploy.deployment import DeploymentResult, deploy_to_endpoint
from vxdeploy.components.deploy.model_upload import ServingContainer


class DeployOutputs(NamedTuple):
    deployed_model_id: str


@reports_failure("deploy")
def run(
    triton_repository: Any,
    source_model: Any,
    model: dict[str, Any],
    deployment: dict[str, Any],
    canary: dict[str, Any],
    run_id: str,
    vertex_model: Any,
    vertex_endpoint: Any,
    gcp_resources: str,
    report: Any,
    *,
    api: VertexApi | None = None,
    storage: Any = None,
) -> DeployOutputs:
    """Run the deploy step and write its artifacts (``api``/``storage`` are for tests and the CLI)."""
    model_cfg = parse_section(ModelConfig, model, "model")
    deploy_cfg = parse_section(DeploymentConfig, deployment, "deployment")
    canary_cfg = parse_section(CanaryConfig, canary, "canary")
    rep = StageReport("deploy")
    if not Path(gcp_resources).is_file():
        write_json(gcp_resources, {"resources": []})
    with timed(rep):
        result = deploy_to_endpoint(
            triton_repository.path,
            str(getattr(triton_repository, "uri", "") or ""),
            dict(triton_repository.metadata or {}),
            model_cfg,
            deploy_cfg,
            canary_cfg,
            run_id,
            api=api,
            storage=storage,
            gcp_resources_path=gcp_resources,
            source_labels=dict((source_model.metadata or {}).get("source_labels") or {}),
        )
    write_artifacts(result, vertex_model, vertex_endpoint, deploy_cfg)
    rep.summary = summary(result, deploy_cfg)
    rep.details = details(result)
    rep.write(report.path)
    return DeployOutputs(deployed_model_id=result.deployed_model_id)


def _uri(cfg: DeploymentConfig, name: str) -> str:
    base = cfg.api_endpoint.rstrip("/") or f"https://{cfg.location}-aiplatform.googleapis.com"
    return f"{base}/v1/{name}"


def write_artifacts(
    result: DeploymentResult, vertex_model: Any, vertex_endpoint: Any, cfg: DeploymentConfig
) -> None:
    """Fill the ``google.VertexModel`` and ``google.VertexEndpoint`` artifacts (GCPC's metadata layout)."""
    container: ServingContainer = result.container
    vertex_model.uri = _uri(cfg, result.version.versioned_name)
    VertexModel(
        resourceName=result.version.versioned_name,
        model=result.version.model,
        versionId=result.version.version_id,
        displayName=result.version.display_name,
        artifactUri=result.artifact_uri,
        sha256=result.checksum,
        imageUri=container.image_uri,
        predictRoute=container.predict_route,
        invokeRoute=result.invoke_route,
        generation=result.generation,
        scalarInputs=result.scalar_inputs,
    ).write(vertex_model)
    vertex_endpoint.uri = _uri(cfg, result.endpoint.name)
    VertexEndpoint(
        resourceName=result.endpoint.name,
        endpointId=resource_id(result.endpoint.name),
        displayName=str(result.endpoint.endpoint.display_name),
        deployedModelId=result.deployed_model_id,
        generation=result.generation,
    ).write(vertex_endpoint)


def summary(result: DeploymentResult, cfg: DeploymentConfig) -> dict[str, Any]:
    """The headline figures of the deploy step."""
    return {
        "endpoint": result.endpoint.name,
        "endpoint_created": result.endpoint.created,
        "model_version": result.version.versioned_name,
        "model_version_reused": result.version.reused,
        "deployed_model_id": result.deployed_model_id,
        "deploy": result.outcome.how,
        "machine_type": cfg.machine_type,
        "accelerator": f"{cfg.accelerator_count} x {cfg.accelerator_type}"
        if cfg.accelerator_type
        else "none",
        "replicas": f"{cfg.min_replicas}..{cfg.max_replicas}",
        "scale_to_zero": cfg.min_replicas == 0,
        "spot": cfg.spot,
        "network": "vpc_peering"
        if cfg.network
        else ("psc" if cfg.private_service_connect_projects else "public"),
        "smoke_test_route": cfg.resolved_smoke_test_route,
        "traffic_percent": 0,
        "artifact_uri": result.artifact_uri,
        "sha256": result.checksum,
        "lease": "resumed"
        if result.lease.resumed
        else ("taken over" if result.lease.taken_over else "acquired"),
    }


def details(result: DeploymentResult) -> dict[str, Any]:
    return {
        "previous_traffic_split": result.lease.lease.previous_split,
        "deploy_operation": result.outcome.operation,
        "upload_operation": result.version.operation,
        "engine_checks": result.engine_checks,
        "recovered_abandoned_rollout": result.recovered.actions if result.recovered else [],
        "taken_over_lease_of": result.lease.taken_over.holder if result.lease.taken_over else "",
        "gcs_upload": result.upload,
        "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
        "serving_container": {
            "image_uri": result.container.image_uri,
            "args": result.container.args,
            "predict_route": result.container.predict_route,
            "health_route": result.container.health_route,
        },
    }
