"""The run report: every figure in report.json, a page a person reads (report.md), pictures (report.html)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.unit.report_support import BATCHES, NOT_COSTED, SUBSTITUTION, stage_reports
from vxdeploy.components.report.build import SCHEMA_VERSION, build_report, readable, render_markdown
from vxdeploy.components.report.html import render_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _report(**kwargs: Any) -> dict[str, Any]:
    return build_report(
        stage_reports(**kwargs), run_id="run-1", config={"selection": {"accuracy_budget": 0.5}}, wall_s=12.0
    )


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return _report()


@pytest.fixture(scope="module")
def markdown(report: dict[str, Any]) -> str:
    return render_markdown(report)


@pytest.fixture(scope="module")
def page(report: dict[str, Any]) -> str:
    return render_html(report)


def _section(markdown: str, title: str) -> str:
    """A section's text up to the next heading of its level or above (its own subheadings kept)."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", markdown, re.M)
    assert match, f"no section {title!r}"
    end = re.compile(rf"^#{{1,{len(match.group(1))}}} ", re.M).search(markdown, match.end())
    return markdown[match.end() : end.start() if end else len(markdown)]


def _table_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split(" | ")]
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]


# --- report.json -------------------------------------------------------------------------------


def test_json_keeps_every_batch_size_and_spread_of_every_candidate(report: dict[str, Any]) -> None:
    data = json.loads(json.dumps(report))
    candidates = {c["name"]: c for c in data["candidates"]}

    assert data["schema_version"] == SCHEMA_VERSION
    assert set(candidates) == {"pytorch_eager", "onnxruntime_fp32", "onnxruntime_int8", "aoti_cpu"}
    for cand in candidates.values():
        assert sorted(int(b) for b in cand["latency"]) == list(BATCHES), cand["name"]
        assert all({"p50_ms", "p99_ms", "iqr_pct", "throughput"} <= set(v) for v in cand["latency"].values())
    assert sorted(int(b) for b in candidates["aoti_cpu"]["speedup"]) == list(BATCHES)
    assert candidates["aoti_cpu"]["latency"]["8"]["iqr_pct"] == pytest.approx(365.6)
    assert candidates["onnxruntime_int8"]["accuracy"]["outputs"][0]["metric"] == "top1_accuracy"


def test_json_keeps_per_output_parity_and_the_serve_sweep(report: dict[str, Any]) -> None:
    assert [p["name"] for p in report["export"]["parity"]] == ["output", "embedding"]
    assert len(report["serve_check"]["sweep"]["points"]) == 6
    assert report["stage_reports"]["select"]["details"]["benchmark"]["batch_sizes"] == list(BATCHES)


def test_a_candidate_not_built_is_listed_once_among_the_skipped(
    report: dict[str, Any], markdown: str
) -> None:
    assert "tensorrt_fp16" not in {c["name"] for c in report["candidates"]}
    assert [s["name"] for s in report["skipped_candidates"]] == ["tensorrt_fp16"]
    assert markdown.count("| tensorrt_fp16 |") == 1


# --- report.md ---------------------------------------------------------------------------------


def test_figures_read_without_scientific_notation_and_with_thousands_separators(markdown: str) -> None:
    assert not re.search(r"\de\+\d", markdown)
    assert "24,510/s" in markdown  # onnxruntime_fp32 at batch 1
    assert "14,660 samples/s" in markdown  # the selection's "1.466e+04 samples/s"
    assert (readable(24507.1), readable(0.0408), readable(5.72e-06), readable(3)) == (
        "24,507",
        "0.0408",
        "5.7e-06",
        "3",
    )


def test_candidates_table_names_first_and_shows_every_batch_size(markdown: str) -> None:
    rows = _table_rows(_section(markdown, "Candidates").split("### ")[0])

    assert rows[0][:2] == ["candidate", "status"]
    assert [h for h in rows[0] if h.startswith("batch ")] == [
        f"batch {b}: p50 / p99, samples/s, spread" for b in BATCHES
    ]
    assert [r[0] for r in rows[1:]] == [
        "pytorch_eager",
        "onnxruntime_fp32",
        "onnxruntime_int8",
        "**aoti_cpu**",
    ]
    assert "IQR 366%" in markdown and "~1.05x, not distinguishable (0.68-1.33)" in markdown


def test_no_table_has_a_column_empty_in_every_row(markdown: str) -> None:
    tables = re.findall(r"((?:^\|.*\|\n)+)", markdown, re.M)

    assert len(tables) >= 8
    for table in tables:
        rows = _table_rows(table)
        for i, header in enumerate(rows[0]):
            assert any(r[i] not in ("", "-") for r in rows[1:]), (header, table)


def test_int8_table_gives_method_excluded_layers_and_accuracy_per_metric(markdown: str) -> None:
    int8 = _section(markdown, "INT8 calibration")

    assert "Method **entropy**" in int8 and "Layers kept in FP32: `/fc/Gemm`." in int8
    header = _table_rows(int8)[0]
    assert {"fp32 accuracy %", "int8 accuracy %", "drop points", "min cosine"} <= set(header)


def test_export_parity_has_a_row_per_output(markdown: str) -> None:
    rows = _table_rows(_section(markdown, "Export parity"))

    assert [r[0] for r in rows[1:]] == ["output", "embedding"]


def test_serve_check_shows_its_substitutions_and_sweep(markdown: str) -> None:
    serve = _section(markdown, "Serve check")

    assert f"- {SUBSTITUTION}" in serve
    assert "| batching | clients | infer/s |" in serve and "Dynamic batching gain: **5.15x**" in serve


def test_the_100_percent_step_does_not_repeat_the_50_percent_baseline(markdown: str) -> None:
    rows = _table_rows(_section(markdown, "Canary"))
    header, last = rows[0], rows[-1]

    assert last[header.index("canary %")] == "100"
    assert [
        last[header.index(c)] for c in ("baseline requests", "baseline error rate", "baseline p99 ms")
    ] == [
        "-",
        "-",
        "-",
    ]
    assert "compared with step 3's baseline" in last[header.index("reason")]


def test_caveats_name_noise_substitutions_and_what_was_not_costed(markdown: str) -> None:
    caveats = _section(markdown, "Caveats")

    assert "aoti_cpu at batch 8 (366%)" in caveats
    assert "not distinguishable from pytorch_eager: aoti_cpu at batch 32" in caveats
    assert SUBSTITUTION in caveats and NOT_COSTED in caveats
    assert "serving image not checked" in caveats
    assert "Replicas = ceil" not in caveats  # a method note, shown under the cost table only


def test_cost_section_carries_the_stage_cost_table(markdown: str) -> None:
    assert "| aoti_cpu | $0.2185 |" in _section(markdown, "Cost")


def test_a_rolled_back_run_reports_the_decision_and_the_failed_step() -> None:
    markdown = render_markdown(_report(rolled_back=True))
    canary = _section(markdown, "Canary")

    assert "Decision **rolled_back**" in canary
    assert "| fail |" in canary


# --- report.html -------------------------------------------------------------------------------


class _Page(HTMLParser):
    """What a browser would fetch or run: images, tables, scripts, external references."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables = 0
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values)
        self.tables += tag == "table"
        self.scripts += tag == "script"
        for key in ("src", "href"):
            if values.get(key) and not values[key].startswith(("data:", "#")):
                self.external.append(values[key])


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def test_html_embeds_the_four_pictures_as_decodable_pngs_beside_the_tables(page: str, markdown: str) -> None:
    parsed = _parse(page)

    assert len(parsed.images) == 4
    for img in parsed.images:
        head, _, data = img["src"].partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(data, validate=True).startswith(PNG_SIGNATURE)
        assert img["alt"]
    assert parsed.tables == len(re.findall(r"^\|---", markdown, re.M))
    assert parsed.scripts == 0 and parsed.external == []


def test_html_shows_only_the_pictures_that_apply_to_the_run() -> None:
    reports = stage_reports(deployed=False)
    del reports["serve_check"]
    report = build_report(reports, run_id="run-2")

    ids = re.findall(r'<figure id="figure-([a-z_]+)"', render_html(report))

    assert ids == ["latency", "tradeoff"]


def _browser() -> str | None:
    return next(
        (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
        None,
    )


_PROBE = (
    "<script>window.addEventListener('load', function () {"
    " var imgs = [].slice.call(document.images);"
    " document.body.setAttribute('data-probe', JSON.stringify({images: imgs.length,"
    " decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,"
    " tables: document.querySelectorAll('table').length})); });</script>"
)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (Debian: apt-get install chromium)")
def test_a_real_browser_decodes_every_picture_and_lays_out_the_tables(page: str, tmp_path: Path) -> None:
    # The probe script is added to a copy only: the page itself carries none (the console forbids it).
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))

    dom = subprocess.run(
        [str(_browser()), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    match = re.search(r'data-probe="([^"]*)"', dom)

    assert match, dom[-2000:]
    seen = json.loads(match.group(1).replace("&quot;", '"'))
    assert seen == {"images": 4, "decoded": 4, "tables": _parse(page).tables}


def test_a_model_judged_by_cosine_alone_gets_its_accuracy_picture_on_that_scale() -> None:
    # Given an embedding model without labels: each output is judged by cosine similarity only
    reports = stage_reports(deployed=False)
    for figure in reports["select"]["details"]["benchmark"]["figures"]:
        for out in (figure.get("accuracy") or {}).get("outputs") or []:
            out.update(
                name="embedding",
                metric="cosine",
                candidate_value=None,
                fp32_value=None,
                drop_points=None,
                cosine_mean=figure["accuracy"]["cosine_mean"],
            )
    report = build_report(reports, run_id="run-3", config={"selection": {"min_cosine": 0.99}})

    # When the report is written
    markdown, ids = render_markdown(report), re.findall(r'id="figure-([a-z_]+)"', render_html(report))

    # Then accuracy reads as the cosine per output, and the trade-off is still drawn
    assert "| embedding: cosine 0.999600 |" in markdown
    assert "tradeoff" in ids
