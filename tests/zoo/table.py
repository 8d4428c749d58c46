"""Render the zoo table from the rows the end-to-end tests record (``VXDEPLOY_ZOO_RESULTS=rows.jsonl``).

Usage: ``python -m tests.zoo.table rows.jsonl``
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any


def _int8(q: dict[str, Any] | None) -> str:
    """Static and dynamic INT8 verdicts of the calibration gate, with the figure they were judged by."""
    if not q:
        return "n/a"
    cosine = q.get("min_cosine")
    static = "static yes" if q.get("accepted") else "static no"
    text = f"{static} ({q.get('method')}, min per-row cosine {cosine:.4f})" if cosine is not None else static
    if "dynamic_accepted" in q:
        dyn_cos = q.get("dynamic_min_cosine")
        verdict = "yes" if q.get("dynamic_accepted") else "no"
        text += f"; dynamic {verdict}" + (
            f" (min per-row cosine {dyn_cos:.4f})" if dyn_cos is not None else ""
        )
    if q.get("judged_by"):
        text += f"; {q['judged_by']}"
    return text


def _speedup(row: dict[str, Any]) -> str:
    """The selected candidate's speed-up with its spread: from the report's candidate fields, or
    (reports that no longer carry them) from the selection reason, which states it with its batch."""
    sp = row.get("speedup") or {}
    ratio = next((v for k, v in sp.items() if not k.startswith("speedup_iqr")), None)
    if ratio is not None:
        iqr = next((v for k, v in sp.items() if k.startswith("speedup_iqr")), "")
        return f"{ratio}x ({iqr})" if isinstance(ratio, (int, float)) else f"{ratio} ({iqr})"
    found = re.search(r"at (batch \d+) \((.*?\))\)", row.get("selection_reason") or "")
    return f"{found.group(2)} at {found.group(1)}" if found else ""


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | weights | rc | selected | speedup (IQR) | INT8 accepted (metric) | wall s |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        speed = _speedup(r)
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['rc']} | {r['selected']} | {speed} | "
            f"{_int8(r.get('quantization'))} | {r['wall_s']} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    sys.stdout.write(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
