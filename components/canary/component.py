"""KFP components: canary traffic split with analysis, and rollback on failure."""

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint, VertexModel
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from vxdeploy.components.common.images import RUNNER_IMAGE


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def run_canary(
    vertex_endpoint: Input[VertexEndpoint],
    vertex_model: Input[VertexModel],
    eval_data: Input[Dataset],
    deployed_model_id: str,
    deployment: dict,
    canary: dict,
    run_id: str,
    metrics: Output[Metrics],
    table: Output[Markdown],
    report: Output[Artifact],
) -> None:
    """Shifts traffic to the new version step by step, analysing Cloud Monitoring metrics at each step.

    A smoke test first sends sample requests to the new deployed model directly. At each step
    (default 10, 25, 50, 100 percent) error rate and p99 latency of canary and baseline are
    compared with absolute limits and with each other; no data is not a pass. Passing every
    step promotes the version (aliases 'production' and 'default'); more failed analyses than the
    failure limit roll traffic back to the serving model, undeploy the canary and fail the task
    (after the report, Metrics and step table are written).

    Args:
        vertex_endpoint: The endpoint.
        vertex_model: The new model version.
        eval_data: Samples for the smoke test.
        deployed_model_id: The new deployed model's id.
        deployment: The deployment section.
        canary: The canary section (steps, interval, thresholds, failure limit, grace period).
        run_id: This pipeline run's id (the rollout lease holder).
        metrics: Each step's figures and the decision.
        table: The step table.
        report: This stage's JSON report.
    """
    from vxdeploy.components.canary import stage

    stage.run(
        vertex_endpoint,
        vertex_model,
        eval_data,
        deployed_model_id,
        deployment,
        canary,
        run_id,
        metrics,
        table,
        report,
    )


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def rollback_on_failure(
    status: dsl.PipelineTaskFinalStatus,
    project: str,
    location: str,
    deploy: bool,
    endpoint: str,
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
    min_replicas: int,
    max_replicas: int,
    deployment: dict,
    run_id: str,
    report: Output[Artifact],
) -> None:
    """Exit handler: recovers a rollout the failed run still holds, from the phase recorded on the endpoint.

    Before the commit point (new version at 100% with its aliases) traffic returns to the model
    that served, the aliases go back and the canary is undeployed; after it the cleanup is
    finished and the new version keeps serving. It retries until its deadline; when it cannot
    recover, it fails naming the endpoint's state and the `vxdeploy rollback` command that repairs it.

    Args:
        status: The pipeline's final status.
        project: The pipeline's `project` parameter.
        location: The pipeline's `location` parameter.
        deploy: The pipeline's `deploy` parameter: nothing to roll back when false.
        endpoint: The pipeline's `endpoint` parameter.
        machine_type: The pipeline's `machine_type` parameter.
        accelerator_type: The pipeline's `accelerator_type` parameter.
        accelerator_count: The pipeline's `accelerator_count` parameter.
        min_replicas: The pipeline's `min_replicas` parameter.
        max_replicas: The pipeline's `max_replicas` parameter.
        deployment: The pipeline's deployment section overrides.
        run_id: This pipeline run's id; only a rollout this run holds is rolled back.
        report: What was done.
    """
    # An exit handler takes only the pipeline's own parameters: it merges the deployment section
    # the way the validate task does.
    parameters = {
        name: value for name, value in locals().items() if name not in ("status", "run_id", "report")
    }
    from vxdeploy.components.canary import stage
    from vxdeploy.components.common.run_parameters import section_data

    stage.run_rollback(status, section_data("deployment", parameters), run_id, report)
