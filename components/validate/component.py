"""KFP component: validate the whole run first, so a bad input fails in seconds, before any GPU work."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Output

from vxdeploy.components.common.images import RUNNER_IMAGE


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def validate_run_inputs(
    model_uri: str,
    model_name: str,
    calibration_data_uri: str,
    eval_data_uri: str,
    project: str,
    location: str,
    deploy: bool,
    endpoint: str,
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
    min_replicas: int,
    max_replicas: int,
    canary_steps: list,
    accuracy_budget: float,
    build_on_accelerator: bool,
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
) -> NamedTuple(  # type: ignore[valid-type]  # noqa: UP014
    # The component's source runs alone in its task: the outputs are spelt out here.
    "ValidatedRun",
    [
        ("model", dict),
        ("data", dict),
        ("export", dict),
        ("quantization", dict),
        ("compilation", dict),
        ("selection", dict),
        ("triton", dict),
        ("deployment", dict),
        ("canary", dict),
        ("monitoring", dict),
        ("service_levels", dict),
        ("build_accelerator_type", str),
        ("build_accelerator_count", int),
    ],
):
    """Merges the run's parameters into one config and checks it, the model, the data, the lease and images.

    Args:
        model_uri: The trained model (.pt2, TorchScript, .onnx, gs:// or a Model Registry version).
        model_name: Model name in Triton and in Vertex AI.
        calibration_data_uri: Calibration .npz (one array per model input).
        eval_data_uri: Held-out evaluation .npz (one array per input, optional labels).
        project: Google Cloud project to deploy in (the run's own when unresolved or empty).
        location: Vertex AI region to deploy in (the run's own when unresolved or empty).
        deploy: Whether the cloud stages (deploy, canary, monitoring) run.
        endpoint: Endpoint display name or id.
        machine_type: Serving machine type.
        accelerator_type: The one GPU type of build, serve check and serving ('' for CPU).
        accelerator_count: GPUs per replica, build and serve check.
        min_replicas: Fewest serving replicas.
        max_replicas: Most serving replicas.
        canary_steps: Traffic percentages of the canary.
        accuracy_budget: Largest accuracy drop vs FP32, in percentage points.
        build_on_accelerator: Build and measure on accelerator_type (False: on the task's CPU).
        model: Overrides of the model section.
        data: Overrides of the data section.
        export: Overrides of the export section.
        quantization: Overrides of the quantization section.
        compilation: Overrides of the compilation section.
        selection: Overrides of the selection section.
        triton: Overrides of the Triton section.
        deployment: Overrides of the deployment section.
        canary: Overrides of the canary section.
        monitoring: Overrides of the monitoring section.
        service_levels: Overrides of the service level section.
        run_id: This pipeline run's id; a rollout lease it already holds is no conflict.
        report: This stage's JSON report: every check, passed, failed or skipped.

    Returns:
        model: The merged model section, as every later task receives it; likewise data through
            service_levels.
        build_accelerator_type: The GPU the build, measurement and serve-check tasks check they run on.
        build_accelerator_count: Their GPU count.
    """
    parameters = {name: value for name, value in locals().items() if name not in ("run_id", "report")}
    from vxdeploy.components.validate import stage

    return stage.run(parameters, run_id, report)  # type: ignore[return-value]
