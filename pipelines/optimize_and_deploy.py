"""The vxdeploy pipeline: one trained model to a monitored canary deployment on Vertex AI.

This module only wires components; each stage's logic lives in ``components/``.
"""

from kfp import dsl

from vxdeploy.components.calibrate.component import calibrate_int8
from vxdeploy.components.canary.component import rollback_on_failure, run_canary
from vxdeploy.components.common.run_parameters import root_parameter_defaults
from vxdeploy.components.compile.component import compile_candidates
from vxdeploy.components.deploy.component import deploy_to_endpoint
from vxdeploy.components.export.component import export_onnx
from vxdeploy.components.intake.component import intake_model
from vxdeploy.components.monitoring.component import setup_monitoring
from vxdeploy.components.package.component import package_triton_repository, serve_check
from vxdeploy.components.package.triton_install import SERVING_IMAGE_TRITON, TRITON_ROOT_ENV
from vxdeploy.components.report.component import write_run_report
from vxdeploy.components.select.component import select_candidate
from vxdeploy.components.validate.component import validate_run_inputs

PIPELINE_NAME = "vxdeploy-optimize-and-deploy"
_DEFAULTS = root_parameter_defaults()
_NONE: dict[str, object] = {}


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Export, quantize, compile, select, package for Triton, deploy with a canary, monitor.",
)
def optimize_and_deploy(
    model_uri: str = _DEFAULTS["model_uri"],
    model_name: str = _DEFAULTS["model_name"],
    calibration_data_uri: str = _DEFAULTS["calibration_data_uri"],
    eval_data_uri: str = _DEFAULTS["eval_data_uri"],
    project: str = _DEFAULTS["project"],
    location: str = _DEFAULTS["location"],
    deploy: bool = _DEFAULTS["deploy"],
    endpoint: str = _DEFAULTS["endpoint"],
    machine_type: str = _DEFAULTS["machine_type"],
    accelerator_type: str = _DEFAULTS["accelerator_type"],
    accelerator_count: int = _DEFAULTS["accelerator_count"],
    min_replicas: int = _DEFAULTS["min_replicas"],
    max_replicas: int = _DEFAULTS["max_replicas"],
    canary_steps: list = _DEFAULTS["canary_steps"],
    accuracy_budget: float = _DEFAULTS["accuracy_budget"],
    build_on_accelerator: bool = _DEFAULTS["build_on_accelerator"],
    model: dict = _NONE,
    data: dict = _NONE,
    export: dict = _NONE,
    quantization: dict = _NONE,
    compilation: dict = _NONE,
    selection: dict = _NONE,
    triton: dict = _NONE,
    deployment: dict = _NONE,
    canary: dict = _NONE,
    monitoring: dict = _NONE,
    service_levels: dict = _NONE,
) -> None:
    """Takes a trained PyTorch model to a fast, safe, monitored Triton deployment on Vertex AI.

    Args:
        model_uri: The trained model: a torch.export .pt2, TorchScript .pt or .onnx file (gs:// URI),
            a Model Registry version (projects/P/locations/L/models/M@alias), or builtin://digits-cnn.
        model_name: Name of the model in Triton and in Vertex AI (letters, digits, '_', '.', '-').
        calibration_data_uri: INT8 calibration data: an .npz (gs:// URI) with one array per model
            input (first axis = samples).
        eval_data_uri: Held-out evaluation data: an .npz with one array per input and optional
            'labels'; accuracy and the serve check are measured on it.
        project: Google Cloud project to deploy in; by default the project the run runs in.
        location: Vertex AI region to deploy in; by default the region the run runs in.
        deploy: Deploy to a Vertex AI endpoint with a canary and monitoring; false stops after the
            optimized, serve-checked Triton repository.
        endpoint: Endpoint display name, numeric id or resource name; created when missing.
        machine_type: Serving machine type (e.g. g2-standard-8 for one L4, n1-standard-8 for a T4).
        accelerator_type: The one GPU type used to build, measure, serve-check and serve (a TensorRT
            engine only serves on the GPU type it was built on); empty for CPU only.
        accelerator_count: GPUs per serving replica, and for the build and serve-check tasks; 0
            without an accelerator.
        min_replicas: Fewest serving replicas (0: scale to zero when idle, Preview).
        max_replicas: Most serving replicas autoscaling may reach.
        canary_steps: Percentages of traffic the new version takes, step by step, ending at 100.
        accuracy_budget: Largest accuracy drop allowed vs the FP32 model, in percentage points.
        build_on_accelerator: Compile and measure on accelerator_type (true, the default); false
            builds on the CPU the task lands on (local runs).
        model: Overrides of the model section, merged over its defaults: a JSON object of fields
            from docs/configuration.md, e.g. {"format": "torchscript", "inputs": [...]}.
        data: Overrides of the data section (labels_key, calibration sample limits).
        export: Overrides of the export section (opset, parity tolerances).
        quantization: Overrides of the quantization section (backend, method, per_channel, ...).
        compilation: Overrides of the compilation section (candidates, batch profile, timing cache).
        selection: Overrides of the selection section (policy, latency budget, batch sizes).
        triton: Overrides of the triton section (max_batch_size, dynamic batching, serving image).
        deployment: Overrides of the deployment section (autoscaling, spot, network, service account).
        canary: Overrides of the canary section (interval, error and latency limits).
        monitoring: Overrides of the monitoring section (alert thresholds, channels, dashboard).
        service_levels: Overrides of the service_levels section (latency targets, cost ceiling).
    """
    run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    exit_task = rollback_on_failure(
        project=project,
        location=location,
        deploy=deploy,
        endpoint=endpoint,
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        deployment=deployment,
        run_id=run_id,
    )
    exit_task.set_display_name("Roll back on failure").set_caching_options(False)

    with dsl.ExitHandler(exit_task, name="rollout"):
        # First, and on a small CPU machine: the parameters are merged into one config, and every
        # section, the model, the data, the lease and the images are checked before any heavy task
        # (or GPU) starts. Later tasks receive the merged sections.
        validated = validate_run_inputs(
            model_uri=model_uri,
            model_name=model_name,
            calibration_data_uri=calibration_data_uri,
            eval_data_uri=eval_data_uri,
            project=project,
            location=location,
            deploy=deploy,
            endpoint=endpoint,
            machine_type=machine_type,
            accelerator_type=accelerator_type,
            accelerator_count=accelerator_count,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            canary_steps=canary_steps,
            accuracy_budget=accuracy_budget,
            build_on_accelerator=build_on_accelerator,
            model=model,
            data=data,
            export=export,
            quantization=quantization,
            compilation=compilation,
            selection=selection,
            triton=triton,
            deployment=deployment,
            canary=canary,
            monitoring=monitoring,
            service_levels=service_levels,
            run_id=run_id,
        )
        # The GPU tasks are scheduled on the one accelerator parameter (a pipeline parameter Vertex AI
        # resolves before it places the task); what they check they run on comes from the validate task
        # ('' when build_on_accelerator is false).
        cfg = validated.outputs
        build_gpu = cfg["build_accelerator_type"]
        build_gpus = cfg["build_accelerator_count"]
        validated.set_display_name("Validate run inputs").set_caching_options(False)

        intake = intake_model(model=cfg["model"], data=cfg["data"], deployment=cfg["deployment"])
        intake.set_display_name("Model and data intake").set_caching_options(False)
        intake.after(validated)

        with dsl.If(intake.outputs["proceed"] == True, name="model-not-yet-deployed"):  # noqa: E712
            exported = export_onnx(
                source_model=intake.outputs["source_model"],
                eval_data=intake.outputs["eval_data"],
                model=cfg["model"],
                export=cfg["export"],
            ).set_display_name("Export to ONNX")

            calibrated = calibrate_int8(
                onnx_model=exported.outputs["onnx_model"],
                calibration_data=intake.outputs["calibration_data"],
                eval_data=intake.outputs["eval_data"],
                data=cfg["data"],
                quantization=cfg["quantization"],
                selection=cfg["selection"],
            ).set_display_name("INT8 calibration (Q/DQ)")

            compiled = compile_candidates(
                source_model=intake.outputs["source_model"],
                onnx_model=exported.outputs["onnx_model"],
                qdq_model=calibrated.outputs["qdq_model"],
                compilation=cfg["compilation"],
                build_accelerator_type=build_gpu,
                build_accelerator_count=build_gpus,
            ).set_display_name("Compile candidates")
            compiled.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)

            selected = select_candidate(
                candidates=compiled.outputs["candidates"],
                source_model=intake.outputs["source_model"],
                eval_data=intake.outputs["eval_data"],
                selection=cfg["selection"],
                service_levels=cfg["service_levels"],
                deployment=cfg["deployment"],
                build_accelerator_type=build_gpu,
                build_accelerator_count=build_gpus,
            ).set_display_name("Validate and select")
            selected.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)

            packaged = package_triton_repository(
                selected_model=selected.outputs["selected_model"],
                model=cfg["model"],
                triton=cfg["triton"],
                deployment=cfg["deployment"],
            ).set_display_name("Package Triton repository")

            # On the serving image and the deployment's GPU (the one accelerator parameter): the
            # check serves the repository with the production tritonserver before deployment.
            checked = serve_check(
                triton_repository=packaged.outputs["triton_repository"],
                source_model=intake.outputs["source_model"],
                eval_data=intake.outputs["eval_data"],
                triton=cfg["triton"],
                deployment=cfg["deployment"],
                service_levels=cfg["service_levels"],
            ).set_display_name("Serve check (Triton)")
            checked.set_accelerator_type(accelerator_type).set_accelerator_limit(
                accelerator_count
            ).set_env_variable(TRITON_ROOT_ENV, str(SERVING_IMAGE_TRITON))

            # The run's report (an HTML page for the console, Markdown, JSON) from the stage reports;
            # a deploying run writes it again after the rollout, with the cloud stages.
            stage_reports = {
                "validate_report": validated.outputs["report"],
                "intake_report": intake.outputs["report"],
                "export_report": exported.outputs["report"],
                "calibrate_report": calibrated.outputs["report"],
                "compile_report": compiled.outputs["report"],
                "select_report": selected.outputs["report"],
                "package_report": packaged.outputs["report"],
                "serve_check_report": checked.outputs["report"],
            }
            write_run_report(run_id=run_id, selection=cfg["selection"], **stage_reports).set_display_name(
                "Run report"
            ).set_caching_options(False)

            with dsl.If(intake.outputs["deploy"] == True, name="deploy-enabled"):  # noqa: E712
                deployed = (
                    deploy_to_endpoint(
                        triton_repository=packaged.outputs["triton_repository"],
                        source_model=intake.outputs["source_model"],
                        model=cfg["model"],
                        deployment=cfg["deployment"],
                        canary=cfg["canary"],
                        run_id=run_id,
                    )
                    .set_display_name("Deploy to endpoint")
                    .set_caching_options(False)
                )
                deployed.after(checked)

                canaried = (
                    run_canary(
                        vertex_endpoint=deployed.outputs["vertex_endpoint"],
                        vertex_model=deployed.outputs["vertex_model"],
                        eval_data=intake.outputs["eval_data"],
                        deployed_model_id=deployed.outputs["deployed_model_id"],
                        deployment=cfg["deployment"],
                        canary=cfg["canary"],
                        run_id=run_id,
                    )
                    .set_display_name("Canary rollout")
                    .set_caching_options(False)
                )

                monitored = (
                    setup_monitoring(
                        vertex_endpoint=deployed.outputs["vertex_endpoint"],
                        deployment=cfg["deployment"],
                        monitoring=cfg["monitoring"],
                    )
                    .set_display_name("Monitoring setup")
                    .set_caching_options(False)
                )

                write_run_report(
                    run_id=run_id,
                    selection=cfg["selection"],
                    **stage_reports,
                    deploy_report=deployed.outputs["report"],
                    canary_report=canaried.outputs["report"],
                    monitoring_report=monitored.outputs["report"],
                ).set_display_name("Run report with rollout").set_caching_options(False)
