"""The deploy step end to end: stage the repository, upload a model version, deploy it at 0% traffic.

:func:`deploy_to_endpoint` is what the KFP component and the CLI call. It takes the endpoint's
rollout lease first, so a second run cannot interleave, and every part is idempotent per run id.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vxdeploy.components.cloud.endpoints import EndpointRef, get_endpoint, get_or_create_endpoint
from vxdeploy.components.cloud.labels import label_value
from vxdeploy.components.cloud.lease import (
    LeaseAcquisition,
    acquire_lease,
    read_lease,
    release_lease_if_untouched,
    update_lease,
)
from vxdeploy.components.cloud.recovery import RollbackResult, recover_rollout, roll_back_rollout
from vxdeploy.components.cloud.vertex import OperationTimeoutError, VertexApi, connect
from vxdeploy.components.common.config import CanaryConfig, DeploymentConfig, ModelConfig
from vxdeploy.components.common.errors import CloudOperationError, UserError
from vxdeploy.components.deploy.deploy import DeployOutcome, check_serving_compatibility, deploy_model_version
from vxdeploy.components.deploy.model_upload import (
    ModelVersion,
    ServingContainer,
    repository_checksum,
    upload_model_version,
)
from vxdeploy.components.generation.rollout import generate_stream_route, require_invoke_route

MODEL_REPOSITORY_DIR = "model_repository"
MANIFEST_FILE = "manifest.json"


@dataclass
class DeploymentResult:
    """Everything the deploy step did, for the stage report and the canary step."""

    endpoint: EndpointRef
    version: ModelVersion
    outcome: DeployOutcome
    lease: LeaseAcquisition
    container: ServingContainer
    artifact_uri: str
    checksum: str
    invoke_route: bool
    engine_checks: list[dict[str, str]] = field(default_factory=list)
    recovered: RollbackResult | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    upload: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] | None = None
    scalar_inputs: list[str] = field(default_factory=list)
    """Inputs requests carry as [batch, 1] (one scalar per sample; the repository's ``scalar_inputs``)."""

    @property
    def deployed_model_id(self) -> str:
        return self.outcome.deployed_model_id


def _repository_dirs(repo_dir: Path) -> tuple[Path, Path]:
    """(packaged root holding the manifest, Triton model repository inside it)."""
    inner = repo_dir / MODEL_REPOSITORY_DIR
    return (repo_dir, inner) if inner.is_dir() else (repo_dir, repo_dir)


def repository_fingerprint(repo_dir: Path) -> str:
    """The repository's sha256: its manifest's digest (verified first) when it has one, else its files'."""
    root, inner = _repository_dirs(repo_dir)
    if (root / MANIFEST_FILE).is_file():
        from vxdeploy.components.package.manifest import manifest_digest, verify_manifest

        verify_manifest(root)
        return manifest_digest(root)
    return repository_checksum(inner)


def storage_client(project: str) -> Any:
    """A Cloud Storage client; anonymous against ``STORAGE_EMULATOR_HOST`` when that is set."""
    from google.cloud import storage  # type: ignore[attr-defined]

    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project or "vxdeploy",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": host},
        )
    return storage.Client(project=project or None)


def stage_repository(
    repo_dir: Path,
    artifact_uri: str,
    cfg: DeploymentConfig,
    model_name: str,
    *,
    client: Any = None,
) -> tuple[str, dict[str, Any]]:
    """The ``gs://`` URI of the Triton model repository, uploading it when ``staging_bucket`` is set.

    Without a staging bucket the artifact's own ``gs://`` URI is used (Vertex AI Pipelines keeps
    artifacts in Cloud Storage).

    Raises:
        UserError: no staging bucket and an artifact that is not in Cloud Storage (a local run).
    """
    root, inner = _repository_dirs(repo_dir)
    if cfg.staging_bucket:
        from vxdeploy.components.package.gcs import upload_repository

        prefix = f"{cfg.staging_bucket.rstrip('/')}/{label_value(model_name)}"
        result = upload_repository(
            root, prefix, client=client if client is not None else storage_client(cfg.project)
        )
        return result.model_repository_uri, result.to_dict()
    if artifact_uri.startswith("gs://"):
        suffix = f"/{MODEL_REPOSITORY_DIR}" if inner != root else ""
        return f"{artifact_uri.rstrip('/')}{suffix}", {"uri": artifact_uri, "uploaded": []}
    raise UserError(
        f"deployment.staging_bucket='': the Triton repository is at {artifact_uri!r}, not in Cloud Storage, "
        "and Vertex AI can only load models from gs://; set deployment.staging_bucket (e.g. "
        "gs://my-bucket/vxdeploy)"
    )


def _give_back(api: VertexApi, endpoint_name: str, run_id: str, cfg: DeploymentConfig) -> None:
    """After a failed deploy: undo what it left (a deploy under way, a stray copy) and free the lease.

    Best effort: when this fails too, the exit handler recovers from what the lease records.
    """
    try:
        if release_lease_if_untouched(api, endpoint_name, run_id):
            return
        lease = read_lease(get_endpoint(api, endpoint_name))
        if lease is not None and lease.held_by(run_id) and not lease.committed:
            roll_back_rollout(api, endpoint_name, lease, run_id=run_id, timeout_s=cfg.operation_timeout_s)
    except Exception:  # noqa: BLE001 - best effort: the caller re-raises the failure that brought us here
        pass


def deploy_to_endpoint(
    repo_dir: str | Path,
    artifact_uri: str,
    metadata: Mapping[str, Any],
    model_cfg: ModelConfig,
    cfg: DeploymentConfig,
    canary_cfg: CanaryConfig,
    run_id: str,
    *,
    api: VertexApi | None = None,
    storage: Any = None,
    gcp_resources_path: str | Path | None = None,
    source_labels: Mapping[str, str] | None = None,
) -> DeploymentResult:
    """Upload the Triton repository as a new model version and deploy it beside the serving one at 0%.

    Args:
        repo_dir: The packaged repository (``manifest.json`` and ``model_repository/``).
        artifact_uri: The repository artifact's URI (used when it is already in Cloud Storage).
        metadata: The repository artifact's metadata (``serving_container``, candidate kinds, engines).
        model_cfg: The model section (display name).
        cfg: The deployment section.
        canary_cfg: The canary section (lease time-to-live).
        run_id: The pipeline run; labels and the rollout lease carry it, making every step idempotent.
        api: Vertex AI clients; default: :func:`connect` for ``cfg``.
        storage: A Cloud Storage client for the upload; default: one for the environment.
        gcp_resources_path: Where long-running operations are recorded (and resumed from).
        source_labels: Labels naming the Model Registry version the repository was optimized from.

    Raises:
        UserError: bad settings or an engine that does not fit the serving GPU/TensorRT.
        RolloutConflictError: another run holds the endpoint's rollout lease.
        CloudOperationError: an operation failed; OperationTimeoutError: one is still running.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    repo_dir = Path(repo_dir)
    serving_name = str(metadata.get("model_name") or model_cfg.name)
    container = ServingContainer.from_metadata(metadata.get("serving_container"), serving_name)
    generation = _generation_of(metadata)
    if generation is not None:
        # The decoupled generator streams through Triton's generate_stream (see generation.rollout):
        # the route the smoke test, the canary and clients use.
        container = dataclasses.replace(container, predict_route=generate_stream_route(serving_name))
    engine_checks = check_serving_compatibility(metadata, container, cfg)
    checksum = repository_fingerprint(repo_dir)
    route = cfg.resolved_smoke_test_route
    api = api or connect(cfg)

    t = time.perf_counter()
    gcs_uri, upload_info = stage_repository(repo_dir, artifact_uri, cfg, model_cfg.name, client=storage)
    timings["stage_repository"] = time.perf_counter() - t

    t = time.perf_counter()
    endpoint = get_or_create_endpoint(api, cfg, gcp_resources_path=gcp_resources_path)
    invoke_route = route == "invoke"
    if generation is not None:
        require_invoke_route(cfg, bool(endpoint.endpoint.dedicated_endpoint_enabled), endpoint.name)
        invoke_route = True  # served only there, with or without a smoke test
    if invoke_route and not endpoint.endpoint.dedicated_endpoint_enabled:
        raise UserError(
            f"deployment.smoke_test_route={cfg.smoke_test_route!r}: endpoint {endpoint.name} is not a "
            "dedicated "
            "endpoint, and only dedicated endpoints serve the per-model invoke route the smoke test needs; "
            "use a "
            "dedicated endpoint, or set deployment.smoke_test_route='none' to deploy without a smoke test"
        )

    def take_lease() -> LeaseAcquisition:
        return acquire_lease(
            api,
            endpoint.name,
            run_id,
            canary_cfg.lease_ttl_s,
            keep_previous=canary_cfg.keep_previous,
            grace_s=canary_cfg.undeploy_grace_s,
        )

    lease = take_lease()
    recovered = None
    if lease.taken_over is not None:
        # A dead run's rollout: restore it (before its commit point) or finish it (after), then start
        # this one from the split that serves once that is done.
        recovered = recover_rollout(
            api,
            endpoint.name,
            lease.taken_over,
            run_id=run_id,
            timeout_s=cfg.operation_timeout_s,
            made_by=lease.taken_over.holder,
        )
        lease = take_lease()
    timings["endpoint_and_lease"] = time.perf_counter() - t

    try:
        t = time.perf_counter()
        version = upload_model_version(
            api,
            display_name=model_cfg.name,
            artifact_uri=gcs_uri,
            container=container.to_spec(invoke_route=invoke_route),
            run_id=run_id,
            checksum=checksum,
            parent_model=cfg.parent_model,
            timeout_s=cfg.operation_timeout_s,
            gcp_resources_path=gcp_resources_path,
            source_labels=source_labels,
        )
        timings["upload_model"] = time.perf_counter() - t

        t = time.perf_counter()

        def record_operation(op_name: str) -> None:
            update_lease(
                api, endpoint.name, run_id, canary_cfg.lease_ttl_s, operation_id=op_name.rsplit("/", 1)[-1]
            )

        outcome = deploy_model_version(
            api,
            endpoint.name,
            version,
            cfg,
            pending_operation=lease.lease.operation_id,
            gcp_resources_path=gcp_resources_path,
            on_started=record_operation,
        )
        update_lease(
            api,
            endpoint.name,
            run_id,
            canary_cfg.lease_ttl_s,
            canary_id=outcome.deployed_model_id,
            operation_id="",
        )
        timings["deploy_model"] = time.perf_counter() - t
    except OperationTimeoutError:
        raise  # the operation goes on: keep the lease so a retry resumes it (or the exit handler cancels it)
    except (CloudOperationError, UserError):
        # Nothing took traffic: give the endpoint back so the next run is not blocked by this one.
        _give_back(api, endpoint.name, run_id, cfg)
        raise
    timings["total"] = time.perf_counter() - t0
    return DeploymentResult(
        endpoint=endpoint,
        version=version,
        outcome=outcome,
        lease=lease,
        container=container,
        artifact_uri=gcs_uri,
        checksum=checksum,
        invoke_route=invoke_route,
        engine_checks=engine_checks,
        recovered=recovered,
        timings_s=timings,
        upload=upload_info,
        generation=generation,
        scalar_inputs=[str(n) for n in metadata.get("scalar_inputs") or []],
    )


def _generation_of(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The GenerationSpec a generation model's repository carries (its ``generation`` metadata)."""
    from vxdeploy.components.generation.spec import GenerationSpec, is_generation

    if not is_generation(dict(metadata)):
        return None
    return GenerationSpec.from_metadata(dict(metadata)).to_dict()
