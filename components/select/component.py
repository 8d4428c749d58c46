"""KFP component: measure every candidate the same way and select the best within budget."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from vxdeploy.components.common.images import OPTIMIZER_IMAGE


@dsl.component(base_image=OPTIMIZER_IMAGE, install_kfp_package=False)
def select_candidate(
    candidates: Input[Artifact],
    source_model: Input[Model],
    eval_data: Input[Dataset],
    selection: dict,
    service_levels: dict,
    deployment: dict,
    build_accelerator_type: str,
    build_accelerator_count: int,
    selected_model: Output[Model],
    benchmark: Output[Artifact],
    metrics: Output[Metrics],
    table: Output[Markdown],
    report: Output[Artifact],
) -> None:
    """Measures accuracy and latency of every candidate and picks the winner by the selection policy.

    Accuracy is measured against the FP32 PyTorch reference on the evaluation data; latency
    (p50/p90/p99) and throughput at each configured batch size after warm-up. Candidates over
    the accuracy budget or missing a service-level target are rejected with the reason.

    Args:
        candidates: The candidates directory from compilation.
        source_model: The PyTorch model, the FP32 reference.
        eval_data: Held-out samples and labels.
        selection: The selection section (policy, accuracy budget, batch sizes, iterations).
        service_levels: Latency and cost targets.
        deployment: The deployment section (machine and accelerator, for the cost table).
        build_accelerator_type: The GPU this task was scheduled on ('' for CPU); checked before measuring.
        build_accelerator_count: GPUs this task was given.
        selected_model: The winning candidate's files; metadata: kind, precision, figures.
        benchmark: Every candidate's figures as JSON.
        metrics: The selected candidate's headline figures.
        table: The comparison table with the decision and its reason.
        report: This stage's JSON report.
    """
    from vxdeploy.components.select import stage

    stage.run(
        candidates,
        source_model,
        eval_data,
        selection,
        service_levels,
        deployment,
        build_accelerator_type,
        build_accelerator_count,
        selected_model,
        benchmark,
        metrics,
        table,
        report,
    )
