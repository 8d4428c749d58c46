"""Deploy a model version to an endpoint with no traffic: machine, GPUs, replicas, autoscaling, spot.

Idempotent: a model version already deployed on the endpoint is found, and a deploy operation
already under way (recorded in the rollout lease or the task's ``gcp_resources``) is resumed
instead of starting a second one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1
from google.protobuf import duration_pb2

from vxdeploy.components.cloud.endpoints import get_endpoint
from vxdeploy.components.cloud.vertex import (
    VertexApi,
    create_once,
    get_operation,
    pending_operations,
    record_gcp_resource,
    recorded_operations,
    same_resource,
    wait_for_operation,
)
from vxdeploy.components.common.config import DeploymentConfig
from vxdeploy.components.common.errors import UserError
from vxdeploy.components.deploy.model_upload import ModelVersion, ServingContainer

CPU_UTILIZATION = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
GPU_DUTY_CYCLE = "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle"


@dataclass(frozen=True)
class DeployOutcome:
    """The deployed model on the endpoint and how it got there."""

    deployed_model: aiplatform_v1.DeployedModel
    operation: str
    how: str  # "deployed", "found" (already deployed) or "resumed" (an operation under way)

    @property
    def deployed_model_id(self) -> str:
        return str(self.deployed_model.id)


def build_deployed_model(
    version: ModelVersion, cfg: DeploymentConfig, *, display_name: str = ""
) -> aiplatform_v1.DeployedModel:
    """The ``DeployedModel`` of the deploy request: dedicated machines, autoscaling targets, spot.

    Scale-to-zero (``min_replicas=0``) is not expressible in v1; :func:`deploy_model_version` sends
    it through the v1beta1 API with a ``scale_to_zero_spec``.
    """
    machine = aiplatform_v1.MachineSpec(machine_type=cfg.machine_type)
    metrics = [
        aiplatform_v1.AutoscalingMetricSpec(metric_name=CPU_UTILIZATION, target=cfg.cpu_utilization_target)
    ]
    if cfg.accelerator_type and cfg.accelerator_count > 0:
        machine.accelerator_type = getattr(aiplatform_v1.AcceleratorType, cfg.accelerator_type)
        machine.accelerator_count = cfg.accelerator_count
        metrics.append(
            aiplatform_v1.AutoscalingMetricSpec(metric_name=GPU_DUTY_CYCLE, target=cfg.gpu_duty_cycle_target)
        )
    resources = aiplatform_v1.DedicatedResources(
        machine_spec=machine,
        min_replica_count=cfg.min_replicas,
        max_replica_count=cfg.max_replicas,
        autoscaling_metric_specs=metrics,
        spot=cfg.spot,
    )
    deployed = aiplatform_v1.DeployedModel(
        model=version.versioned_name,
        display_name=display_name or f"{version.display_name or 'model'}-v{version.version_id}",
        dedicated_resources=resources,
    )
    if cfg.service_account:
        deployed.service_account = cfg.service_account
    return deployed


def deploy_request_beta(
    deployed: aiplatform_v1.DeployedModel, endpoint_name: str, cfg: DeploymentConfig
) -> Any:
    """The v1beta1 ``DeployModelRequest`` for scale-to-zero (a Vertex AI Preview feature)."""
    from google.cloud import aiplatform_v1beta1 as beta

    beta_model = beta.DeployedModel.from_json(aiplatform_v1.DeployedModel.to_json(deployed))
    beta_model.dedicated_resources.scale_to_zero_spec = beta.DedicatedResources.ScaleToZeroSpec(
        idle_scaledown_period=duration_pb2.Duration(seconds=cfg.scale_to_zero_idle_s)
    )
    return beta.DeployModelRequest(endpoint=endpoint_name, deployed_model=beta_model)


def find_deployment(
    endpoint: aiplatform_v1.Endpoint, version: ModelVersion
) -> aiplatform_v1.DeployedModel | None:
    """The deployed model of ``version`` on ``endpoint``, if there is one."""
    for dm in endpoint.deployed_models:
        model, _, ref = str(dm.model).partition("@")
        version_id = str(dm.model_version_id) or ref
        if same_resource(model, version.model) and version_id == version.version_id:
            return dm
    return None


def deploy_model_version(
    api: VertexApi,
    endpoint_name: str,
    version: ModelVersion,
    cfg: DeploymentConfig,
    *,
    pending_operation: str = "",
    gcp_resources_path: str | Path | None = None,
    on_started: Any = None,
) -> DeployOutcome:
    """Deploy ``version`` to the endpoint with 0% traffic, once.

    Args:
        api: Vertex AI clients.
        endpoint_name: The endpoint's resource name.
        version: The model version.
        cfg: Machine, accelerators, replicas, autoscaling targets, spot, scale-to-zero.
        pending_operation: A deploy operation an earlier try started (from the rollout lease).
        gcp_resources_path: The task's ``gcp_resources`` file (records the operation; earlier
            ones recorded there are resumed).
        on_started: Called with the operation name once Vertex AI accepted the deploy, before
            polling (the stage records it in the rollout lease).

    Raises:
        CloudOperationError: the deploy operation failed (its message named).
        OperationTimeoutError: it is still running after ``cfg.operation_timeout_s``.
    """
    endpoint = get_endpoint(api, endpoint_name)
    existing = find_deployment(endpoint, version)
    if existing is not None:
        return DeployOutcome(existing, "", "found")
    for op_name in _candidate_operations(endpoint_name, pending_operation, gcp_resources_path):
        resumed = _resume(api, endpoint_name, op_name, version, cfg)
        if resumed is not None:
            return resumed
    # Under the lease no other run deploys here: an unfinished deploy on the endpoint is an earlier
    # try's whose answer (or process) was lost. Finish it rather than deploying a second copy.
    for op_name in pending_operations(api, endpoint_name, aiplatform_v1.DeployModelOperationMetadata):
        resumed = _resume(api, endpoint_name, op_name, version, cfg)
        if resumed is not None:
            return resumed
    deployed = build_deployed_model(version, cfg)
    if cfg.min_replicas == 0:
        beta_request = deploy_request_beta(deployed, endpoint_name, cfg)

        def send() -> str | DeployOutcome:
            lro = api.endpoints_beta.deploy_model(request=beta_request, timeout=api.call_timeout_s)
            return str(lro.operation.name)

    else:
        request = aiplatform_v1.DeployModelRequest(endpoint=endpoint_name, deployed_model=deployed)

        def send() -> str | DeployOutcome:
            lro = api.endpoints.deploy_model(request=request, timeout=api.call_timeout_s)
            return str(lro.operation.name)

    def look_up() -> str | DeployOutcome | None:
        found = find_deployment(get_endpoint(api, endpoint_name), version)
        if found is not None:
            return DeployOutcome(found, "", "found")
        pending = pending_operations(api, endpoint_name, aiplatform_v1.DeployModelOperationMetadata)
        return pending[0] if pending else None

    sent = create_once(f"DeployModel of {version.versioned_name}", send, look_up, api=api)
    if isinstance(sent, DeployOutcome):
        return sent
    op_name = sent
    record_gcp_resource(gcp_resources_path, "DeployModel", api.resource_uri(op_name))
    if on_started is not None:
        on_started(op_name)
    return _finish(api, endpoint_name, op_name, version, cfg, "deployed")


def _candidate_operations(
    endpoint_name: str, pending_operation: str, gcp_resources_path: str | Path | None
) -> Iterator[str]:
    seen = set()
    names = [pending_operation] if pending_operation else []
    names += list(reversed(recorded_operations(gcp_resources_path, "DeployModel")))
    for name in names:
        if "/operations/" not in name:
            name = f"{endpoint_name}/operations/{name}"
        if name not in seen and same_resource(name.split("/operations/")[0], endpoint_name):
            seen.add(name)
            yield name


def _resume(
    api: VertexApi, endpoint_name: str, op_name: str, version: ModelVersion, cfg: DeploymentConfig
) -> DeployOutcome | None:
    try:
        op = get_operation(api, op_name)
    except gexc.NotFound:
        return None
    if op.done and op.HasField("error"):
        return None  # that try failed and changed nothing: deploy afresh
    if op.done:
        response = aiplatform_v1.DeployModelResponse.deserialize(op.response.value)
        if not same_resource(str(response.deployed_model.model), version.model) or (
            str(response.deployed_model.model_version_id) not in ("", version.version_id)
        ):
            return None  # an operation of another model version
        found = find_deployment(get_endpoint(api, endpoint_name), version)
        return DeployOutcome(found, op_name, "resumed") if found is not None else None
    return _finish(api, endpoint_name, op_name, version, cfg, "resumed")


def _finish(
    api: VertexApi, endpoint_name: str, op_name: str, version: ModelVersion, cfg: DeploymentConfig, how: str
) -> DeployOutcome:
    done = wait_for_operation(
        api, op_name, timeout_s=cfg.operation_timeout_s, what=f"DeployModel of {version.versioned_name}"
    )
    response = aiplatform_v1.DeployModelResponse.deserialize(done.response.value)
    found = find_deployment(get_endpoint(api, endpoint_name), version)
    return DeployOutcome(found if found is not None else response.deployed_model, op_name, how)


def serving_tensorrt_version(container: ServingContainer, cfg: DeploymentConfig) -> str:
    """The serving image's TensorRT version: recorded by packaging, configured, or the project image's."""
    from vxdeploy.components.common import images

    if container.tensorrt_version:
        return container.tensorrt_version
    if cfg.serving_tensorrt_version:
        return cfg.serving_tensorrt_version
    if container.image_uri.split(":")[0] == images.SERVING_IMAGE.split(":")[0]:
        return images.TENSORRT_VERSION
    return ""


def tensorrt_engines(metadata: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(model name, engine metadata) of every TensorRT model the repository artifact records.

    Reads the contract's ``kinds`` ({model: kind}) and ``engines`` ({model: engine metadata})
    (:class:`vxdeploy.components.common.artifacts.TritonRepository`).
    """
    kinds = dict(metadata.get("kinds") or {})
    engines = dict(metadata.get("engines") or {})
    out = []
    for name, kind in kinds.items():
        if str(kind).startswith("tensorrt"):
            meta = engines.get(name)
            if not isinstance(meta, Mapping):
                raise UserError(
                    f"triton_repository: model {name!r} is a TensorRT engine ({kind}) but the artifact "
                    "records no "
                    "engine metadata (GPU, TensorRT version), so its fit to the serving machine cannot be "
                    "checked; "
                    "re-run the compile and package steps"
                )
            out.append((str(name), meta))
    return out


def check_serving_compatibility(
    metadata: Mapping[str, Any], container: ServingContainer, cfg: DeploymentConfig
) -> list[dict[str, str]]:
    """Refuse to deploy TensorRT engines onto a GPU type or TensorRT version they were not built for.

    Returns:
        One record per engine checked (empty when the repository holds no engine).

    Raises:
        UserError: no serving GPU, an unknown serving TensorRT version, or a mismatch
            (``EngineCompatibilityError`` from the compile stage's check).
    """
    engines = tensorrt_engines(metadata)
    if not engines:
        return []
    if not cfg.accelerator_type or cfg.accelerator_count < 1:
        raise UserError(
            f"deployment.accelerator_type={cfg.accelerator_type!r}: the selected candidate is a TensorRT "
            "engine, "
            "which needs a GPU; set the serving GPU it was built on, or select a CPU candidate"
        )
    trt = serving_tensorrt_version(container, cfg)
    if not trt:
        raise UserError(
            f"deployment.serving_tensorrt_version='': the TensorRT version of the serving image "
            f"{container.image_uri!r} is not known, so a TensorRT engine cannot be checked against it; set "
            "it "
            "(e.g. 10.13.3) or serve with the project's serving image"
        )
    from vxdeploy.components.compile.tensorrt import check_engine_compatibility

    checked = []
    for name, meta in engines:
        check_engine_compatibility(meta, cfg.accelerator_type, trt)
        checked.append(
            {
                "model": name,
                "engine_gpu": str(meta.get("gpu_name", "")),
                "engine_tensorrt": str(meta.get("tensorrt_version", "")),
                "serving_gpu": cfg.accelerator_type,
                "serving_tensorrt": trt,
            }
        )
    return checked
