"""The whole pipeline under kfp.local on the embedded digits model: artifacts flow between real tasks.

One run serves every test here (a run takes minutes): its stages, its reports and their pictures,
the pipeline's HTML artifact and the terminal lines.
"""

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from vxdeploy.components.common.config import load_config
from vxdeploy.pipelines.local_run import LocalRunResult, print_result, run_local, summary_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> LocalRunResult:
    config = load_config(
        overrides={
            "selection.batch_sizes": [1, 8],
            "selection.min_iterations": 5,
            "selection.min_seconds": 0.05,
            "triton.serve_check_sweep": [1, 4],
            "triton.serve_check_sweep_window_s": 0.5,
        }
    )
    terminal = io.StringIO()  # not a terminal: plain lines, as in CI or a pipe
    result = run_local(config, tmp_path_factory.mktemp("run"), skip_preflight=True, terminal=terminal)
    print_result(result, out=terminal)
    (result.workdir / "terminal.txt").write_text(terminal.getvalue())
    return result


def _stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["stage"] == name)


def test_every_local_stage_succeeds_and_cloud_stages_do_not_run(digits_run: LocalRunResult) -> None:
    statuses = {s["stage"]: s["status"] for s in digits_run.report["stages"]}

    assert digits_run.succeeded, digits_run.report["error"]
    for stage in ("intake", "export", "calibrate", "compile", "select", "package", "serve_check"):
        assert statuses[stage] == "succeeded", (stage, _stage(digits_run.report, stage))
    assert statuses["deploy"] == "not run"


def test_report_names_the_selected_candidate_among_measured_ones(digits_run: LocalRunResult) -> None:
    report = digits_run.report
    measured = {c["name"] for c in report["candidates"]}

    assert report["selected"] in measured
    assert report["selection_reason"]


def test_int8_accuracy_on_digits_is_real_and_within_budget(digits_run: LocalRunResult) -> None:
    quant = digits_run.report["quantization"]

    # percent of held-out digits classified right; the budget is 0.5 points
    assert quant["fp32_accuracy"] > 90
    assert quant["fp32_accuracy"] - quant["int8_accuracy"] <= 0.5


def test_triton_repository_is_written_and_served(digits_run: LocalRunResult) -> None:
    repo = Path(digits_run.report["triton_repository"])
    serve = digits_run.report["serve_check"]

    assert any(repo.rglob("config.pbtxt"))
    assert serve["status"] == "succeeded"
    assert serve["executions"] < serve["requests"]


def test_the_serve_check_states_its_substitutions_and_its_sweep(digits_run: LocalRunResult) -> None:
    serve = _stage(digits_run.report, "serve_check")
    markdown = digits_run.report_md.read_text()

    assert serve["reason"].startswith("passed with substitutions: ")
    assert "KIND_GPU -> KIND_CPU" in serve["reason"]
    assert "passed with substitutions:" in summary_table(digits_run.report)
    assert digits_run.report["serve_check"]["sent"] == digits_run.report["serve_check"]["requests"]
    assert "| batching | clients | infer/s |" in markdown and "Dynamic batching gain" in markdown
    assert "via Triton (dynamic batching on)" in digits_run.report["cost"]["markdown"]


def test_reports_are_written_as_json_and_markdown(digits_run: LocalRunResult) -> None:
    assert digits_run.report_json.is_file()
    assert "## Stages" in digits_run.report_md.read_text()


def test_a_failing_stage_fails_the_run_and_still_writes_the_report(tmp_path: Path) -> None:
    config = load_config(overrides={"export.atol": 1e-12, "export.rtol": 1e-12, "export.min_cosine": 1.0})

    result = run_local(config, tmp_path, skip_preflight=True)

    assert not result.succeeded
    assert _stage(result.report, "export")["status"] in ("failed", "not run")
    assert _stage(result.report, "calibrate")["status"] == "not run"
    assert result.report_json.is_file()


def test_the_terminal_shows_each_stage_as_it_starts_in_under_60_plain_lines(
    digits_run: LocalRunResult,
) -> None:
    terminal = (digits_run.workdir / "terminal.txt").read_text()
    lines = terminal.splitlines()
    ran = [s["stage"] for s in digits_run.report["stages"] if s["status"] != "not run"]

    assert len(lines) < 60, terminal
    started = [line.split()[0] for line in lines if line.endswith(" started")]
    assert [stage for stage in started if stage in ran] == ran
    assert "executor_input" not in terminal and '"parameterValues"' not in terminal
    assert "\x1b" not in terminal
    assert "Got executor_input" in (digits_run.workdir / "logs" / "select-candidate.log").read_text()


def _pictures(html: str) -> list[tuple[str, str]]:
    """(name, base64 PNG) of each embedded picture."""
    return re.findall(
        r'<figure id="figure-([a-z_]+)"><img alt="[^"]+" src="data:image/png;base64,([^"]+)"', html
    )


def test_report_html_of_a_local_run_has_its_three_pictures_and_every_batch(
    digits_run: LocalRunResult,
) -> None:
    assert digits_run.succeeded, digits_run.report["error"]
    page = Path(digits_run.report["files"]["html"]).read_text()
    report = json.loads(digits_run.report_json.read_text())

    # a run that did not deploy has no canary picture
    assert [name for name, _ in _pictures(page)] == ["latency", "tradeoff", "serve_sweep"]
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for _, data in _pictures(page))
    latency = {c["name"]: sorted(c["latency"]) for c in report["candidates"] if c.get("latency")}
    assert {"pytorch_eager", "onnxruntime_fp32", "onnxruntime_int8"} <= set(latency)
    assert all(batches == ["1", "8"] for batches in latency.values()), latency


def test_the_pipelines_html_artifact_is_the_report_page(digits_run: LocalRunResult) -> None:
    task_dir = Path(digits_run.report["stages"][0]["artifacts"]).parent / "write-run-report"
    artifact = (task_dir / "html").read_text()
    local = Path(digits_run.report["files"]["html"]).read_text()

    # the same pictures and sections; only the run's own facts (wall time) differ in the head
    assert [name for name, _ in _pictures(artifact)] == [name for name, _ in _pictures(local)]
    assert artifact.split("<h2>Stages</h2>")[1] == local.split("<h2>Stages</h2>")[1]
