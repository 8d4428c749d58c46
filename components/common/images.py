"""Container images of vxdeploy. Tags derive from the package version and the source revision, here only."""

from __future__ import annotations

import hashlib
import os
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DEFAULT_REGISTRY = "us-docker.pkg.dev/vxdeploy/vxdeploy"
REGISTRY_ENV = "VXDEPLOY_REGISTRY"
"""The registry the images are pushed to (``make images``) and the pipeline is compiled for."""


def registry() -> str:
    """The configured registry prefix: ``$VXDEPLOY_REGISTRY``, else the built-in one.

    Read at each call: a compiled pipeline sets it in every task's environment
    (``vxdeploy compile --registry``), so a task finds the images of the registry it was compiled for.
    """
    return os.environ.get(REGISTRY_ENV, "").strip().rstrip("/") or DEFAULT_REGISTRY


REGISTRY = registry()
"""The registry this process started with (the one the component decorators below name)."""


def _source_tree_version() -> str:
    """``[project] version`` of the pyproject.toml beside this package (a checkout not installed)."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0.0.0"


try:
    VERSION = version("vxdeploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = _source_tree_version()

IMAGE_NAMES = ("optimizer", "runner", "serving")

TAG_ENV = "VXDEPLOY_IMAGE_TAG"
"""The image tag a compiled pipeline's tasks (and the images themselves) were built for."""

REVISION_FOLDERS = ("components", "pipelines", "containers")
"""What the images are built from: the package's code and data, the Dockerfiles and the lock.

Not ``compiled/``: the compiled pipeline names the tags, so it cannot be part of them.
"""
_REVISION_SUFFIXES = {".py", ".yaml", ".txt", ".sh", ".dockerignore"}


def _revision_files(root: Path) -> list[Path]:
    files = []
    for folder in REVISION_FOLDERS:
        for path in (root / folder).rglob("*"):
            rel = path.relative_to(root)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            if path.is_file() and (path.suffix in _REVISION_SUFFIXES or path.name.startswith("Dockerfile")):
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@cache
def source_revision(root: Path | None = None) -> str:
    """12 hex digits naming the sources the images are built from (sha256 of their paths and bytes).

    Computed from the files themselves (``components/``, ``pipelines/``, ``containers/`` beside this
    package: the repository, or the installed package, which ships the same files), so it is the same
    before and after a commit and needs no git; any change to them is a new revision, hence a new tag.
    """
    base = root or Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for path in _revision_files(base):
        digest.update(path.relative_to(base).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def image_tag() -> str:
    """``VERSION-REVISION`` (``0.1.0-3f9c2a7d41be``), or ``$VXDEPLOY_IMAGE_TAG`` where that is set.

    Every change to the sources makes a new tag, so a rebuilt image never overwrites the tag of
    another build, and a compiled pipeline names exactly the images built from its own sources.
    """
    return os.environ.get(TAG_ENV, "").strip() or f"{VERSION}-{source_revision()}"


def image(name: str, registry_prefix: str | None = None) -> str:
    """The tag of one of the project's images (``image('runner')``), by default in :func:`registry`."""
    if name not in IMAGE_NAMES:
        raise ValueError(f"unknown image {name!r}; known: {', '.join(IMAGE_NAMES)}")
    return f"{(registry_prefix or registry()).rstrip('/')}/{name}:{image_tag()}"


def serving_image() -> str:
    """The project's serving image in the configured registry: what Vertex AI serves repositories from."""
    return image("serving")


def task_images(registry_prefix: str | None = None) -> dict[str, str]:
    """Every image the pipeline's tasks run in, by name."""
    return {name: image(name, registry_prefix) for name in IMAGE_NAMES}


# Component decorators need a fixed image at import time; the compiler rewrites them to the
# registry it compiles for (pipelines/compile.py).
OPTIMIZER_IMAGE = image("optimizer", REGISTRY)
RUNNER_IMAGE = image("runner", REGISTRY)
SERVING_IMAGE = image("serving", REGISTRY)


# What each image is built from, recorded once and handed to the Dockerfiles as build args
# (containers/build.sh). The optimizer builds TensorRT engines and the serving image runs them; an
# engine only deserializes in the TensorRT version that built it, so both bases come from the same
# NGC release, and each Dockerfile checks at build time that its base carries TENSORRT_VERSION.
NGC_RELEASE = "25.10"
TENSORRT_VERSION = "10.13.3.9"
CUDA_TORCH_INDEX = "https://download.pytorch.org/whl/cu130"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
PYTRITON_VERSION = "0.7.0"
MODELOPT_VERSION = "0.47.0"

BASE_IMAGES: dict[str, str] = {
    "optimizer": f"nvcr.io/nvidia/tensorrt:{NGC_RELEASE}-py3",
    "runner": "python:3.11.14-slim-bookworm",
    "serving": f"nvcr.io/nvidia/tritonserver:{NGC_RELEASE}-py3",
}


def build_args(name: str) -> dict[str, str]:
    """The ``--build-arg`` values of one image's Dockerfile (``containers/<name>/Dockerfile``)."""
    image(name)  # validates the name
    args = {"BASE_IMAGE": BASE_IMAGES[name], "VXDEPLOY_VERSION": VERSION, "VXDEPLOY_IMAGE_TAG": image_tag()}
    if name == "optimizer":
        args |= {
            "TENSORRT_VERSION": TENSORRT_VERSION,
            "TORCH_INDEX_URL": CUDA_TORCH_INDEX,
            "MODELOPT_VERSION": MODELOPT_VERSION,
        }
    elif name == "serving":
        args |= {"TENSORRT_VERSION": TENSORRT_VERSION, "TORCH_INDEX_URL": CUDA_TORCH_INDEX}
    else:
        args |= {"TORCH_INDEX_URL": CPU_TORCH_INDEX, "PYTRITON_VERSION": PYTRITON_VERSION}
    return args


def _main(argv: list[str] | None = None) -> int:
    """``python -m vxdeploy.components.common.images names|image-tag|tag|build-args NAME``, for build.sh."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vxdeploy.components.common.images")
    parser.add_argument("what", choices=("names", "image-tag", "tag", "build-args"))
    parser.add_argument("name", nargs="?", default="")
    parser.add_argument(
        "--registry", default="", help="Registry prefix; default: $VXDEPLOY_REGISTRY or the built-in one."
    )
    args = parser.parse_args(argv)
    try:
        if args.what == "names":
            print("\n".join(IMAGE_NAMES))
        elif args.what == "image-tag":
            print(image_tag())
        elif args.what == "tag":
            print(image(args.name, args.registry.rstrip("/") or None))
        else:
            print("\n".join(f"{k}={v}" for k, v in build_args(args.name).items()))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
