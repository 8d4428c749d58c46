"""One verification layer: runners for every format, one output comparison, one accuracy gate."""

from vxdeploy.components.verify.accuracy import (
    TASK_METRICS,
    AccuracyResult,
    OutputAccuracy,
    OutputMetric,
    measure_accuracy,
    output_metrics,
    resolve_output_metrics,
    targets_for,
)
from vxdeploy.components.verify.compare import (
    OutputComparison,
    ParityTolerance,
    check_parity,
    compare_outputs,
    row_cosines,
    summarize,
)
from vxdeploy.components.verify.runners import (
    RUNNERS,
    OnnxRuntimeRunner,
    Runner,
    RunnerUnavailable,
    TorchRunner,
    load_torch_module,
    open_runner,
    run_batches,
)

__all__ = [
    "RUNNERS",
    "TASK_METRICS",
    "AccuracyResult",
    "OnnxRuntimeRunner",
    "OutputAccuracy",
    "OutputComparison",
    "OutputMetric",
    "ParityTolerance",
    "Runner",
    "RunnerUnavailable",
    "TorchRunner",
    "check_parity",
    "compare_outputs",
    "load_torch_module",
    "measure_accuracy",
    "open_runner",
    "output_metrics",
    "resolve_output_metrics",
    "row_cosines",
    "run_batches",
    "summarize",
    "targets_for",
]
