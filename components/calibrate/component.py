"""KFP component: explicit Q/DQ INT8 calibration with an accuracy gate."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from vxdeploy.components.common.images import OPTIMIZER_IMAGE


@dsl.component(base_image=OPTIMIZER_IMAGE, install_kfp_package=False)
def calibrate_int8(
    onnx_model: Input[Model],
    calibration_data: Input[Dataset],
    eval_data: Input[Dataset],
    data: dict,
    quantization: dict,
    selection: dict,
    qdq_model: Output[Model],
    metrics: Output[Metrics],
    table: Output[Markdown],
    report: Output[Artifact],
) -> None:
    """Quantizes the ONNX model to explicit Q/DQ INT8 on real calibration data, gated on accuracy.

    When the accuracy drop exceeds the budget, the most sensitive layers are kept in higher
    precision until it holds; if it cannot hold, INT8 is dropped from the candidates (the
    artifact's metadata says why) and the run goes on.

    Args:
        onnx_model: The FP32 ONNX model.
        calibration_data: Calibration samples.
        eval_data: Held-out samples (and labels) for the accuracy gate.
        data: The data section (sample-count limits).
        quantization: The quantization section (backend, method, per-channel, exclusions).
        selection: The selection section (accuracy budget).
        qdq_model: The Q/DQ model with calibration ranges and the accuracy table; metadata 'accepted'.
        metrics: Headline figures (FP32 and INT8 accuracy, drop, excluded layers).
        table: The accuracy table at each exclusion step.
        report: This stage's JSON report.
    """
    from vxdeploy.components.calibrate import stage

    stage.run(
        onnx_model,
        calibration_data,
        eval_data,
        data,
        quantization,
        selection,
        qdq_model,
        metrics,
        table,
        report,
    )
