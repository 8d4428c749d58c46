"""The GPU check script's CPU dry run: every model measured, CUDA-only runners skipped with the reason.

The script (``benchmarks/gpu_check.py``) runs for real only on a lent GPU machine; this dry run is
how it is known to work before one is lent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import MODELS, RUNNER_NAMES, compare  # noqa: E402


def run_gpu_check(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def dry_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu-check")
    proc = run_gpu_check(out, "--quick", timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    return proc, data, (out / "gpu_check.md").read_text()


def result(data: dict[str, Any], model: str, runner: str, batch: int) -> dict[str, Any]:
    (row,) = [r for r in data["results"] if (r["model"], r["runner"], r["batch"]) == (model, runner, batch)]
    assert isinstance(row, dict)
    return row


def test_dry_run_measures_every_model_in_eager_fp32_at_every_batch(
    dry_run: tuple[subprocess.CompletedProcess[str], dict[str, Any], str],
) -> None:
    _, data, _ = dry_run

    assert data["finished"] and data["device"] == "cpu" and data["settings"]["batches"] == [1, 2]
    for model in MODELS:
        assert data["models"][model]["status"] == "ready"
        for batch in (1, 2):
            row = result(data, model, "eager_fp32", batch)
            assert row["status"] == "ok" and row["throughput_median"] > 0, row
            assert row["throughput_q1"] <= row["throughput_median"] <= row["throughput_q3"]


def test_bf16_autocast_is_compared_with_fp32_and_differs_from_it(
    dry_run: tuple[subprocess.CompletedProcess[str], dict[str, Any], str],
) -> None:
    _, data, _ = dry_run

    acc = result(data, "digits", "autocast_bf16", 2)["accuracy"]

    assert 0 < acc["max_abs_diff"] < 0.5 and acc["cosine_min"] > 0.99 and acc["top1_agreement"] == 1.0


def test_torch_compile_matches_eager_fp32(
    dry_run: tuple[subprocess.CompletedProcess[str], dict[str, Any], str],
) -> None:
    _, data, _ = dry_run

    for batch in (1, 2):
        row = result(data, "digits", "compile_default", batch)
        assert row["status"] == "ok", row
        assert row["accuracy"]["max_abs_diff"] < 1e-4 and "speedup_vs_eager_fp32" in row


def test_cuda_only_runners_are_skipped_with_the_reason(
    dry_run: tuple[subprocess.CompletedProcess[str], dict[str, Any], str],
) -> None:
    _, data, _ = dry_run

    for runner in ("eager_tf32", "compile_max_autotune"):
        row = result(data, "resnet50", runner, 1)
        assert row["status"] == "skipped" and "CUDA only" in row["reason"]


def test_report_table_has_a_row_per_model_and_runner_and_progress_is_printed(
    dry_run: tuple[subprocess.CompletedProcess[str], dict[str, Any], str],
) -> None:
    proc, _, markdown = dry_run

    for model in MODELS:
        for runner in RUNNER_NAMES:
            assert f"| {model} | {runner} |" in markdown
    assert "quick dry run" in markdown
    assert "digits eager_fp32 b1:" in proc.stdout and "done:" in proc.stdout


def test_run_out_of_time_records_what_it_skipped_and_fails(tmp_path: Path) -> None:
    proc = run_gpu_check(tmp_path, "--quick", "--budget-s", "0", timeout=60)

    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 1
    assert data["finished"] and not data["results"]
    assert all(m["status"] == "skipped" and "time budget" in m["reason"] for m in data["models"].values())


def test_comparison_ignores_padded_positions_and_counts_real_ones() -> None:
    reference = torch.zeros(2, 4, 3)
    reference[:, :, 0] = 1.0
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    padded_differs = reference.clone()
    padded_differs[1, 3] = 5.0
    real_differs = reference.clone()
    real_differs[1, 0] = -1.0

    ignored = compare(reference, padded_differs, mask)
    counted = compare(reference, real_differs, mask)

    assert ignored["max_abs_diff"] == 0.0 and ignored["cosine_min"] == pytest.approx(1.0)
    assert counted["max_abs_diff"] == 2.0 and counted["cosine_min"] == pytest.approx(0.0)
    assert counted["top1_agreement"] is None


def test_classifier_comparison_counts_flipped_top1() -> None:
    reference = torch.tensor([[2.0, 1.0], [1.0, 2.0], [3.0, 0.0], [0.0, 3.0]])
    got = reference.clone()
    got[0] = torch.tensor([1.0, 2.0])

    figures = compare(reference, got, None)

    assert figures["top1_agreement"] == 0.75 and figures["samples"] == 4


def test_script_imports_without_what_the_lent_gpu_machine_lacks() -> None:
    # The lent GPU machine has torch, numpy, transformers and scikit-learn, but no pydantic, kfp
    # or Google clients: the script and the project modules it imports lazily must not need them.
    code = (
        "import sys\n"
        "for name in ('pydantic', 'kfp', 'google', 'google.cloud', 'tritonclient'):\n"
        "    sys.modules[name] = None\n"
        "import benchmarks.gpu_check, vxdeploy.components.compile.aoti, vxdeploy.components.common.builtin\n"
        "import vxdeploy.components.verify.compare\n"
        "import vxdeploy.components.common.signature, vxdeploy.components.common.uris\n"
    )

    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )

    assert proc.returncode == 0, proc.stderr[-2000:]
