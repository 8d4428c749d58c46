"""Vertex AI endpoints: get-or-create by display name or id, traffic and label updates, undeploy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1
from google.protobuf import field_mask_pb2

from vxdeploy.components.cloud.labels import MANAGED_BY_KEY, MANAGED_BY_VALUE
from vxdeploy.components.cloud.vertex import (
    VertexApi,
    call,
    create_once,
    pending_operations,
    record_gcp_resource,
    wait_for_operation,
)
from vxdeploy.components.common.config import DeploymentConfig
from vxdeploy.components.common.errors import CloudOperationError, UserError

_NUMERIC_ID = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class EndpointRef:
    """The endpoint a rollout targets, and whether this call created it."""

    endpoint: aiplatform_v1.Endpoint
    created: bool

    @property
    def name(self) -> str:
        return str(self.endpoint.name)


def endpoint_id_for(display_name: str) -> str:
    """A deterministic endpoint id for a display name, so a retried create cannot make a second one."""
    slug = re.sub(r"[^a-z0-9-]+", "-", display_name.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"vx-{slug}".rstrip("-")
    return slug[:63].rstrip("-")


def get_endpoint(api: VertexApi, name: str) -> aiplatform_v1.Endpoint:
    return call(api.endpoints.get_endpoint, aiplatform_v1.GetEndpointRequest(name=name), api=api)


def find_endpoint(api: VertexApi, cfg: DeploymentConfig) -> aiplatform_v1.Endpoint | None:
    """The endpoint ``cfg.endpoint`` names (numeric id, resource name, or display name), or None.

    A display name matches endpoints labelled ``managed-by=vxdeploy``.

    Raises:
        UserError: a display name held by an endpoint vxdeploy does not manage, or by several
            managed endpoints.
    """
    if _NUMERIC_ID.match(cfg.endpoint) or cfg.endpoint.startswith("projects/"):
        name = (
            cfg.endpoint if cfg.endpoint.startswith("projects/") else f"{api.parent}/endpoints/{cfg.endpoint}"
        )
        try:
            return get_endpoint(api, name)
        except gexc.NotFound:
            return None
    found = _endpoints_named(api, cfg.endpoint)
    managed = [e for e in found if e.labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE]
    if len(managed) == 1:
        return managed[0]
    if len(managed) > 1:
        ids = ", ".join(e.name.rsplit("/", 1)[-1] for e in managed)
        raise UserError(
            f"deployment.endpoint={cfg.endpoint!r}: {len(managed)} endpoints managed by vxdeploy carry this "
            f"display name ({ids}); set deployment.endpoint to the numeric id of the one to use"
        )
    if found:
        ids = ", ".join(e.name.rsplit("/", 1)[-1] for e in found)
        raise UserError(
            f"deployment.endpoint={cfg.endpoint!r}: endpoint(s) {ids} carry this display name but are not "
            "managed by vxdeploy; set deployment.endpoint to its numeric id to deploy there anyway"
        )
    return None


def get_or_create_endpoint(
    api: VertexApi,
    cfg: DeploymentConfig,
    *,
    gcp_resources_path: str | Path | None = None,
) -> EndpointRef:
    """Find the endpoint ``cfg.endpoint`` names (see :func:`find_endpoint`) or create it.

    It is created with a deterministic id (:func:`endpoint_id_for`), labelled ``managed-by=vxdeploy``,
    so two tries never make two endpoints.

    Raises:
        UserError: a numeric id that does not exist, or an ambiguous display name.
    """
    found = find_endpoint(api, cfg)
    if found is not None:
        return EndpointRef(found, created=False)
    if _NUMERIC_ID.match(cfg.endpoint) or cfg.endpoint.startswith("projects/"):
        raise UserError(
            f"deployment.endpoint={cfg.endpoint!r}: no such endpoint in {api.parent}; give the id of an "
            "existing endpoint, or a display name to have vxdeploy create one"
        )
    return EndpointRef(_create_endpoint(api, cfg, gcp_resources_path), created=True)


def _endpoints_named(api: VertexApi, display_name: str) -> list[aiplatform_v1.Endpoint]:
    escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
    request = aiplatform_v1.ListEndpointsRequest(parent=api.parent, filter=f'display_name="{escaped}"')
    return list(call(api.endpoints.list_endpoints, request, api=api))


def _create_endpoint(
    api: VertexApi, cfg: DeploymentConfig, gcp_resources_path: str | Path | None
) -> aiplatform_v1.Endpoint:
    endpoint_id = endpoint_id_for(cfg.endpoint)
    endpoint = aiplatform_v1.Endpoint(
        display_name=cfg.endpoint,
        description="Managed by vxdeploy: canary rollouts of Triton model versions.",
        labels={MANAGED_BY_KEY: MANAGED_BY_VALUE},
    )
    if cfg.network:
        endpoint.network = cfg.network
    elif cfg.private_service_connect_projects:
        endpoint.private_service_connect_config = aiplatform_v1.PrivateServiceConnectConfig(
            enable_private_service_connect=True,
            project_allowlist=list(cfg.private_service_connect_projects),
        )
    if not cfg.network and cfg.resolved_smoke_test_route == "invoke":
        # The invoke route that reaches one deployed model is served only by dedicated endpoints.
        endpoint.dedicated_endpoint_enabled = True
    request = aiplatform_v1.CreateEndpointRequest(
        parent=api.parent, endpoint=endpoint, endpoint_id=endpoint_id
    )
    name = f"{api.parent}/endpoints/{endpoint_id}"

    def send() -> str:
        lro = api.endpoints.create_endpoint(request=request, timeout=api.call_timeout_s)
        return str(lro.operation.name)

    def look_up() -> str | None:
        # A create whose answer was lost left either the endpoint or its operation under way.
        pending = pending_operations(api, name, aiplatform_v1.CreateEndpointOperationMetadata)
        if pending:
            return pending[0]
        try:
            get_endpoint(api, name)
        except gexc.NotFound:
            return None
        return ""

    try:
        op_name = create_once(
            f"CreateEndpoint {cfg.endpoint!r}", send, look_up, api=api, passthrough=(gexc.Conflict,)
        )
    except gexc.Conflict:  # 409: over REST an ALREADY_EXISTS arrives as Conflict
        # An earlier try created it (its answer was lost): use it, once its operation is done.
        op_name = next(iter(pending_operations(api, name, aiplatform_v1.CreateEndpointOperationMetadata)), "")
    if op_name:
        record_gcp_resource(gcp_resources_path, "CreateEndpoint", api.resource_uri(op_name))
        wait_for_operation(api, op_name, timeout_s=600, what=f"CreateEndpoint {cfg.endpoint!r}")
    return get_endpoint(api, name)


def update_endpoint(
    api: VertexApi,
    endpoint: aiplatform_v1.Endpoint,
    *,
    traffic_split: Mapping[str, int] | None = None,
    labels: Mapping[str, str] | None = None,
    etag: bool = True,
) -> aiplatform_v1.Endpoint:
    """Set the traffic split and/or labels in one call, guarded by the endpoint's etag.

    Raises:
        google.api_core.exceptions.Aborted: the endpoint changed since ``endpoint`` was read.
    """
    paths = []
    body = aiplatform_v1.Endpoint(name=endpoint.name, display_name=endpoint.display_name)
    if etag:
        body.etag = endpoint.etag
    if traffic_split is not None:
        _check_split_sums(traffic_split)
        body.traffic_split = dict(traffic_split)
        paths.append("traffic_split")
    if labels is not None:
        body.labels = dict(labels)
        paths.append("labels")
    if not paths:
        return endpoint
    request = aiplatform_v1.UpdateEndpointRequest(
        endpoint=body, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    return call(api.endpoints.update_endpoint, request, api=api)


def _check_split_sums(split: Mapping[str, int]) -> None:
    total = sum(split.values())
    if split and total != 100:
        raise CloudOperationError(
            f"refusing to send traffic split {dict(split)}: it sums to {total}, not 100"
        )


def undeploy_model(
    api: VertexApi,
    endpoint_name: str,
    deployed_model_id: str,
    *,
    timeout_s: float,
    gcp_resources_path: str | Path | None = None,
) -> bool:
    """Undeploy one deployed model that takes no traffic; returns False when it was already gone."""
    request = aiplatform_v1.UndeployModelRequest(endpoint=endpoint_name, deployed_model_id=deployed_model_id)
    try:
        # Undeploying is idempotent in effect: a retry after a lost answer finds the model gone (404)
        # or undeploys what is still there.
        lro = call(api.endpoints.undeploy_model, request, api=api)
    except gexc.NotFound:
        return False
    op_name = lro.operation.name
    record_gcp_resource(gcp_resources_path, "UndeployModel", api.resource_uri(op_name))
    wait_for_operation(api, op_name, timeout_s=timeout_s, what=f"UndeployModel {deployed_model_id}")
    return True


def deployed_ids(endpoint: aiplatform_v1.Endpoint) -> list[str]:
    return [str(dm.id) for dm in endpoint.deployed_models]


def serving_split(endpoint: aiplatform_v1.Endpoint) -> dict[str, int]:
    """The endpoint's traffic split, without zero entries."""
    return {str(k): int(v) for k, v in endpoint.traffic_split.items() if int(v) > 0}


def apportion(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer shares of ``total`` proportional to ``weights``, summing to exactly ``total``.

    Largest-remainder rounding, ties broken by key, so the result is deterministic.
    """
    weight_sum = float(sum(weights.values()))
    if weight_sum <= 0:
        raise ValueError(f"weights {dict(weights)} have no positive total")
    raw = {k: total * w / weight_sum for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    short = total - sum(out.values())
    for k in sorted(raw, key=lambda k: (out[k] - raw[k], k))[:short]:
        out[k] += 1
    return out
