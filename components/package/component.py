"""KFP components: Triton model repository packaging and a real serve check."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from vxdeploy.components.common.images import RUNNER_IMAGE, SERVING_IMAGE


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def package_triton_repository(
    selected_model: Input[Model],
    model: dict,
    triton: dict,
    deployment: dict,
    triton_repository: Output[Model],
    report: Output[Artifact],
) -> None:
    """Writes a Triton model repository for the selected candidate; config.pbtxt via Triton's protobuf.

    Args:
        selected_model: The selected candidate.
        model: The model section (name, parts).
        triton: The Triton section (batching, instances, warm-up, cache).
        deployment: The deployment section (accelerator decides instance kind).
        triton_repository: The repository with a sha256 manifest; metadata carries the serving container spec.
        report: This stage's JSON report.
    """
    from vxdeploy.components.package import stage

    stage.run_package(selected_model, model, triton, deployment, triton_repository, report)


@dsl.component(base_image=SERVING_IMAGE, install_kfp_package=False)
def serve_check(
    triton_repository: Input[Model],
    source_model: Input[Model],
    eval_data: Input[Dataset],
    triton: dict,
    deployment: dict,
    service_levels: dict,
    metrics: Output[Metrics],
    summary: Output[Markdown],
    report: Output[Artifact],
) -> None:
    """Serves the repository with a real Triton server, compares its answers with PyTorch, measures it.

    In the serving image (on Vertex AI, on the deployment's accelerator) it runs that image's
    ``/opt/tritonserver/bin/tritonserver`` over the packaged repository unchanged; elsewhere
    nvidia-pytriton's bundled server with the substitutions it needs, each one reported.
    Concurrent requests check the answers and that Triton's statistics count every request;
    a concurrency sweep with dynamic batching off and on measures serving, and the cost table
    is priced from the served throughput at the latency targets.

    Args:
        triton_repository: The packaged repository.
        source_model: The PyTorch reference.
        eval_data: Samples to send.
        triton: The Triton section (serve_check: required, best_effort or off; sweep).
        deployment: The deployment section (machine, accelerator, replicas) for the cost table.
        service_levels: Latency targets and target load for the cost table.
        metrics: Requests, executions, p50/p99 latency, max abs diff, sweep headline figures.
        summary: The verdict, substitutions, sweep table and cost table (Markdown, in the console).
        report: This stage's JSON report.
    """
    from vxdeploy.components.package import stage

    stage.run_serve_check(
        triton_repository,
        source_model,
        eval_data,
        triton,
        metrics,
        report,
        deployment=deployment,
        service_levels=service_levels,
        summary=summary,
    )
