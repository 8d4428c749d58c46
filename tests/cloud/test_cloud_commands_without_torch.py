"""The cloud commands run where only ``vxdeploy[cloud]`` is installed: no torch, ONNX Runtime, scikit-learn.

Each command runs in a child interpreter whose importer refuses the optimization stack, as an
environment without those distributions would (``ModuleNotFoundError``), against the loopback fakes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.rollout import FaultWorld
from tests.fakes.vertex_pipelines import (  # noqa: F401
    FakeVertexPipelines,
    compiled_template_fixture,
    vertex_pipelines_fixture,
)

REPO = Path(__file__).resolve().parents[2]
PROJECT = "vx-project"
ROOT = "gs://vx-bucket/runs"
REFUSED = ("torch", "onnxruntime", "sklearn", "onnx", "onnxscript", "onnxconverter_common", "tritonclient")

_REFUSE = """
import importlib.abc, json, sys
REFUSED = set(json.loads(sys.argv[1]))
asked = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            asked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
"""
_CHILD = (
    _REFUSE
    + """
from vxdeploy.pipelines.cli import main
code = main(json.loads(sys.argv[2]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in REFUSED)
print("CHILD " + json.dumps({"code": code, "asked": sorted(set(asked)), "loaded": loaded}))
"""
)


def _run_without_ml_stack(argv: list[str]) -> tuple[dict[str, object], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(REFUSED), json.dumps(argv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CHILD ")]
    assert lines, f"the command did not finish (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("CHILD ") :]), proc.stderr


def test_submit_runs_without_the_optimization_stack(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given the submit command line against the loopback Vertex fake
    argv = ["submit", "--project", PROJECT, "--pipeline-root", ROOT, "--template", str(compiled_template)]
    argv += ["--api-endpoint", vertex_pipelines.endpoint, "--skip-bucket-check", "--job-id", "vx-no-torch"]

    # when it runs where torch, ONNX Runtime and scikit-learn cannot be imported
    result, stderr = _run_without_ml_stack(argv)

    # then the run is created, and none of them was loaded
    assert (result["code"], result["loaded"], len(vertex_pipelines.pipeline_jobs)) == (0, [], 1), stderr


def test_schedule_create_runs_without_the_optimization_stack(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path
) -> None:
    # given a schedule to create against the fake
    argv = ["schedule", "create", "--project", PROJECT, "--pipeline-root", ROOT]
    argv += ["--template", str(compiled_template), "--cron", "0 3 * * *", "--display-name", "nightly"]
    argv += ["--api-endpoint", vertex_pipelines.endpoint, "--skip-bucket-check"]

    # when / then
    result, stderr = _run_without_ml_stack(argv)
    assert (result["code"], result["loaded"], len(vertex_pipelines.schedules)) == (0, [], 1), stderr


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[FaultWorld]:
    w = FaultWorld(tmp_path, seed=3, lease_ttl_s=600.0)
    assert not w.rollout("r1").failed
    yield w
    w.close()


def test_rollback_runs_without_the_optimization_stack(world: FaultWorld) -> None:
    # given an endpoint a finished rollout left serving
    argv = ["rollback", "--endpoint", world.endpoint_name, "--api-endpoint", world.vertex.address]

    # when rollback runs there with no torch
    result, stderr = _run_without_ml_stack([*argv, "--deadline-s", "10"])

    # then it finishes (nothing to undo) without loading any of the stack
    assert (result["code"], result["loaded"]) == (0, []), stderr


def test_compile_and_the_trigger_import_without_the_optimization_stack(tmp_path: Path) -> None:
    # given / when the pipeline is compiled there, and the trigger service's modules are imported
    result, stderr = _run_without_ml_stack(["compile", "--output", str(tmp_path / "p.yaml")])
    child = "import vxdeploy.pipelines.trigger, vxdeploy.pipelines.trigger_auth\nprint('CHILD {}')"
    trigger = subprocess.run(
        [sys.executable, "-c", _REFUSE + child, json.dumps(REFUSED), "[]"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # then both work
    assert (result["code"], result["loaded"], (tmp_path / "p.yaml").is_file()) == (0, [], True), stderr
    assert trigger.returncode == 0, trigger.stderr[-2000:]


def test_a_core_install_says_which_extra_a_command_needs() -> None:
    # given an environment without the cloud extra (no kfp, no Google clients)
    refused = [*REFUSED, "kfp", "google", "google_cloud_pipeline_components"]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(refused), json.dumps(["submit", "--project", "p"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # when `vxdeploy submit` runs there, then it exits 2 naming what to install
    assert (proc.returncode, "pip install 'vxdeploy[cloud]'" in proc.stderr) == (0, True), proc.stderr
    assert '"code": 2' in proc.stdout
