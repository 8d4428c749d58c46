"""KFP component: export to ONNX, checked against PyTorch."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from vxdeploy.components.common.images import OPTIMIZER_IMAGE


@dsl.component(base_image=OPTIMIZER_IMAGE, install_kfp_package=False)
def export_onnx(
    source_model: Input[Model],
    eval_data: Input[Dataset],
    model: dict,
    export: dict,
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    report: Output[Artifact],
) -> None:
    """Exports the model to ONNX with a dynamic batch and checks every output against PyTorch.

    An ONNX source model skips export but is still checked and shape-inferred.

    Args:
        source_model: The model from intake (.pt2, TorchScript or ONNX).
        eval_data: Samples used for the parity check.
        model: The model section of the run config.
        export: The export section (opset, tolerances, parity samples).
        onnx_model: The FP32 ONNX model; metadata carries its signature, opset, sha256 and parity figures.
        metrics: Parity figures (max abs diff, cosine, top-1 agreement).
        report: This stage's JSON report.
    """
    from vxdeploy.components.export import stage

    stage.run(source_model, eval_data, model, export, onnx_model, metrics, report)
