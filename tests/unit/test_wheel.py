"""The built wheel: one ``vxdeploy`` namespace (no top-level ``components``/``pipelines``), package data,
ranges; installed on its own (``--no-deps --target``) it runs the cloud CLI from any directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from vxdeploy.components.common import images

REPO = Path(__file__).resolve().parents[2]
RENAMED = '"vxdeploy.components" = "components"' in (REPO / "pyproject.toml").read_text()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not RENAMED, reason="the vxdeploy namespace is not applied (python3 /work/coord/rename.py)"
    ),
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("vxdeploy-*.whl")
    return path


def test_the_wheel_holds_one_vxdeploy_namespace_with_its_data(wheel: Path) -> None:
    # given the wheel's files
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"vxdeploy-{images.VERSION}.dist-info"

    # when their top-level names and the data files are looked at
    tops = {n.split("/")[0] for n in names}
    data = [
        "vxdeploy/compiled/optimize_and_deploy.yaml",
        "vxdeploy/components/cost/prices.yaml",
        "vxdeploy/components/package/triton_models/python_model.py",
        "vxdeploy/containers/constraints.txt",
        "vxdeploy/containers/runner/Dockerfile",
    ]

    # then nothing but vxdeploy goes on sys.path, and the template, prices and image recipe travel
    assert (tops, [d for d in data if d not in names]) == ({"vxdeploy", dist_info}, [])


def test_the_wheel_declares_ranges_extras_and_the_entry_point(wheel: Path) -> None:
    # given the wheel's metadata
    archive = zipfile.ZipFile(wheel)
    dist_info = f"vxdeploy-{images.VERSION}.dist-info"
    meta = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()

    # when / then no runtime requirement is an exact pin (the dev tools and the gpu extra's TensorRT,
    # which must match the images', are), the extras are there, the command is vxdeploy's
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    runtime = [r for r in requires if not (r.marker and re.search(r'extra == "(dev|gpu)"', str(r.marker)))]
    assert [str(r) for r in runtime if any(s.operator == "==" for s in r.specifier)] == []
    assert {"cloud", "all"} <= set(meta.get_all("Provides-Extra") or [])
    assert "vxdeploy = vxdeploy.pipelines.cli:entry" in entry_points


_CHILD = """
import importlib.abc, json, sys
from pathlib import Path
REFUSED = {"torch", "onnxruntime", "sklearn", "onnx", "onnxscript", "tritonclient", "components", "pipelines"}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
import vxdeploy.pipelines.cli as cli
from vxdeploy.components.common import images
from vxdeploy.pipelines import submit
try:
    cli.main(["submit", "--help"])
except SystemExit as exc:
    code = exc.code
print("CHILD " + json.dumps({
    "code": code,
    "cli": cli.__file__,
    "template": str(submit.DEFAULT_TEMPLATE),
    "template_is_file": Path(submit.DEFAULT_TEMPLATE).is_file(),
    "revision": images.source_revision(),
}))
"""


def test_the_installed_wheel_runs_the_cloud_cli_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    # given the wheel installed on its own into a folder (its dependencies are this environment's)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # when `vxdeploy submit --help` runs from another directory, torch and the repository's
    # top-level folders refused
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CHILD ")]
    assert lines, proc.stderr[-3000:]
    child = json.loads(lines[-1][len("CHILD ") :])

    # then it runs from the installed package, whose template and image revision are the repository's
    assert (child["code"], child["cli"].startswith(str(site)), child["template_is_file"]) == (0, True, True)
    assert child["template"].startswith(str(site / "vxdeploy" / "compiled"))
    assert child["revision"] == images.source_revision.__wrapped__(REPO)


def test_no_source_imports_the_bare_folder_names() -> None:
    # given every Python file of the repository (the folders are importable from the root in a checkout)
    bare = re.compile(r"^\s*(?:from|import) (?:components|pipelines)(?:\.|\s|$)", re.MULTILINE)
    files = [p for d in ("components", "pipelines", "tests", "benchmarks") for p in (REPO / d).rglob("*.py")]

    # when / then none imports `components...` or `pipelines...` instead of `vxdeploy.components...`
    assert [str(p.relative_to(REPO)) for p in files if bare.search(p.read_text())] == []
