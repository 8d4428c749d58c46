"""KFP component: validate the whole run first, so a bad input fails in seconds, before any GPU work."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.common.images import RUNNER_IMAGE


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def validate_run_inputs(
    model: dict,
    data: dict,
    export: dict,
    quantization: dict,
    compilation: dict,
    selection: dict,
    triton: dict,
    deployment: dict,
    canary: dict,
    monitoring: dict,
    service_levels: dict,
    run_id: str,
    report: Output[Artifact],
) -> None:
    """Checks every config section, the model, the data, the rollout lease and the images up front.

    Args:
        model: The model section (uri, format, name, inputs, parts, task).
        data: The data section (calibration and evaluation .npz, labels).
        export: The export section.
        quantization: The quantization section.
        compilation: The compilation section (candidates, batch profile).
        selection: The selection section (policy, batch sizes).
        triton: The Triton section (max_batch_size, serving image).
        deployment: The deployment section (project, location, machine, accelerator, endpoint).
        canary: The canary section.
        monitoring: The monitoring section.
        service_levels: The service level section.
        run_id: This pipeline run's id; a rollout lease it already holds is no conflict.
        report: This stage's JSON report: every check, passed, failed or skipped.
    """
    from components.validate import stage

    sections = {
        "model": model,
        "data": data,
        "export": export,
        "quantization": quantization,
        "compilation": compilation,
        "selection": selection,
        "triton": triton,
        "deployment": deployment,
        "canary": canary,
        "monitoring": monitoring,
        "service_levels": service_levels,
    }
    stage.run(sections, run_id, report)
