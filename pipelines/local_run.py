"""Run the pipeline on this machine with ``kfp.local`` and write the run's report."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common.config import RunConfig
from components.common.errors import VxdeployError
from components.intake.intake import intake
from pipelines.report import build_report, find_run_root, load_stage_reports, write_reports


@dataclass(frozen=True)
class LocalRunResult:
    workdir: Path
    report: dict[str, Any]
    report_json: Path
    report_md: Path

    @property
    def succeeded(self) -> bool:
        return bool(self.report["status"] == "succeeded")


def default_workdir(base: str | Path = "vxdeploy-runs") -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path(base) / stamp


def preflight(config: RunConfig) -> None:
    """Check the model and data in-process before starting any task (fast, clear errors)."""
    with tempfile.TemporaryDirectory() as tmp:
        intake(config.model, config.data, tmp)


def _enable_task_output_conditions() -> None:
    """Let kfp.local evaluate ``dsl.If`` conditions on task outputs.

    kfp.local 2.17 resolves a condition's operands only among the enclosing DAG's inputs, so a
    condition on a task output (``intake.outputs["proceed"] == True``) is always false locally,
    while Vertex AI evaluates it correctly. This wraps its resolver to fall back to the task
    outputs it already holds (channel ``pipelinechannel--<task>-<output>``). Local runs only.
    """
    from kfp.local.orchestrator import enhanced_dag_orchestrator as dag

    evaluator = dag.ConditionEvaluator
    if getattr(evaluator, "_vxdeploy_task_outputs", False):
        return
    original = evaluator._resolve_pipeline_channel

    def resolve(channel_ref: str, io_store: Any) -> Any:
        task, _, output = channel_ref.removeprefix("pipelinechannel--").rpartition("-")
        if task:
            try:
                return io_store.get_task_output(task, output)
            except Exception:  # not a task output: let kfp resolve it as an input
                pass
        return original(channel_ref, io_store)

    evaluator._resolve_pipeline_channel = staticmethod(resolve)  # type: ignore[method-assign]
    evaluator._vxdeploy_task_outputs = True  # type: ignore[attr-defined]


def run_local(
    config: RunConfig,
    workdir: str | Path,
    *,
    log: Callable[[str], None] = print,
    skip_preflight: bool = False,
) -> LocalRunResult:
    """Run the whole pipeline under ``kfp.local`` (SubprocessRunner) with outputs under ``workdir``.

    The returned report carries every stage's status and figures; a failed stage makes the
    status ``failed`` with the error, never an exception, so the report is always written.
    """
    from kfp import local

    from pipelines.optimize_and_deploy import optimize_and_deploy

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not skip_preflight:
        preflight(config)
    pipeline_root = work / "pipeline_root"
    _enable_task_output_conditions()
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True
    )
    # Components import this package in a subprocess: make sure it resolves to this interpreter.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    start = time.perf_counter()
    status, error = "succeeded", ""
    try:
        optimize_and_deploy(**config.to_pipeline_parameters(build_on_accelerator=False))
    except (RuntimeError, VxdeployError) as exc:
        status, error = "failed", _first_line(str(exc))
    wall = time.perf_counter() - start
    run_root = find_run_root(pipeline_root)
    reports = load_stage_reports(run_root) if run_root else {}
    run_id = run_root.name if run_root else work.name
    failed = [
        (name, rep) for name, rep in reports.items() if rep.get("status") == "failed" and rep.get("reason")
    ]
    if status == "failed" and failed:
        name, rep = failed[0]
        error = f"stage {name} failed: {rep['reason']}"
    report = build_report(
        reports,
        run_id=run_id,
        config=config.model_dump(mode="json"),
        run_root=run_root,
        status=status,
        error=error,
        wall_s=wall,
    )
    json_path, md_path = write_reports(report, work)
    return LocalRunResult(work, report, json_path, md_path)


def _first_line(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def summary_table(report: dict[str, Any]) -> str:
    """The end-of-run table printed to the terminal."""
    rows = [("stage", "status", "seconds", "headline")]
    for s in report["stages"]:
        if s["status"] == "not run" and s["stage"] in ("rollback",):
            continue
        rows.append(
            (
                s["stage"],
                s["status"],
                "" if s["duration_s"] is None else f"{s['duration_s']:.1f}",
                _headline(s) or s.get("reason", ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(r[j].ljust(widths[j]) for j in range(3)) + "  " + r[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 8)
    return "\n".join(lines)


_HEADLINE_KEYS = (
    "format",
    "parity_max_abs_diff",
    "parity_min_cosine",
    "fp32_accuracy",
    "int8_accuracy",
    "excluded_layers",
    "built",
    "selected",
    "model_name",
    "kind",
    "requests",
    "executions",
    "p99_ms",
    "max_abs_diff",
    "decision",
    "action",
    "endpoint",
)


def _headline(stage: dict[str, Any]) -> str:
    summ = stage.get("summary") or {}
    parts = []
    for key in _HEADLINE_KEYS:
        v = summ.get(key)
        if v is None or isinstance(v, dict):
            continue
        if isinstance(v, list):
            v = ",".join(str(x) for x in v) or "-"
        parts.append(f"{key}={v:.4g}" if isinstance(v, float) else f"{key}={v}")
    return ", ".join(parts[:5])


def print_result(result: LocalRunResult, out: Any = sys.stdout) -> None:
    print("", file=out)
    print(summary_table(result.report), file=out)
    print("", file=out)
    if result.report.get("selected"):
        print(
            f"selected: {result.report['selected']} ({result.report.get('selection_reason', '')})", file=out
        )
    if not result.succeeded:
        print(f"FAILED: {result.report['error']}", file=out)
    print(f"report: {result.report_json}  {result.report_md}", file=out)
    print(f"wall time: {result.report['wall_s']:.1f} s", file=out)
