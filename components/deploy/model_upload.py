"""Upload a Triton model repository to Vertex AI Model Registry as a new model version.

Idempotent: the version carries the run id as a label, and a retry with the same run id finds
it instead of uploading another; an upload operation already under way is resumed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1

from vxdeploy.components.cloud.aliases import merge_aliases
from vxdeploy.components.cloud.labels import (
    CHECKSUM_KEY,
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    RUN_ID_KEY,
    label_value,
)
from vxdeploy.components.cloud.vertex import (
    VertexApi,
    call,
    create_once,
    get_operation,
    pending_operations,
    record_gcp_resource,
    recorded_operations,
    wait_for_operation,
)
from vxdeploy.components.common.artifacts import ServingContainer as ServingContainerMetadata
from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.errors import UserError

TRITON_HTTP_PORT = 8000


@dataclass(frozen=True)
class ServingContainer:
    """The Triton serving container of a model version (Vertex AI ``ModelContainerSpec``)."""

    image_uri: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=lambda: [TRITON_HTTP_PORT])
    predict_route: str = ""
    health_route: str = "/v2/health/ready"
    shared_memory_mb: int = 0
    tensorrt_version: str = ""

    @classmethod
    def for_triton(cls, model_name: str, triton: TritonConfig | None = None) -> ServingContainer:
        """The spec vxdeploy uses when the packaging stage records none: Triton over HTTP on port 8000.

        Vertex AI copies ``artifactUri`` into the container and names the copy in ``AIP_STORAGE_URI``.
        """
        from vxdeploy.components.package.vertex import default_serving_image

        triton = triton or TritonConfig()
        return cls(
            image_uri=default_serving_image(triton),
            command=["tritonserver"],
            args=["--model-repository=$(AIP_STORAGE_URI)"],
            ports=[TRITON_HTTP_PORT],
            predict_route=f"/v2/models/{model_name}/infer",
            health_route="/v2/health/ready",
            shared_memory_mb=triton.shared_memory_mb,
        )

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None, model_name: str) -> ServingContainer:
        """Read the packaging stage's ``serving_container`` metadata (its contract), or Triton's defaults."""
        if not meta:
            return cls.for_triton(model_name)
        spec = ServingContainerMetadata.from_metadata(meta)
        return cls(
            image_uri=spec.image_uri,
            command=list(spec.command),
            args=list(spec.args),
            env={e.name: e.value for e in spec.env},
            ports=[p.container_port for p in spec.ports],
            predict_route=spec.predict_route,
            health_route=spec.health_route,
            shared_memory_mb=spec.shared_memory_size_mb,
            tensorrt_version=spec.tensorrt_version,
        )

    def to_spec(self, *, invoke_route: bool) -> aiplatform_v1.ModelContainerSpec:
        """The Vertex AI container spec.

        Args:
            invoke_route: Serve every path through ``invoke_route_prefix='/*'`` instead of
                ``predict_route``: this is what makes one deployed model reachable by id
                (``.../deployedModels/ID/invoke/...``), and it needs a dedicated endpoint.
        """
        args = list(self.args)
        if invoke_route:
            # Under Vertex AI (AIP_MODE=PREDICTION) Triton serves only AIP_PREDICT_ROUTE; the invoke
            # route forwards the KServe paths themselves, which Triton's own HTTP service answers.
            port = self.ports[0] if self.ports else TRITON_HTTP_PORT
            for flag in ("--allow-vertex-ai=false", "--allow-http=true", f"--http-port={port}"):
                if not any(a.split("=")[0] == flag.split("=")[0] for a in args):
                    args.append(flag)
        spec = aiplatform_v1.ModelContainerSpec(
            image_uri=self.image_uri,
            command=self.command,
            args=args,
            env=[aiplatform_v1.EnvVar(name=k, value=v) for k, v in sorted(self.env.items())],
            ports=[aiplatform_v1.Port(container_port=p) for p in self.ports],
            health_route=self.health_route,
        )
        if invoke_route:
            spec.invoke_route_prefix = "/*"
        else:
            spec.predict_route = self.predict_route
        if self.shared_memory_mb:
            spec.shared_memory_size_mb = self.shared_memory_mb
        return spec


@dataclass(frozen=True)
class ModelVersion:
    """One version of a Vertex AI model."""

    model: str
    version_id: str
    display_name: str = ""
    reused: bool = False
    operation: str = ""

    @property
    def versioned_name(self) -> str:
        """``projects/P/locations/L/models/M@V``, what ``DeployedModel.model`` takes."""
        return f"{self.model}@{self.version_id}"


def repository_checksum(repo_dir: Path) -> str:
    """sha256 over the repository's files (relative paths and contents), stable across machines."""
    digest = hashlib.sha256()
    for path in sorted(p for p in repo_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(repo_dir).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def model_id_for(display_name: str) -> str:
    """A deterministic model id, so the first upload of a model cannot happen twice."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", display_name.lower()).strip("-_")
    return f"vxdeploy-{slug}"[:63].rstrip("-_")


def resolve_parent_model(api: VertexApi, parent_model: str, display_name: str) -> str | None:
    """The model to add a version to: ``parent_model`` if given, else vxdeploy's model of that name.

    Raises:
        UserError: ``parent_model`` names a model that does not exist.
    """
    if parent_model:
        name = parent_model if parent_model.startswith("projects/") else f"{api.parent}/models/{parent_model}"
        try:
            found = call(
                api.models.get_model, aiplatform_v1.GetModelRequest(name=name.split("@")[0]), api=api
            )
        except gexc.NotFound:
            raise UserError(
                f"deployment.parent_model={parent_model!r}: no such model in {api.parent}; give an existing "
                "model's resource name or id, or leave it empty to let vxdeploy create one"
            ) from None
        return str(found.name)
    name = f"{api.parent}/models/{model_id_for(display_name)}"
    try:
        return str(call(api.models.get_model, aiplatform_v1.GetModelRequest(name=name), api=api).name)
    except gexc.NotFound:
        return None


def find_version_of_run(api: VertexApi, parent: str, run_id: str) -> aiplatform_v1.Model | None:
    """The version of ``parent`` an earlier try of this run uploaded, if any."""
    request = aiplatform_v1.ListModelVersionsRequest(
        name=parent, filter=f'labels.{RUN_ID_KEY}="{label_value(run_id)}"'
    )
    versions = list(call(api.models.list_model_versions, request, api=api))
    return versions[0] if versions else None


def upload_model_version(
    api: VertexApi,
    *,
    display_name: str,
    artifact_uri: str,
    container: aiplatform_v1.ModelContainerSpec,
    run_id: str,
    checksum: str,
    parent_model: str = "",
    aliases: Sequence[str] = ("candidate",),
    timeout_s: float = 3600,
    gcp_resources_path: str | Path | None = None,
    source_labels: Mapping[str, str] | None = None,
) -> ModelVersion:
    """Upload ``artifact_uri`` as a new version of the model (created on first use), once per run.

    Args:
        api: Vertex AI clients.
        display_name: The model's display name.
        artifact_uri: ``gs://`` folder holding the Triton model repository.
        container: The serving container spec.
        run_id: This pipeline run; recorded as a label, it makes the upload idempotent.
        checksum: sha256 of the repository, recorded in labels and the version description.
        parent_model: An existing model to version; '' uses (or creates) vxdeploy's model of this name.
        aliases: Version aliases for the new version (moved from any version holding them).
        timeout_s: Longest wait for the upload operation.
        gcp_resources_path: The task's ``gcp_resources`` file: the operation is recorded there, and an
            unfinished one recorded by an earlier try is resumed.
        source_labels: Labels naming the Model Registry version this one was optimized from, so a
            scheduled run can tell that version already serves.
    """
    parent = resolve_parent_model(api, parent_model, display_name)
    # An earlier try of this run may have uploaded (or still be uploading) this version.
    earlier = _lost_upload(
        api, parent or f"{api.parent}/models/{model_id_for(display_name)}", run_id, display_name, timeout_s
    )
    if earlier is not None:
        return earlier
    for recorded in reversed(recorded_operations(gcp_resources_path, "UploadModel")):
        resumed = _resume_upload(api, recorded, timeout_s)
        if resumed is not None:
            return resumed
    labels = {
        **(source_labels or {}),
        MANAGED_BY_KEY: MANAGED_BY_VALUE,
        RUN_ID_KEY: label_value(run_id),
        CHECKSUM_KEY: checksum[:32],
    }
    model = aiplatform_v1.Model(
        display_name=display_name,
        description="Triton model repository packaged by vxdeploy.",
        version_description=f"vxdeploy run {run_id}; repository sha256 {checksum}",
        artifact_uri=artifact_uri,
        container_spec=container,
        labels=labels,
        version_aliases=list(aliases),
    )
    request = aiplatform_v1.UploadModelRequest(parent=api.parent, model=model)
    model_name = parent or f"{api.parent}/models/{model_id_for(display_name)}"
    if parent:
        request.parent_model = parent
    else:
        request.model_id = model_id_for(display_name)

    def send() -> str | ModelVersion:
        lro = api.models.upload_model(request=request, timeout=api.call_timeout_s)
        return str(lro.operation.name)

    def look_up() -> str | ModelVersion | None:
        # A lost upload left an operation under way or, once done, a version labelled with this run.
        return _lost_upload(api, model_name, run_id, display_name, timeout_s)

    try:
        sent = create_once(
            f"UploadModel {display_name!r}", send, look_up, api=api, passthrough=(gexc.Conflict,)
        )
    except gexc.Conflict:  # 409: over REST an ALREADY_EXISTS arrives as Conflict
        # An earlier try created the model after our look-up (its answer was lost): that upload may be
        # this run's version; otherwise add a version to the model it made.
        found_lost = _lost_upload(api, model_name, run_id, display_name, timeout_s)
        if isinstance(found_lost, ModelVersion):
            return found_lost
        request.model_id = ""
        request.parent_model = model_name
        sent = create_once(f"UploadModel {display_name!r}", send, look_up, api=api)
    if isinstance(sent, ModelVersion):
        return sent
    op_name = sent
    record_gcp_resource(gcp_resources_path, "UploadModel", api.resource_uri(op_name))
    done = wait_for_operation(api, op_name, timeout_s=timeout_s, what=f"UploadModel {display_name!r}")
    response = aiplatform_v1.UploadModelResponse.deserialize(done.response.value)
    return ModelVersion(str(response.model), str(response.model_version_id), display_name, operation=op_name)


def _lost_upload(
    api: VertexApi, model_name: str, run_id: str, display_name: str, timeout_s: float
) -> ModelVersion | None:
    """The version a lost upload of this run made: its operations under way are waited for first."""
    for op_name in pending_operations(api, model_name, aiplatform_v1.UploadModelOperationMetadata):
        try:
            wait_for_operation(api, op_name, timeout_s=timeout_s, what="UploadModel (lost answer)")
        except Exception:  # noqa: BLE001 - a failed or foreign upload: the label look-up below decides
            pass
    try:
        found = find_version_of_run(api, model_name, run_id)
    except gexc.NotFound:
        return None
    if found is None:
        return None
    return ModelVersion(str(found.name), str(found.version_id), display_name, reused=True)


def _resume_upload(api: VertexApi, op_name: str, timeout_s: float) -> ModelVersion | None:
    try:
        op = get_operation(api, op_name)
    except gexc.NotFound:
        return None
    if op.done and op.HasField("error"):
        return None  # that try failed; upload afresh
    done = (
        op if op.done else wait_for_operation(api, op_name, timeout_s=timeout_s, what="UploadModel (resumed)")
    )
    response = aiplatform_v1.UploadModelResponse.deserialize(done.response.value)
    return ModelVersion(str(response.model), str(response.model_version_id), reused=True, operation=op_name)


__all__ = [
    "ModelVersion",
    "ServingContainer",
    "find_version_of_run",
    "merge_aliases",
    "model_id_for",
    "repository_checksum",
    "resolve_parent_model",
    "upload_model_version",
]
