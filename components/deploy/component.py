"""KFP component: Vertex AI model upload and endpoint deployment."""

from typing import NamedTuple

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint, VertexModel
from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output, OutputPath

from vxdeploy.components.common.images import RUNNER_IMAGE


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def deploy_to_endpoint(
    triton_repository: Input[Model],
    source_model: Input[Model],
    model: dict,
    deployment: dict,
    canary: dict,
    run_id: str,
    vertex_model: Output[VertexModel],
    vertex_endpoint: Output[VertexEndpoint],
    gcp_resources: OutputPath(str),  # type: ignore[valid-type]
    report: Output[Artifact],
) -> NamedTuple("Outputs", [("deployed_model_id", str)]):  # type: ignore[valid-type]  # noqa: UP014
    """Uploads the Triton repository as a new Vertex AI model version and deploys it beside the serving one.

    Idempotent: a retry with the same run id finds the model version, the endpoint and the
    deployment it already made. The new deployed model starts with no traffic; the canary
    stage shifts traffic to it.

    Args:
        triton_repository: The packaged repository and its serving container spec.
        source_model: The model from intake; a Model Registry source's labels go onto the new version.
        model: The model section (display name).
        deployment: The deployment section (project, location, endpoint, machine, GPUs, autoscaling).
        canary: The canary section (rollout lease time-to-live).
        run_id: This pipeline run's id, recorded in labels.
        vertex_model: The uploaded model version.
        vertex_endpoint: The endpoint.
        gcp_resources: Long-running operations, so Vertex AI can trace and cancel them.
        report: This stage's JSON report.

    Returns:
        deployed_model_id: The new deployed model's id on the endpoint.
    """
    from vxdeploy.components.deploy import stage

    return stage.run(
        triton_repository,
        source_model,
        model,
        deployment,
        canary,
        run_id,
        vertex_model,
        vertex_endpoint,
        gcp_resources,
        report,
    )
