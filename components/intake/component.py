"""KFP component: model and data intake."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Model, Output

from vxdeploy.components.common.images import OPTIMIZER_IMAGE


@dsl.component(base_image=OPTIMIZER_IMAGE, install_kfp_package=False)
def intake_model(
    model: dict,
    data: dict,
    deployment: dict,
    source_model: Output[Model],
    calibration_data: Output[Dataset],
    eval_data: Output[Dataset],
    report: Output[Artifact],
) -> NamedTuple("Outputs", [("proceed", bool), ("deploy", bool)]):  # type: ignore[valid-type]  # noqa: UP014
    """Resolves the model and data, reads the model's signature and checks the data against it.

    Args:
        model: The model section of the run config (uri, format, name, inputs, parts).
        data: The data section (calibration_uri, eval_uri: .npz with one array per input).
        deployment: The deployment section; decides whether the cloud stages run.
        source_model: The model file, with its format, signature and sha256 as metadata.
        calibration_data: Checked calibration samples (.npz).
        eval_data: Checked held-out evaluation samples and labels (.npz).
        report: This stage's JSON report.

    Returns:
        proceed: False when the run has nothing to do (its Model Registry version already serves).
        deploy: True when the cloud stages (deploy, canary, monitoring) should run.
    """
    from vxdeploy.components.intake import stage

    return stage.run(model, data, deployment, source_model, calibration_data, eval_data, report)
