"""The package as a library: ranges and the lock, extras without torch, the package list, image tags."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from vxdeploy.components.common import images

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
LOCK = REPO / "containers" / "constraints.txt"
ML_STACK = {"torch", "onnx", "onnxruntime", "onnxscript", "scikit-learn", "tritonclient", "matplotlib"}

sys.path.insert(0, str(REPO / "containers"))
from pinned_requirements import direct_requirements, read_lock, requirement_name  # noqa: E402


def _names(extras: list[str]) -> set[str]:
    return {requirement_name(r) for r in direct_requirements(REPO / "pyproject.toml", extras)}


def test_the_cloud_extra_installs_no_torch_onnxruntime_or_scikit_learn() -> None:
    # given / when what `pip install 'vxdeploy[cloud]'` asks for (the core and the extra)
    cloud = _names(["cloud"])

    # then none of the optimization stack is there, and the Vertex clients are
    assert (cloud & ML_STACK, {"kfp", "google-cloud-aiplatform", "google-cloud-storage"} <= cloud) == (
        set(),
        True,
    )


def test_the_all_extra_has_the_optimization_stack_and_the_cloud_clients() -> None:
    # given / when / then
    assert ML_STACK | {"kfp", "google-cloud-aiplatform", "pydantic"} <= _names(["all"])


def test_library_requirements_are_ranges_that_the_lock_satisfies() -> None:
    # given every requirement of the core and the extras the images and users install
    requirements = [Requirement(r) for r in direct_requirements(REPO / "pyproject.toml", ["all"])]
    lock = read_lock(LOCK)

    # when each is checked against the lock
    exact = [str(r) for r in requirements if any(s.operator == "==" for s in r.specifier)]
    unbounded = [
        str(r) for r in requirements if not any(s.operator in ("<", "<=", "~=") for s in r.specifier)
    ]
    missing = [r.name for r in requirements if requirement_name(r.name) not in lock]
    outside = [
        f"{r.name}=={lock[requirement_name(r.name)]} vs {r.specifier}"
        for r in requirements
        if requirement_name(r.name) in lock and not r.specifier.contains(lock[requirement_name(r.name)])
    ]

    # then none is pinned exactly, each has an upper bound, and the lock pins each inside its range
    assert (exact, unbounded, missing, outside) == ([], [], [], [])


def test_the_lock_pins_each_distribution_once_and_torch_without_a_build_label() -> None:
    # given the lock's lines
    lines = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]

    # when / then every line is name==version, each name once, torch's version a public one
    names = [requirement_name(line.split("==")[0]) for line in lines]
    assert (
        [line for line in lines if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.!+_-]+", line)],
        len(names) == len(set(names)),
        Version(read_lock(LOCK)["torch"]).local,
    ) == ([], True, None)


def test_the_package_list_names_every_package_folder() -> None:
    # given the folders with an __init__.py under components/ and pipelines/
    folders = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("components", "pipelines")
        for p in (REPO / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    setuptools = PYPROJECT["tool"]["setuptools"]

    # when the packages pyproject.toml installs are listed (explicitly, or found by include patterns)
    if "packages" in setuptools and isinstance(setuptools["packages"], list):
        prefix = {k: v for k, v in setuptools.get("package-dir", {}).items()}
        listed = set()
        for name in setuptools["packages"]:
            for package, folder in prefix.items():
                if name == package or name.startswith(package + "."):
                    listed.add(folder + name[len(package) :])
        missing = folders - listed
    else:
        include = setuptools["packages"]["find"]["include"]
        missing = {f for f in folders if not any(re.fullmatch(p.replace("*", ".*"), f) for p in include)}

    # then none is left out of the wheel
    assert missing == set(), "add them to [tool.setuptools] packages (python3 /work/coord/rename.py does)"


def test_the_submit_template_default_is_the_installed_one_whatever_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a directory without a compiled/ folder
    monkeypatch.chdir(tmp_path)
    from vxdeploy.pipelines import submit

    # when the default of --template is looked at from there
    default = Path(submit.DEFAULT_TEMPLATE)

    # then it is the package's compiled pipeline, a file, not a path relative to here
    assert (default.is_absolute(), default.is_file(), default.parent.name) == (True, True, "compiled")
    assert "pipelineInfo" in yaml.safe_load(default.read_text())


def test_the_image_tag_is_the_version_and_the_source_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    # given no tag set from outside
    monkeypatch.delenv(images.TAG_ENV, raising=False)

    # when / then
    assert re.fullmatch(rf"{re.escape(images.VERSION)}-[0-9a-f]{{12}}", images.image_tag())
    assert images.image("runner", "r.example/p").endswith(
        f"/runner:{images.VERSION}-{images.source_revision()}"
    )


def _copy_sources(dest: Path) -> Path:
    for folder in images.REVISION_FOLDERS:
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_any_change_to_the_image_sources_makes_a_new_revision(tmp_path: Path) -> None:
    # given two copies of the image sources
    a = _copy_sources(tmp_path / "a")
    b = _copy_sources(tmp_path / "b")
    same = images.source_revision.__wrapped__(a) == images.source_revision.__wrapped__(b)

    # when a Dockerfile of one changes, then a module of the other, and a new file appears in a third
    with (a / "containers" / "runner" / "Dockerfile").open("a") as f:
        f.write("# rebuilt\n")
    (b / "components" / "common" / "images.py").write_text("# changed\n")
    c = _copy_sources(tmp_path / "c")
    (c / "pipelines" / "new_module.py").write_text("X = 1\n")
    (c / "components" / "common" / "__pycache__").mkdir(exist_ok=True)
    revisions = {images.source_revision.__wrapped__(p) for p in (a, b, c, REPO)}

    # then equal sources share a revision, and each change is a revision of its own
    assert (same, len(revisions)) == (True, 4)


def test_the_tag_set_by_a_compiled_task_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a task the compiler gave its images' tag
    monkeypatch.setenv(images.TAG_ENV, "0.1.0-0123456789ab")

    # when / then that tag names the image
    assert images.serving_image().endswith("/serving:0.1.0-0123456789ab")


def test_every_compiled_task_runs_the_tagged_image_and_knows_the_tag(tmp_path: Path) -> None:
    # given the pipeline compiled for a registry
    from vxdeploy.pipelines.compile import compile_pipeline

    spec = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml", registry="eu.gcr.io/acme/vx").read_text())
    executors = spec["deploymentSpec"]["executors"].values()
    containers = [e["container"] for e in executors if "container" in e]

    # when each task's image and environment are read
    tag = images.image_tag()
    wrong = [
        c["image"]
        for c in containers
        if c["image"].startswith("eu.gcr.io/acme/vx/")
        and (
            not c["image"].endswith(f":{tag}")
            or {"name": images.TAG_ENV, "value": tag} not in c.get("env", [])
        )
    ]

    # then every project image carries the version-and-revision tag, and the task is told it
    assert (wrong, any(c["image"].startswith("eu.gcr.io/acme/vx/") for c in containers)) == ([], True)


def test_build_sh_prints_tags_with_the_revision() -> None:
    # given / when the build plan is printed (no Docker needed)
    env = {k: v for k, v in os.environ.items() if k != images.TAG_ENV}
    out = subprocess.run(
        ["bash", str(REPO / "containers" / "build.sh"), "--print"],
        capture_output=True,
        text=True,
        check=True,
        env={**env, "PYTHON": sys.executable, "REGISTRY": "r.example/p"},
        timeout=120,
    ).stdout

    # then each image's tag and its VXDEPLOY_IMAGE_TAG build arg carry the same version-revision
    tag = f"{images.VERSION}-{images.source_revision.__wrapped__()}"  # now, not at this test's import
    assert [f"r.example/p/{n}:{tag}" in out for n in images.IMAGE_NAMES] == [True] * 3
    assert out.count(f"--build-arg VXDEPLOY_IMAGE_TAG={tag}") == 3
