"""One run's report from its stage reports: every figure for tools (JSON), the page a person reads (Markdown).

:func:`build_report` gathers the stage reports into one record (``schema_version``
:data:`SCHEMA_VERSION`) that keeps every figure the stages measured; :func:`report_sections` turns
it into the sections both :func:`render_markdown` and the HTML page
(:func:`vxdeploy.components.report.html.render_html`) show, so each fact is worded in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vxdeploy.components.common.numbers import plain_numbers, readable
from vxdeploy.components.common.stage import markdown_table

SCHEMA_VERSION = 2
"""Version of ``report.json``'s layout; raised when a key changes meaning or moves."""

# The stages in pipeline order, by the names their reports are kept under.
STAGES: tuple[str, ...] = (
    "validate",
    "intake",
    "export",
    "calibrate",
    "compile",
    "select",
    "package",
    "serve_check",
    "deploy",
    "canary",
    "monitoring",
    "rollback",
)
CLOUD_STAGES: tuple[str, ...] = ("deploy", "canary", "monitoring", "rollback")
# The canary step table's columns in reading order (the rows are the canary's own, read back sorted).
CANARY_COLUMNS = (
    "step",
    "canary %",
    "attempt",
    "canary requests",
    "canary error rate",
    "canary p99 ms",
    "baseline requests",
    "baseline error rate",
    "baseline p99 ms",
    "verdict",
    "reason",
)
# A benchmark spread (interquartile range relative to the median) above this is called noisy.
NOISY_IQR_PCT = 25.0


# --- numbers a person reads ------------------------------------------------------------------


def cosine_text(value: Any) -> str:
    """A cosine similarity to six decimals (three significant figures would round 0.9996 to 1)."""
    return f"{value:.6f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{readable(float(value))} ms"


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of readable cells, leaving out any column that is empty in every row."""
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())
    cells = [
        {
            c: (v if isinstance(v, str) else cosine_text(v) if "cosine" in c else readable(v))
            for c, v in row.items()
        }
        for row in rows
    ]
    kept = [c for c in cols if any(cell.get(c, "") not in ("", "-") for cell in cells)]
    return markdown_table(cells, kept or cols)


# --- the record --------------------------------------------------------------------------------


def _details(reports: Mapping[str, Mapping[str, Any]], stage: str) -> dict[str, Any]:
    return dict(reports.get(stage, {}).get("details") or {})


def _summary(reports: Mapping[str, Mapping[str, Any]], stage: str) -> dict[str, Any]:
    return dict(reports.get(stage, {}).get("summary") or {})


def run_status(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """``failed`` / ``interrupted`` when a stage says so, else ``succeeded`` (a report made in-pipeline)."""
    statuses = {str(rep.get("status", "")) for rep in reports.values()}
    for status in ("interrupted", "failed"):
        if status in statuses:
            return status
    return "succeeded"


def candidate_records(select: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every measured candidate and the reference, with all batch sizes, spreads and per-output accuracy.

    Each record is the selection benchmark's figures for one candidate (``latency`` and
    ``speedup`` by batch size, ``accuracy`` with its ``outputs``) with its ``status`` in the
    decision (``reference``, ``selected``, ``rejected`` or ``passed``) and its ``reason``.
    """
    benchmark = dict(select.get("benchmark") or {})
    selected = select.get("selected")
    records = []
    for figure in benchmark.get("figures") or []:
        built = (figure.get("candidate") or {}).get("status", "built") == "built"
        if not figure.get("reference") and not built and not figure.get("latency"):
            continue  # not built: listed once, with the reason, among the skipped candidates
        if figure.get("reference"):
            status = "reference"
        elif figure.get("name") == selected:
            status = "selected"
        else:
            status = "rejected" if figure.get("rejected_reason") else "passed"
        records.append(
            {
                "name": figure.get("name"),
                "status": status,
                "reason": figure.get("rejected_reason", ""),
                **{k: v for k, v in figure.items() if k not in ("name", "rejected_reason")},
            }
        )
    return records


def skipped_candidates(compile_details: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Candidates not built, once each (by name), with the reason."""
    seen: dict[str, dict[str, Any]] = {}
    for item in compile_details.get("skipped") or []:
        name = str(item.get("name", ""))
        if name and name not in seen:
            seen[name] = {"name": name, "kind": item.get("kind", ""), "reason": item.get("reason", "")}
    for item in compile_details.get("candidates") or []:
        name = str(item.get("name", ""))
        if item.get("status") in ("skipped", "failed") and name and name not in seen:
            seen[name] = {"name": name, "kind": item.get("kind", ""), "reason": item.get("reason", "")}
    return list(seen.values())


def build_report(
    reports: Mapping[str, Mapping[str, Any]],
    *,
    run_id: str,
    config: Mapping[str, Any] | None = None,
    run_root: Any = None,
    status: str | None = None,
    error: str = "",
    wall_s: float = 0.0,
    stage_artifacts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The machine-readable report of one run: every figure the stages measured.

    Args:
        reports: Each stage's JSON report, by stage name (:data:`STAGES`).
        run_id: The run's name.
        config: The run's configuration (as JSON), kept beside the figures.
        run_root: Unused; kept so older callers' keyword still binds.
        status: The run's status; derived from the stage reports when None.
        error: The run's error, if it failed.
        wall_s: The run's wall time.
        stage_artifacts: Where each stage's outputs lie, by stage name.
    """
    del run_root
    artifacts = dict(stage_artifacts or {})
    stages = []
    for stage in STAGES:
        rep = reports.get(stage)
        if rep is None:
            stages.append({"stage": stage, "status": "not run", "duration_s": None, "reason": ""})
            continue
        stages.append(
            {
                "stage": stage,
                "status": rep.get("status"),
                "duration_s": rep.get("duration_s"),
                "reason": rep.get("reason", ""),
                "summary": rep.get("summary", {}),
                "artifacts": artifacts.get(stage, ""),
                **({"error": rep["error"]} if rep.get("error") else {}),
            }
        )
    select = _details(reports, "select")
    serve = _details(reports, "serve_check")
    calibrate = _details(reports, "calibrate")
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": status or run_status(reports),
        "error": error,
        "wall_s": round(wall_s, 2),
        "model": {**_summary(reports, "intake"), "signature": _details(reports, "intake").get("signature")},
        "export": {**_summary(reports, "export"), "parity": _details(reports, "export").get("parity", [])},
        "quantization": {
            **_summary(reports, "calibrate"),
            "excluded_layer_names": calibrate.get("excluded_layers", []),
            "steps": calibrate.get("steps", []),
            "sensitivity": calibrate.get("sensitivity", []),
            "notes": calibrate.get("notes", []),
        },
        "batch_sizes": (select.get("benchmark") or {}).get("batch_sizes", []),
        "reference": (select.get("benchmark") or {}).get("reference", ""),
        "candidates": candidate_records(select),
        "skipped_candidates": skipped_candidates(_details(reports, "compile")),
        "selected": select.get("selected"),
        "selection_reason": _summary(reports, "select").get("reason", ""),
        "selection_policy": (select.get("decision") or {}).get("policy", ""),
        "selection_warnings": list((select.get("decision") or {}).get("warnings") or []),
        "accuracy_budget": ((config or {}).get("selection") or {}).get("accuracy_budget"),
        "min_cosine": ((config or {}).get("selection") or {}).get("min_cosine"),
        # Priced from Triton's served throughput when the serve check measured it, else from selection.
        "cost": serve.get("cost") or select.get("cost"),
        "cost_basis": "served (Triton)" if serve.get("cost") else ("selection" if select.get("cost") else ""),
        "selection_cost": select.get("cost"),
        # A generation model: each part's candidates and decision, the chosen combination end to end.
        "generation": select.get("generation"),
        "triton_repository": _summary(reports, "package").get("repository_path", ""),
        "serve_check": {
            "status": reports.get("serve_check", {}).get("status", "not run"),
            "reason": reports.get("serve_check", {}).get("reason", ""),
            **_summary(reports, "serve_check"),
            "substitutions": serve.get("substitutions", []),
            "errors": serve.get("errors", []),
            "sweep": serve.get("sweep"),
            # A generation model: end-to-end latency of streamed generations per concurrency.
            "levels": serve.get("levels"),
            "generation_cost": serve.get("generation_cost"),
        },
        "cloud": {
            name: {
                "status": reports.get(name, {}).get("status", "not run"),
                "reason": reports.get(name, {}).get("reason", ""),
                **_summary(reports, name),
                **(
                    {
                        "steps": _details(reports, name).get("steps"),
                        "analyses": _details(reports, name).get("analyses"),
                        "smoke_test": _details(reports, name).get("smoke_test"),
                    }
                    if name == "canary"
                    else {}
                ),
            }
            for name in CLOUD_STAGES
        },
        "stages": stages,
        "config": dict(config or {}),
        # Every stage's own report, whole: the figures above are views of these.
        "stage_reports": {name: dict(rep) for name, rep in reports.items()},
    }
    report["caveats"] = caveats(report)
    return report


# --- caveats -----------------------------------------------------------------------------------


def caveats(report: Mapping[str, Any]) -> list[str]:
    """Everything the run found that a reader must know to trust its figures, once each."""
    found: list[str] = []
    stage_reports = report.get("stage_reports") or {}
    for check in (stage_reports.get("validate", {}).get("details") or {}).get("checks") or []:
        if check.get("status") == "skipped":
            found.append(f"validate: {check.get('name')} not checked: {check.get('detail', '')}")
    for note in (report.get("quantization") or {}).get("notes") or []:
        found.append(f"calibrate: {note}")
    found += [f"select: {w}" for w in report.get("selection_warnings") or []]
    reference = report.get("reference") or "the reference"
    noisy, alike = [], []
    for cand in report.get("candidates") or []:
        spreads = [
            f"{batch} ({lat['iqr_pct']:.0f}%)"
            for batch, lat in sorted((cand.get("latency") or {}).items(), key=lambda kv: int(kv[0]))
            if isinstance(lat.get("iqr_pct"), int | float) and lat["iqr_pct"] > NOISY_IQR_PCT
        ]
        if spreads:
            noisy.append(f"{cand['name']} at batch {', '.join(spreads)}")
        for batch, speed in sorted((cand.get("speedup") or {}).items(), key=lambda kv: int(kv[0])):
            if speed.get("verdict") == "not distinguishable":
                alike.append(
                    f"{cand['name']} at batch {batch} ({speed['ratio']:.2f}x, interquartile range "
                    f"{speed['ratio_p25']:.2f}-{speed['ratio_p75']:.2f} spans 1)"
                )
    if noisy:
        found.append(
            f"noise: latency spread (interquartile range / median) over {NOISY_IQR_PCT:g}%, read these "
            "figures as rough: " + "; ".join(noisy)
        )
    if alike:
        found.append(f"noise: not distinguishable from {reference}: " + "; ".join(alike))
    for item in (report.get("serve_check") or {}).get("substitutions") or []:
        found.append(f"serve check substitution: {item}")
    cost = report.get("cost") or {}
    # The cost table's method notes (replica formula, price source) stay under it; these change its meaning.
    for note in cost.get("notes") or []:
        if "priced as" in note or "not costed" in note:
            found.append(f"cost: {note}")
    for row in cost.get("rows") or []:
        found += [f"cost: {row.get('name')}: {n}" for n in row.get("notes") or []]
    package = (stage_reports.get("package", {}).get("details") or {}).get("notes") or []
    found += [f"package: {n}" for n in package]
    return list(dict.fromkeys(found))


# --- the page ----------------------------------------------------------------------------------


@dataclass
class Section:
    """One part of the page: a heading, Markdown text, and the picture (by name) shown below it."""

    title: str
    body: str
    figure: str = ""
    level: int = 2
    extra: list[str] = field(default_factory=list)


def _last(resource: Any) -> str:
    """``vxdeploy-model@1`` of ``projects/.../models/vxdeploy-model@1``: the part a reader tells apart."""
    return str(resource or "").rsplit("/", 1)[-1]


def stage_headline(stage: Mapping[str, Any]) -> str:
    """The one-line outcome of a stage: its failure or skip reason, else its headline figures."""
    if stage.get("status") in ("failed", "interrupted", "skipped") and stage.get("reason"):
        return str(stage["reason"])
    summary = dict(stage.get("summary") or {})
    name = stage.get("stage")
    if name == "validate" and "checks" in summary:
        passed, problems = summary.get("passed", 0), summary.get("problems", 0)
        return f"{passed}/{summary['checks']} checks passed, {problems} problems"
    if name == "intake" and summary:
        return (
            f"{summary.get('format', '')} model, "
            f"{readable(summary.get('calibration_samples'))} calibration / "
            f"{readable(summary.get('eval_samples'))} evaluation samples"
        )
    if name in ("export", "calibrate") and summary.get("task") == "generation":
        return _generation_headline(str(name), summary)
    if name == "export" and summary:
        return (
            f"opset {summary.get('opset', '-')}, parity vs {summary.get('parity_reference', 'source')}: "
            f"max abs diff {readable(summary.get('parity_max_abs_diff'))}, "
            f"min cosine {cosine_text(summary.get('parity_min_cosine'))}"
        )
    if name == "calibrate" and summary:
        return (
            f"{summary.get('method', '')} ({summary.get('backend', '')}): accuracy "
            f"{readable(summary.get('fp32_accuracy'))} -> {readable(summary.get('int8_accuracy'))} "
            f"(drop {readable(summary.get('accuracy_drop_points'))} pts), "
            f"layers kept in FP32: {readable(summary.get('excluded_layers'))}"
        )
    if name == "compile" and summary:
        built, skipped = summary.get("built") or [], summary.get("skipped") or []
        return f"built {', '.join(built) or 'none'}; {len(skipped)} skipped"
    if name == "select" and summary.get("selected"):
        return f"selected {summary['selected']} ({summary.get('policy', '')})"
    if name == "package" and summary:
        return (
            f"{summary.get('model_name', '')}: {summary.get('kind', '')} on {summary.get('backend', '')}, "
            f"{summary.get('instance_kind', '')}, max batch {readable(summary.get('max_batch_size'))}"
        )
    if name == "serve_check" and summary:
        verdict = str(summary.get("verdict", ""))
        gain = summary.get("dynamic_batching_gain")
        return verdict + (
            f"; dynamic batching gain {readable(gain)}x" if isinstance(gain, int | float) else ""
        )
    if name == "canary" and summary.get("decision"):
        return f"{summary['decision']} after {readable(summary.get('steps_analysed'))} analyses"
    if name == "deploy" and summary.get("endpoint"):
        where = ", ".join(
            f"{label} {summary[key]}"
            for label, key in (("machine", "machine_type"), ("replicas", "replicas"))
            if summary.get(key)
        )
        return (
            f"{summary.get('deploy', 'deployed')} {_last(summary.get('model_version')) or 'the model'} on "
            f"endpoint {_last(summary['endpoint'])}"
            + (f" ({where})" if where else "")
            + f", {readable(summary.get('traffic_percent'))}% traffic before the canary"
        )
    if name == "monitoring" and "alert_policies" in summary:
        return (
            f"{readable(summary['alert_policies'])} alert policies, "
            f"{readable(summary.get('notification_channels'))} notification channels, "
            f"dashboard {summary.get('dashboard') or 'none'}"
        )
    if name == "rollback" and summary.get("action"):
        return f"{summary['action']}: {stage.get('reason', '')}"
    return str(stage.get("reason", ""))


def _generation_headline(stage: str, summary: Mapping[str, Any]) -> str:
    """The export / calibration headline of a generation model: end-to-end caption figures."""
    if stage == "export":
        return (
            f"{readable(summary.get('parts'))} parts, opset {summary.get('opset', '-')}: max abs diff "
            f"{readable(summary.get('parity_max_abs_diff'))}; captions: ONNX Runtime exact match "
            f"{_percent(summary.get('fp32_onnx_exact_match'))} (PyTorch "
            f"{_percent(summary.get('pytorch_exact_match'))}), "
            f"agreement {_percent(summary.get('e2e_agreement'))}"
        )
    parts = ", ".join(summary.get("accepted_parts") or []) or "none"
    return (
        f"INT8 parts accepted: {parts}; captions exact match {_percent(summary.get('fp32_exact_match'))} -> "
        f"{_percent(summary.get('int8_exact_match'))} (drop {readable(summary.get('drop_points'))} pts, "
        f"agreement {_percent(summary.get('e2e_agreement'))})"
    )


def _accuracy_text(accuracy: Mapping[str, Any] | None) -> str:
    """Each output's metric and value against FP32, then the worst cosine."""
    if not accuracy:
        return "-"
    parts = []
    for out in accuracy.get("outputs") or []:
        value, fp32 = out.get("candidate_value"), out.get("fp32_value")
        text = f"{out.get('name')}: {out.get('metric')}"
        if value is not None:
            text += f" {readable(value)}" + (f" (FP32 {readable(fp32)})" if fp32 is not None else "")
        elif out.get("metric") == "cosine" and out.get("cosine_mean") is not None:
            text += f" {cosine_text(out['cosine_mean'])}"
        if out.get("drop_points") is not None:
            text += f", drop {readable(out['drop_points'])} pts"
        parts.append(text)
    if not all(out.get("metric") == "cosine" for out in accuracy.get("outputs") or []) or not parts:
        parts.append(f"cosine {cosine_text(accuracy.get('cosine_mean'))}")
    return "; ".join(parts)


def _speedup_text(speed: Mapping[str, Any] | None) -> str:
    if not speed:
        return "-"
    spread = f"{readable(float(speed['ratio_p25']))}-{readable(float(speed['ratio_p75']))}"
    if speed.get("verdict") == "not distinguishable":
        return f"~{readable(float(speed['ratio']))}x, not distinguishable ({spread})"
    return f"{readable(float(speed['ratio']))}x ({spread})"


def _batch_cell(lat: Mapping[str, Any] | None, not_measured: str = "") -> str:
    if not lat:
        return f"not measured: {not_measured}" if not_measured else "-"
    return (
        f"{readable(lat['p50_ms'])} / {readable(lat['p99_ms'])} ms, {readable(lat['throughput'])}/s, "
        f"IQR {lat['iqr_pct']:.0f}%"
    )


def candidate_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The candidates table: name first, accuracy per metric, every batch size with its spread."""
    batches = [int(b) for b in report.get("batch_sizes") or []]
    rows = []
    for cand in report.get("candidates") or []:
        latency, speedup = cand.get("latency") or {}, cand.get("speedup") or {}
        not_measured = cand.get("not_measured") or {}
        row: dict[str, Any] = {
            "candidate": f"**{cand['name']}**" if cand["status"] == "selected" else cand["name"],
            "status": cand["status"],
            "runtime": f"{cand.get('runtime', '')} {cand.get('precision', '')} on {cand.get('device', '')}",
            "accuracy": "reference" if cand.get("reference") else _accuracy_text(cand.get("accuracy")),
        }
        for b in batches:
            row[f"batch {b}: p50 / p99, samples/s, spread"] = _batch_cell(
                latency.get(str(b)), str(not_measured.get(str(b), ""))
            )
        for b in batches:
            row[f"vs {report.get('reference') or 'reference'} b{b}"] = (
                "1.00x" if cand.get("reference") else _speedup_text(speedup.get(str(b)))
            )
        row["reason"] = cand.get("reason", "")
        rows.append(row)
    return rows


def _deployed(report: Mapping[str, Any]) -> bool:
    return bool(((report.get("cloud") or {}).get("deploy") or {}).get("status", "not run") != "not run")


def _stage_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in report.get("stages") or []:
        # The exit handler of a run that deployed nothing has nothing to say (and runs after the
        # pipeline's own report task, whose page would otherwise differ from the local one).
        if s["stage"] == "rollback" and (s["status"] == "not run" or not _deployed(report)):
            continue
        rows.append(
            {
                "stage": s["stage"],
                "status": s["status"],
                "seconds": "" if s.get("duration_s") is None else f"{float(s['duration_s']):.1f}",
                "headline": stage_headline(s),
            }
        )
    return rows


def _quantization_section(quant: Mapping[str, Any]) -> Section | None:
    if not quant or "method" not in quant:
        return None
    excluded = quant.get("excluded_layer_names") or []
    lines = [
        f"Method **{quant.get('method')}** on {quant.get('backend', '')}, "
        f"operators {quant.get('operators', 'all')}, "
        f"{readable(quant.get('calibration_samples'))} calibration samples, "
        f"{readable(quant.get('eval_samples'))} evaluation samples; "
        + ("accepted." if quant.get("accepted") else f"not accepted: {quant.get('reason', '')}"),
        "",
        "Layers kept in FP32: " + (", ".join(f"`{n}`" for n in excluded) if excluded else "none") + ".",
        "",
    ]
    steps = quant.get("steps") or []
    if steps:
        lines += [_table([{k.replace("_", " "): v for k, v in s.items()} for s in steps])]
    if quant.get("dynamic_accepted") is not None:
        lines += [
            f"Dynamic INT8: {'accepted' if quant['dynamic_accepted'] else 'rejected'}, "
            f"min cosine {cosine_text(quant.get('dynamic_min_cosine'))}.",
            "",
        ]
    return Section("INT8 calibration", "\n".join(lines))


def _parity_section(export: Mapping[str, Any]) -> Section | None:
    parity = export.get("parity") or []
    if not parity:
        return None
    rows = [
        {
            "output": p.get("name"),
            "shape": "x".join(str(d) for d in p.get("shape") or []),
            "max abs diff": readable(p.get("max_abs_diff")),
            "max rel diff": readable(p.get("max_rel_diff")),
            "mean cosine": cosine_text(p.get("cosine_mean")),
            "min cosine": cosine_text(p.get("cosine_min")),
            "top-1 agreement": readable(p.get("top1_agreement")),
            "mismatched": readable(p.get("mismatched")),
        }
        for p in parity
    ]
    head = (
        f"ONNX (opset {export.get('opset', '-')}) against "
        f"{export.get('parity_reference', 'the source model')} "
        f"on {readable(export.get('parity_samples'))} samples, per output:"
    )
    return Section("Export parity", head + "\n\n" + _table(rows))


def _serve_section(serve: Mapping[str, Any]) -> Section | None:
    if not serve or serve.get("status") == "not run":
        return None
    lines = [
        f"Status **{serve.get('status')}**" + (f": {serve['reason']}" if serve.get("reason") else "."),
        "",
    ]
    levels = serve.get("levels") or []
    figures = {
        k: v
        for k, v in serve.items()
        if k not in ("status", "reason", "substitutions", "errors", "sweep", "mode", "verdict", "generation")
        and k not in (("replicas", "cost_per_1000_generations") if serve.get("generation_cost") else ())
        and not isinstance(v, dict | list)
        and not (levels and re.fullmatch(r"p(50|95)_ms_c\d+", k))  # in the levels table below
    }
    if serve.get("generation"):
        lines += [_served_generator_line(serve), ""]
    if figures:
        lines += [
            _table(
                [{"figure": k.replace("_", " "), "value": v} for k, v in figures.items()], ["figure", "value"]
            )
        ]
    subs = serve.get("substitutions") or []
    if subs:
        lines += ["Substitutions (what the local check served differently from production):", ""]
        lines += [f"- {s}" for s in subs] + [""]
    errors = serve.get("errors") or []
    if errors:
        lines += ["Errors:", ""] + [f"- {e}" for e in errors] + [""]
    if levels:
        lines += [
            "Streamed generations, end to end (send to final response); after the first pass the images "
            "repeat, so the vision encoder answers from its response cache:",
            "",
            _table(
                [
                    {
                        "concurrency": lv.get("concurrency"),
                        "generations": lv.get("generations"),
                        "p50 ms": lv.get("p50_ms"),
                        "p95 ms": lv.get("p95_ms"),
                        "TTFT p50 ms": lv.get("ttft_p50_ms"),
                        "TTFT p95 ms": lv.get("ttft_p95_ms"),
                        "generations/s": lv.get("generations_per_s"),
                    }
                    for lv in levels
                ]
            ),
        ]
    generation_cost = serve.get("generation_cost") or {}
    if generation_cost.get("markdown"):
        per_1000 = generation_cost.get("cost_per_1000_generations")
        lines += [
            f"Cost of serving the generator: {generation_cost.get('replicas')} replica(s), "
            + ("not priced" if per_1000 is None else f"**USD {readable(per_1000)} per 1,000 generations**")
            + f" at {generation_cost.get('concurrency')} concurrent streams per replica "
            "(targets: `service_levels.ttft_p95_ms`, `generation_p50_ms`, `generation_p95_ms`):",
            "",
            str(generation_cost["markdown"]),
            "",
        ]
    sweep = serve.get("sweep") or {}
    points = sweep.get("points") or []
    if points:
        lines += [
            f"Sweep of `{sweep.get('model', '')}` ({sweep.get('measured_with', '')}, "
            f"{readable(sweep.get('window_s'))} s per point):",
            "",
            _table(
                [
                    {
                        "batching": p.get("batching"),
                        "clients": p.get("concurrency"),
                        "infer/s": p.get("throughput_rps"),
                        "p50 ms": p.get("p50_ms"),
                        "p95 ms": p.get("p95_ms"),
                        "p99 ms": p.get("p99_ms"),
                        "avg batch": p.get("avg_batch"),
                        "queue ms": p.get("queue_ms"),
                        "errors": p.get("errors"),
                    }
                    for p in points
                ]
            ),
        ]
        if sweep.get("gain") is not None:
            lines += [f"Dynamic batching gain: **{sweep['gain']:.2f}x** ({sweep.get('gain_basis', '')}).", ""]
    return Section("Serve check", "\n".join(lines), figure="serve_sweep")


def _served_generator_line(serve: Mapping[str, Any]) -> str:
    """The served generator's headline: streamed through gRPC from the real Triton repository."""
    parts = [
        f"TTFT **{readable(serve.get('ttft_ms'))} ms**",
        f"**{readable(serve.get('tokens_per_s'))} tokens/s** per stream",
        f"vision encode {readable(serve.get('encode_ms'))} ms",
    ]
    if serve.get("p50_ms") is not None:
        parts.append(
            f"end to end p50 {readable(serve.get('p50_ms'))} ms / p95 {readable(serve.get('p95_ms'))} ms"
        )
    line = (
        f"Served generator `{serve.get('model', '')}` (BLS, decoupled, streamed through gRPC): "
        + ", ".join(parts)
    )
    if serve.get("served_exact") is not None:
        line += f"; served exact caption match {_percent(serve['served_exact'])}"
    if serve.get("agreement_reference") is not None:
        line += f", captions identical to the PyTorch reference {_percent(serve['agreement_reference'])}"
    return line + "."


def _canary_section(canary: Mapping[str, Any]) -> Section | None:
    if canary.get("status", "not run") == "not run":
        return None
    lines = [
        f"Decision **{canary.get('decision', canary.get('status'))}**"
        + (f": {canary['reason']}" if canary.get("reason") else "."),
        "",
    ]
    smoke = canary.get("smoke_test") or {}
    if smoke:
        if smoke.get("skipped_reason"):
            lines += [f"Smoke test skipped: {smoke['skipped_reason']}.", ""]
        else:
            lines += [
                f"Smoke test: {smoke.get('succeeded', 0)}/{smoke.get('requests', 0)} requests succeeded.",
                "",
            ]
    steps = canary.get("steps") or []
    if steps:
        lines += [_table(steps, [*CANARY_COLUMNS, *(c for c in steps[0] if c not in CANARY_COLUMNS)])]
    if canary.get("final_split"):
        lines += [f"Final traffic split: {canary['final_split']}.", ""]
    return Section("Canary", "\n".join(lines), figure="canary")


def report_sections(report: Mapping[str, Any]) -> list[Section]:
    """The page's sections in reading order, each with the picture that goes below it."""
    sections: list[Section] = []
    head = [
        f"Status: **{report['status']}**" + (f" in {report['wall_s']:.1f} s" if report.get("wall_s") else "")
    ]
    model = report.get("model") or {}
    if model.get("model_uri"):
        head.append(f"Model: `{model['model_uri']}` ({model.get('format', '')})")
    if report.get("error"):
        head.append(f"Error: {report['error']}")
    if report.get("selected"):
        head.append(f"Selected: **{report['selected']}**: {report.get('selection_reason', '')}")
    body = plain_numbers("\n\n".join(head)) + "\n"
    if report.get("failed_log"):
        body += f"\nLog of the failing task: `{report['failed_log']}`\n"
        tail = report.get("failed_log_tail") or []
        if tail:
            body += "\n```\n" + "\n".join(tail) + "\n```\n"
    sections.append(Section(f"vxdeploy run `{report['run_id']}`", body, level=1))
    sections.append(
        Section("Stages", _table(_stage_rows(report), ["stage", "status", "seconds", "headline"]))
    )
    for section in (
        _parity_section(report.get("export") or {}),
        _quantization_section(report.get("quantization") or {}),
    ):
        if section is not None:
            sections.append(section)
    if report.get("candidates"):
        policy = report.get("selection_policy") or ""
        text = (
            f"Measured against `{report.get('reference', '')}` at batch sizes "
            f"{', '.join(str(b) for b in report.get('batch_sizes') or [])}"
            + (f", policy {policy}" if policy else "")
            + ". Each batch: median / p99 latency, samples per second at the median, and the spread "
            "(interquartile range relative to the median). Speed-ups come with their interquartile "
            "range over interleaved rounds.\n\n"
        )
        sections.append(Section("Candidates", text + _table(candidate_rows(report)), figure="latency"))
    sections += generation_sections(report.get("generation") or {})
    skipped = report.get("skipped_candidates") or []
    if skipped:
        sections.append(Section("Candidates not built", _table(skipped, ["name", "kind", "reason"]), level=3))
    if report.get("candidates"):
        sections.append(Section("Accuracy and throughput", _tradeoff_text(report), figure="tradeoff"))
    serve = _serve_section(report.get("serve_check") or {})
    if serve is not None:
        sections.append(serve)
    cost = report.get("cost")
    if isinstance(cost, dict) and cost.get("markdown"):
        basis = report.get("cost_basis") or ""
        sections.append(
            Section("Cost", (f"Priced from {basis} throughput.\n\n" if basis else "") + cost["markdown"])
        )
    canary = _canary_section((report.get("cloud") or {}).get("canary") or {})
    if canary is not None:
        sections.append(canary)
    cloud_rows = [
        {
            "stage": name,
            "status": v.get("status"),
            "outcome": stage_headline({"stage": name, **v, "summary": v}),
        }
        for name, v in (report.get("cloud") or {}).items()
    ]
    if _deployed(report):
        sections.append(Section("Cloud", _table(cloud_rows, ["stage", "status", "outcome"])))
    found = report.get("caveats") or []
    sections.append(
        Section(
            "Caveats", "\n".join(f"- {c}" for c in found) + "\n" if found else "None found in this run.\n"
        )
    )
    # Stages' sentences carry figures formatted their way; the page shows them as its own.
    for section in sections[1:]:
        section.body = plain_numbers(section.body)
    return sections


def _percent(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{100.0 * float(value):.1f}%"


def _columns(rows: Sequence[Mapping[str, Any]], first: Sequence[str], last: Sequence[str]) -> list[str]:
    """Column order of rows read back from JSON (keys sorted there): ``first``, the others, ``last``."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    middle = [k for k in keys if k not in first and k not in last]
    return [k for k in first if k in keys] + middle + [k for k in last if k in keys]


def generation_sections(generation: Mapping[str, Any]) -> list[Section]:
    """A generation model's selection: per-part decisions, end-to-end figures, each part's candidates."""
    if not generation:
        return []
    decisions = [
        {k: v for k, v in row.items() if k != "candidates"} for row in generation.get("decisions") or []
    ]
    columns = _columns(decisions, ("part", "role", "selected", "precision", "device"), ("why",))
    lines = [_table(decisions, columns)]
    for fallback in generation.get("fallbacks") or []:
        lines.append(f"- Fallback: {fallback.get('reason', '')}")
    sections = [Section("Generation: per-part decisions", "\n".join(lines) + "\n", figure="generation_parts")]
    e2e = generation.get("end_to_end") or {}
    if e2e:
        fp32 = e2e.get("fp32") or {}
        rows = [
            {
                "parts": label,
                "caption exact match": _percent(exact),
                "agreement with FP32": _percent(agree),
                "encode": _ms(fig.get("encode_ms")),
                "TTFT": _ms(fig.get("ttft_ms")),
                "tokens/s": readable(fig.get("tokens_per_s")),
                "p50 / p95 per generation": f"{_ms(fig.get('p50_ms'))} / {_ms(fig.get('p95_ms'))}",
                "captions/s": readable(fig.get("captions_per_s")),
            }
            for label, exact, agree, fig in (
                ("FP32 everywhere", e2e.get("fp32_exact"), 1.0, fp32),
                ("selected", e2e.get("selected_exact"), e2e.get("agreement"), e2e),
            )
        ]
        head = (
            f"Captions of {readable(e2e.get('samples'))} evaluation images; timing "
            f"{e2e.get('measured', '')}; captions/s at batch {readable(e2e.get('batch'))}. "
            f"Drop {readable(e2e.get('drop_points'))} points ({e2e.get('drop_basis', '')}).\n\n"
        )
        sections.append(Section("Generation: end to end", head + _table(rows)))
    for part, facts in generation_parts_in_run_order(generation).items():
        rows = [{k: v for k, v in row.items() if k != "drop_basis"} for row in facts.get("candidates") or []]
        first = ("name", "status", "runtime", "precision", "device", "drop_points", "cosine", "judged_by")
        sections.append(
            Section(
                f"Part {part} ({facts.get('role', '')}): candidates",
                f"Selected **{facts.get('selected', '')}**; batch sizes "
                f"{', '.join(str(b) for b in facts.get('batch_sizes') or [])}, against "
                f"`{facts.get('reference', '')}`.\n\n" + _table(rows, _columns(rows, first, ("reason",))),
                level=3,
            )
        )
    return sections


def _tradeoff_text(report: Mapping[str, Any]) -> str:
    budget = report.get("accuracy_budget")
    return (
        "Each measured candidate's accuracy (by the model's metric) against its best throughput"
        + (
            f"; the accuracy budget allows a drop of {readable(budget)} points from FP32"
            if budget is not None
            else ""
        )
        + ".\n"
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the sections as Markdown (the HTML page adds the pictures)."""
    out = []
    for section in report_sections(report):
        out.append(f"{'#' * section.level} {section.title}\n\n{section.body.rstrip()}\n")
    return "\n".join(out)


def figure_data(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the pictures are drawn from, by picture name (empty when the run did not measure it)."""
    canary = (report.get("cloud") or {}).get("canary") or {}
    return {
        "latency": report.get("candidates") or [],
        "tradeoff": report.get("candidates") or [],
        "serve_sweep": ((report.get("serve_check") or {}).get("sweep") or {}).get("points") or [],
        "canary": canary.get("analyses") or [],
        "generation_parts": generation_parts_in_run_order(report.get("generation") or {}),
    }


def generation_parts_in_run_order(generation: Mapping[str, Any]) -> dict[str, Any]:
    """``generation.parts`` in run order (JSON sorts the keys; the decision rows keep the order)."""
    parts = generation.get("parts") or {}
    order = [str(row.get("part")) for row in generation.get("decisions") or [] if row.get("part") in parts]
    return {p: parts[p] for p in order + [p for p in parts if p not in order]}


def iter_batches(candidate: Mapping[str, Any]) -> Iterable[tuple[int, Mapping[str, Any]]]:
    """A candidate's latency figures by batch size, smallest first."""
    for batch, lat in sorted((candidate.get("latency") or {}).items(), key=lambda kv: int(kv[0])):
        yield int(batch), lat
