"""KFP component: Cloud Monitoring alert policies, notification channel and dashboard."""

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint
from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from vxdeploy.components.common.images import RUNNER_IMAGE


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def setup_monitoring(
    vertex_endpoint: Input[VertexEndpoint],
    deployment: dict,
    monitoring: dict,
    report: Output[Artifact],
) -> None:
    """Creates or updates the endpoint's alert policies, notification channels and dashboard.

    Alerts on p99 latency, error rate and saturation (GPU duty cycle or CPU, replicas at the
    maximum), per deployed model. Resources carry vxdeploy labels and are matched by them, so a
    re-run updates in place and never duplicates.

    Args:
        vertex_endpoint: The endpoint to watch (metadata resourceName: projects/P/locations/L/endpoints/ID).
        deployment: The deployment section (project, accelerator, max replicas).
        monitoring: The monitoring section (thresholds, channels, e-mails, dashboard, endpoints).
        report: What was created, updated, found or deleted.
    """
    from vxdeploy.components.monitoring import stage

    stage.run(vertex_endpoint, deployment, monitoring, report)
