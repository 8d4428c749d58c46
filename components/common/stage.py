"""What every stage writes: a JSON stage report, KFP Metrics and a Markdown table.

The stage report is the machine-readable record the CLI gathers into ``report.json``;
Metrics and Markdown are what the Vertex AI console shows for the task.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["succeeded", "skipped", "failed"]


@dataclass
class StageReport:
    """The record of one stage: what it did, its headline figures and its details."""

    stage: str
    status: Status = "succeeded"
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": self.status,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 3),
            "summary": self.summary,
            "details": self.details,
        }

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
