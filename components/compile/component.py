"""KFP component: build every serving candidate the target allows."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from vxdeploy.components.common.images import OPTIMIZER_IMAGE


@dsl.component(base_image=OPTIMIZER_IMAGE, install_kfp_package=False)
def compile_candidates(
    source_model: Input[Model],
    onnx_model: Input[Model],
    qdq_model: Input[Model],
    compilation: dict,
    build_accelerator_type: str,
    build_accelerator_count: int,
    candidates: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Artifact],
) -> None:
    """Builds ONNX Runtime, TensorRT and AOT Inductor candidates on this task's hardware.

    TensorRT engines are built strongly typed, on the GPU they will serve on, with
    optimization profiles and a persistent timing cache. Candidates that cannot be built here
    (TensorRT without a GPU, INT8 rejected by its gate) are skipped with the reason.

    Args:
        source_model: The PyTorch model (for AOT Inductor).
        onnx_model: The FP32 ONNX model.
        qdq_model: The Q/DQ INT8 ONNX model (metadata 'accepted' tells whether it passed its gate).
        compilation: The compilation section (candidates, profiles, timing cache).
        build_accelerator_type: The GPU this task was scheduled on ('' for CPU); checked before building.
        build_accelerator_count: GPUs this task was given.
        candidates: A directory with one folder per candidate and a manifest.json.
        metrics: Candidates built and skipped.
        report: This stage's JSON report.
    """
    from vxdeploy.components.compile import stage

    stage.run(
        source_model,
        onnx_model,
        qdq_model,
        compilation,
        build_accelerator_type,
        build_accelerator_count,
        candidates,
        metrics,
        report,
    )
