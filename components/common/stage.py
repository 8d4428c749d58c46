"""What every stage writes: a JSON stage report, KFP Metrics and a Markdown table.

The stage report is the machine-readable record the CLI gathers into ``report.json``;
Metrics and Markdown are what the Vertex AI console shows for the task. A stage that fails or is
interrupted writes its report too (:func:`reports_failure`), with the error's class and message.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from vxdeploy.components.common.errors import ConfigError, InternalError, UserError, VxdeployError
from vxdeploy.components.common.interrupts import signals_raise

Status = Literal["succeeded", "skipped", "failed", "interrupted"]
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


@dataclass
class StageReport:
    """The record of one stage: what it did, its headline figures and its details."""

    stage: str
    status: Status = "succeeded"
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "stage": self.stage,
            "status": self.status,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 3),
            "summary": self.summary,
            "details": self.details,
        }
        if self.error is not None:
            out["error"] = self.error
        return out

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())


@contextmanager
def timed(report: StageReport) -> Iterator[StageReport]:
    """Measure the stage's wall time into ``report.duration_s``."""
    start = time.perf_counter()
    try:
        yield report
    finally:
        report.duration_s = time.perf_counter() - start


def error_record(exc: BaseException) -> dict[str, Any]:
    """What a report says about an error: its class, kind, message, and the field of a ConfigError.

    The kind is ``user`` (bad input: the user can fix it), ``interrupted`` (Ctrl-C, SIGTERM),
    ``outcome`` (a deliberate end by the run's own rules, e.g. a canary rolled back) or ``internal``.
    """
    if isinstance(exc, KeyboardInterrupt):
        kind = "interrupted"
    elif isinstance(exc, UserError):
        kind = "user"
    elif isinstance(exc, VxdeployError) and not isinstance(exc, InternalError):
        kind = "outcome"
    else:
        kind = "internal"
    message = str(exc) or type(exc).__name__
    record: dict[str, Any] = {"class": type(exc).__name__, "kind": kind, "message": message}
    if isinstance(exc, ConfigError):
        record["field"] = exc.field
    return record


def reports_failure(stage: str) -> Callable[[_Fn], _Fn]:
    """Decorate a stage's entry function so a failure is written like a success: its report says so.

    The entry function takes its report artifact as the argument ``report``. When the function
    raises, the report at ``report.path`` gets status ``failed`` (``interrupted`` for Ctrl-C or
    SIGTERM) and an ``error`` record (class, kind, message, and the field of a ``ConfigError``);
    whatever the stage had already written there (figures of a failed gate) is kept. The error is
    then raised again, so the task still fails. While the function runs, SIGTERM unwinds it like
    Ctrl-C (servers stopped, temp folders removed) instead of ending the process on the spot.
    """

    def decorate(fn: _Fn) -> _Fn:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                with signals_raise():
                    return fn(*args, **kwargs)
            except (Exception, KeyboardInterrupt) as exc:
                report = signature.bind_partial(*args, **kwargs).arguments.get("report")
                if report is not None and getattr(report, "path", None):
                    write_failure_report(report.path, stage, exc, time.perf_counter() - start)
                if isinstance(exc, KeyboardInterrupt) and os.environ.get("_KFP_RUNTIME") == "true":
                    _exit_interrupted_task()
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


def _exit_interrupted_task() -> None:
    """End an interrupted KFP task now that its servers, temp folders and report are seen to.

    What is left is the interpreter's teardown (seconds, with torch loaded), which would keep a
    stopped run waiting; the task's outputs are not used after an interrupt.
    """
    import logging
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def write_failure_report(
    path: str | os.PathLike[str], stage: str, exc: BaseException, duration_s: float
) -> None:
    """Write (or complete) the report of a stage that raised ``exc``."""
    try:
        existing = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    except (OSError, ValueError):
        existing = {}
    record = error_record(exc)
    status: Status = "interrupted" if record["kind"] == "interrupted" else "failed"
    report = StageReport(
        stage=str(existing.get("stage") or stage),
        status=status,
        reason=str(existing.get("reason") or "") if existing.get("status") == status else "",
        summary=dict(existing.get("summary") or {}),
        details=dict(existing.get("details") or {}),
        duration_s=float(existing.get("duration_s") or duration_s),
        error=record,
    )
    if not report.reason:
        first = record["message"].strip().splitlines()
        report.reason = f"{record['class']}: {first[0] if first else record['class']}"
    report.write(path)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (temp file, then rename), keys sorted for stable output."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    tmp.replace(p)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def log_metrics(metrics: Any, figures: Mapping[str, Any]) -> None:
    """Log every finite number in ``figures`` to a KFP ``Metrics`` artifact (None is skipped)."""
    if metrics is None:
        return
    for name, value in figures.items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            metrics.log_metric(name, float(value))


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (what the Vertex console renders)."""
    if not rows:
        return "_(none)_\n"
    cols = list(columns or rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(_cell(row.get(c, "")) for c in cols) + " |")
    return "\n".join(out) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    tmp.write_text(text)
    tmp.replace(p)
