"""KFP component: Cloud Monitoring alert policies, notification channel and dashboard."""

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint
from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.common.images import RUNNER_IMAGE


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def setup_monitoring(
    vertex_endpoint: Input[VertexEndpoint],
    deployment: dict,
    monitoring: dict,
    report: Output[Artifact],
) -> None:
    """Creates or updates the endpoint's alert policies, notification channel and dashboard.

    Matched by display name and a vxdeploy label, so a re-run updates in place and never duplicates.

    Args:
        vertex_endpoint: The endpoint to watch.
        deployment: The deployment section (project).
        monitoring: The monitoring section (thresholds, channels, e-mails, dashboard).
        report: What was created or updated.
    """
    from components.monitoring import stage

    stage.run(vertex_endpoint, deployment, monitoring, report)
