"""A real local run's reports: report.html with the pictures that apply, and the pipeline's HTML artifact."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from vxdeploy.components.common.config import load_config
from vxdeploy.pipelines.local_run import LocalRunResult, run_local

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> LocalRunResult:
    config = load_config(
        overrides={
            "compilation.candidates": ["onnxruntime_fp32", "onnxruntime_int8"],
            "selection.batch_sizes": [1, 8],
            "selection.min_iterations": 5,
            "selection.min_seconds": 0.05,
            "triton.serve_check_sweep": [1, 4],
            "triton.serve_check_sweep_window_s": 0.5,
        }
    )
    return run_local(config, tmp_path_factory.mktemp("run"), skip_preflight=True)


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
    assert {c["name"]: sorted(c["latency"]) for c in report["candidates"]} == {
        "pytorch_eager": ["1", "8"],
        "onnxruntime_fp32": ["1", "8"],
        "onnxruntime_int8": ["1", "8"],
    }


def test_the_pipelines_html_artifact_is_the_report_page(digits_run: LocalRunResult) -> None:
    task_dir = Path(digits_run.report["stages"][0]["artifacts"]).parent / "write-run-report"
    artifact = (task_dir / "html").read_text()
    local = Path(digits_run.report["files"]["html"]).read_text()

    # the same pictures and sections; only the run's own facts (wall time) differ in the head
    assert [name for name, _ in _pictures(artifact)] == [name for name, _ in _pictures(local)]
    assert artifact.split("<h2>Stages</h2>")[1] == local.split("<h2>Stages</h2>")[1]
