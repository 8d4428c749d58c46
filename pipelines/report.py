"""Gather the stage reports of a run into ``report.json`` and ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.common.stage import markdown_table, write_json, write_text_atomic

# Pipeline order; the task names kfp gives the components.
STAGE_TASKS: tuple[tuple[str, str], ...] = (
    ("validate", "validate-run-inputs"),
    ("intake", "intake-model"),
    ("export", "export-onnx"),
    ("calibrate", "calibrate-int8"),
    ("compile", "compile-candidates"),
    ("select", "select-candidate"),
    ("package", "package-triton-repository"),
    ("serve_check", "serve-check"),
    ("deploy", "deploy-to-endpoint"),
    ("canary", "run-canary"),
    ("monitoring", "setup-monitoring"),
    ("rollback", "rollback-on-failure"),
)


def find_run_root(pipeline_root: Path) -> Path | None:
    """The newest run directory kfp.local made under ``pipeline_root``."""
    runs = [p for p in pipeline_root.iterdir() if p.is_dir()] if pipeline_root.is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def load_stage_reports(run_root: Path) -> dict[str, dict[str, Any]]:
    """Each stage's JSON report, by stage name, for the stages that wrote one."""
    reports: dict[str, dict[str, Any]] = {}
    for stage, task in STAGE_TASKS:
        path = run_root / task / "report"
        if path.is_file():
            reports[stage] = json.loads(path.read_text())
    return reports


def build_report(
    reports: dict[str, dict[str, Any]],
    *,
    run_id: str,
    config: dict[str, Any],
    run_root: Path | None,
    status: str,
    error: str = "",
    wall_s: float = 0.0,
) -> dict[str, Any]:
    """The machine-readable report of one run."""

    def details(stage: str) -> dict[str, Any]:
        return dict(reports.get(stage, {}).get("details", {}))

    def summary(stage: str) -> dict[str, Any]:
        return dict(reports.get(stage, {}).get("summary", {}))

    stages = []
    for stage, task in STAGE_TASKS:
        rep = reports.get(stage)
        if rep is None:
            stages.append({"stage": stage, "status": "not run", "duration_s": None, "reason": ""})
        else:
            stages.append(
                {
                    "stage": stage,
                    "status": rep.get("status"),
                    "duration_s": rep.get("duration_s"),
                    "reason": rep.get("reason", ""),
                    "summary": rep.get("summary", {}),
                    "artifacts": str(run_root / task) if run_root else "",
                }
            )
    select_details = details("select")
    package_summary = summary("package")
    return {
        "run_id": run_id,
        "status": status,
        "error": error,
        "wall_s": round(wall_s, 2),
        "model": {**summary("intake"), "signature": details("intake").get("signature")},
        "export": summary("export"),
        "quantization": summary("calibrate"),
        "candidates": select_details.get("candidates", []),
        "skipped_candidates": details("compile").get("skipped", []),
        "selected": select_details.get("selected"),
        "selection_reason": summary("select").get("reason", ""),
        # Priced from Triton's served throughput when the serve check measured it, else from selection.
        "cost": details("serve_check").get("cost") or select_details.get("cost"),
        "selection_cost": select_details.get("cost"),
        "triton_repository": package_summary.get("repository_path", ""),
        "serve_check": {
            "status": reports.get("serve_check", {}).get("status", "not run"),
            **summary("serve_check"),
        },
        "serve_check_markdown": details("serve_check").get("markdown", ""),
        "cloud": {
            name: {
                "status": reports.get(name, {}).get("status", "not run"),
                "reason": reports.get(name, {}).get("reason", ""),
                **summary(name),
                **({"steps": details(name).get("steps")} if name == "canary" else {}),
            }
            for name in ("deploy", "canary", "monitoring", "rollback")
        },
        "stages": stages,
        "config": config,
    }


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable report: stages, candidates, the decision, serving and cloud figures."""
    out = [f"# vxdeploy run `{report['run_id']}`", "", f"Status: **{report['status']}**", ""]
    if report.get("error"):
        out += [f"Error: {report['error']}", ""]
    if report.get("failed_log"):
        tail = report.get("failed_log_tail") or []
        out += [f"Log of the failing task: `{report['failed_log']}`", ""]
        if tail:
            out += ["```", *tail, "```", ""]
    out += [
        "## Stages",
        "",
        markdown_table(
            [
                {
                    "stage": s["stage"],
                    "status": s["status"],
                    "seconds": "" if s["duration_s"] is None else f"{s['duration_s']:.1f}",
                    "note": s.get("reason", ""),
                }
                for s in report["stages"]
            ]
        ),
    ]
    if report["candidates"]:
        out += ["## Candidates", "", markdown_table(report["candidates"])]
    if report["skipped_candidates"]:
        out += ["Skipped:", "", markdown_table(report["skipped_candidates"])]
    if report["selected"]:
        out += ["## Selected", "", f"`{report['selected']}`: {report['selection_reason']}", ""]
    cost = report.get("cost")
    if isinstance(cost, dict) and cost.get("markdown"):
        out += ["## Cost", "", cost["markdown"], ""]
    if report["serve_check"]:
        out += ["## Serve check", "", markdown_table([report["serve_check"]])]
    if report.get("serve_check_markdown"):
        # Verdict, substitutions, the serving sweep and the served cost table, one level down.
        out += [report["serve_check_markdown"], ""]
    out += [
        "## Cloud",
        "",
        markdown_table(
            [
                {"stage": k, **{kk: vv for kk, vv in v.items() if kk != "steps"}}
                for k, v in report["cloud"].items()
            ],
            ["stage", "status", "reason"],
        ),
    ]
    steps = report["cloud"].get("canary", {}).get("steps")
    if steps:
        out += ["### Canary steps", "", markdown_table(steps)]
    return "\n".join(out) + "\n"


def write_reports(report: dict[str, Any], workdir: Path) -> tuple[Path, Path]:
    json_path, md_path = workdir / "report.json", workdir / "report.md"
    write_json(json_path, report)
    write_text_atomic(md_path, render_markdown(report))
    return json_path, md_path
