"""The vxdeploy pipeline: one trained model to a monitored canary deployment on Vertex AI.

This module only wires components; each stage's logic lives in ``components/``.
"""

from kfp import dsl

from components.calibrate.component import calibrate_int8
from components.canary.component import rollback_on_failure, run_canary
from components.common.config import RunConfig
from components.compile.component import compile_candidates
from components.deploy.component import deploy_to_endpoint
from components.export.component import export_onnx
from components.intake.component import intake_model
from components.monitoring.component import setup_monitoring
from components.package.component import package_triton_repository, serve_check
from components.package.triton_install import SERVING_IMAGE_TRITON, TRITON_ROOT_ENV
from components.select.component import select_candidate
from components.validate.component import validate_run_inputs

PIPELINE_NAME = "vxdeploy-optimize-and-deploy"
_DEFAULTS = RunConfig().to_pipeline_parameters()


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Export, quantize, compile, select, package for Triton, deploy with a canary, monitor.",
)
def optimize_and_deploy(
    model: dict = _DEFAULTS["model"],
    data: dict = _DEFAULTS["data"],
    export: dict = _DEFAULTS["export"],
    quantization: dict = _DEFAULTS["quantization"],
    compilation: dict = _DEFAULTS["compilation"],
    selection: dict = _DEFAULTS["selection"],
    triton: dict = _DEFAULTS["triton"],
    deployment: dict = _DEFAULTS["deployment"],
    canary: dict = _DEFAULTS["canary"],
    monitoring: dict = _DEFAULTS["monitoring"],
    service_levels: dict = _DEFAULTS["service_levels"],
    build_accelerator_type: str = _DEFAULTS["build_accelerator_type"],
    build_accelerator_count: int = _DEFAULTS["build_accelerator_count"],
) -> None:
    """Takes a trained PyTorch model to a fast, safe, monitored Triton deployment on Vertex AI.

    Args:
        model: The trained model: uri (.pt2, TorchScript, .onnx, a Vertex Model Registry
            version, or builtin://digits-cnn), format, name, inputs, parts.
        data: Calibration and evaluation data (.npz, one array per model input, optional labels).
        export: ONNX export: opset (>= 19), parity tolerances.
        quantization: INT8 Q/DQ calibration: backend, method (entropy, max, percentile),
            per-channel, reduce_range.
        compilation: Candidates to build (onnxruntime_fp32/int8, tensorrt_fp32/fp16/int8, aoti),
            batch profile, timing cache.
        selection: Policy (max_throughput, min_latency, max_throughput_within_latency_budget),
            accuracy budget in points, batch sizes.
        triton: Triton repository: max_batch_size, dynamic batching, instances, warm-up,
            response cache, serving image.
        deployment: Vertex AI: enabled, project, location, endpoint, machine and accelerator,
            replicas, autoscaling, spot, network.
        canary: Traffic steps (default 10, 25, 50, 100), interval, error and latency limits,
            failure limit, grace period.
        monitoring: Alert thresholds, notification channels or e-mails, dashboard.
        service_levels: p50/p95 latency targets at a request rate, and a cost ceiling.
        build_accelerator_type: GPU that compiles and measures the candidates. Set it to the
            serving GPU (deployment.accelerator_type): a TensorRT engine only serves on the GPU
            type it was built on. Empty builds on CPU.
        build_accelerator_count: GPUs for the build, measurement and serve-check tasks: the
            deployment's accelerator_count with a build accelerator, else 0.
    """
    run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    exit_task = rollback_on_failure(deployment=deployment, run_id=run_id)
    exit_task.set_display_name("Roll back on failure").set_caching_options(False)

    with dsl.ExitHandler(exit_task, name="rollout"):
        # First, and on a small CPU machine: every config section, the model, the data, the lease
        # and the images are checked before any heavy task (or GPU) starts.
        validated = validate_run_inputs(
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
        validated.set_display_name("Validate run inputs").set_caching_options(False)

        intake = intake_model(model=model, data=data, deployment=deployment)
        intake.set_display_name("Model and data intake").set_caching_options(False)
        intake.after(validated)

        with dsl.If(intake.outputs["proceed"] == True, name="model-not-yet-deployed"):  # noqa: E712
            exported = export_onnx(
                source_model=intake.outputs["source_model"],
                eval_data=intake.outputs["eval_data"],
                model=model,
                export=export,
            ).set_display_name("Export to ONNX")

            calibrated = calibrate_int8(
                onnx_model=exported.outputs["onnx_model"],
                calibration_data=intake.outputs["calibration_data"],
                eval_data=intake.outputs["eval_data"],
                data=data,
                quantization=quantization,
                selection=selection,
            ).set_display_name("INT8 calibration (Q/DQ)")

            compiled = compile_candidates(
                source_model=intake.outputs["source_model"],
                onnx_model=exported.outputs["onnx_model"],
                qdq_model=calibrated.outputs["qdq_model"],
                compilation=compilation,
                build_accelerator_type=build_accelerator_type,
                build_accelerator_count=build_accelerator_count,
            ).set_display_name("Compile candidates")
            compiled.set_accelerator_type(build_accelerator_type).set_accelerator_limit(
                build_accelerator_count
            )

            selected = select_candidate(
                candidates=compiled.outputs["candidates"],
                source_model=intake.outputs["source_model"],
                eval_data=intake.outputs["eval_data"],
                selection=selection,
                service_levels=service_levels,
                deployment=deployment,
                build_accelerator_type=build_accelerator_type,
                build_accelerator_count=build_accelerator_count,
            ).set_display_name("Validate and select")
            selected.set_accelerator_type(build_accelerator_type).set_accelerator_limit(
                build_accelerator_count
            )

            packaged = package_triton_repository(
                selected_model=selected.outputs["selected_model"],
                model=model,
                triton=triton,
                deployment=deployment,
            ).set_display_name("Package Triton repository")

            # On the serving image and the deployment's GPU (the one accelerator parameter): the
            # check serves the repository with the production tritonserver before deployment.
            checked = serve_check(
                triton_repository=packaged.outputs["triton_repository"],
                source_model=intake.outputs["source_model"],
                eval_data=intake.outputs["eval_data"],
                triton=triton,
                deployment=deployment,
                service_levels=service_levels,
            ).set_display_name("Serve check (Triton)")
            checked.set_accelerator_type(build_accelerator_type).set_accelerator_limit(
                build_accelerator_count
            ).set_env_variable(TRITON_ROOT_ENV, str(SERVING_IMAGE_TRITON))

            with dsl.If(intake.outputs["deploy"] == True, name="deploy-enabled"):  # noqa: E712
                deployed = (
                    deploy_to_endpoint(
                        triton_repository=packaged.outputs["triton_repository"],
                        source_model=intake.outputs["source_model"],
                        model=model,
                        deployment=deployment,
                        canary=canary,
                        run_id=run_id,
                    )
                    .set_display_name("Deploy to endpoint")
                    .set_caching_options(False)
                )
                deployed.after(checked)

                run_canary(
                    vertex_endpoint=deployed.outputs["vertex_endpoint"],
                    vertex_model=deployed.outputs["vertex_model"],
                    eval_data=intake.outputs["eval_data"],
                    deployed_model_id=deployed.outputs["deployed_model_id"],
                    deployment=deployment,
                    canary=canary,
                    run_id=run_id,
                ).set_display_name("Canary rollout").set_caching_options(False)

                setup_monitoring(
                    vertex_endpoint=deployed.outputs["vertex_endpoint"],
                    deployment=deployment,
                    monitoring=monitoring,
                ).set_display_name("Monitoring setup").set_caching_options(False)
