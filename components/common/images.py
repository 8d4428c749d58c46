"""Container images of vxdeploy. Tags derive from the package version, here and nowhere else."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

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

try:
    VERSION = version("vxdeploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0.0.0"

IMAGE_NAMES = ("optimizer", "runner", "serving")


def image(name: str, registry_prefix: str | None = None) -> str:
    """The tag of one of the project's images (``image('runner')``), by default in :func:`registry`."""
    if name not in IMAGE_NAMES:
        raise ValueError(f"unknown image {name!r}; known: {', '.join(IMAGE_NAMES)}")
    return f"{(registry_prefix or registry()).rstrip('/')}/{name}:{VERSION}"


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
    args = {"BASE_IMAGE": BASE_IMAGES[name], "VXDEPLOY_VERSION": VERSION}
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
    """``python -m components.common.images tag|build-args NAME [--registry R]`` for containers/build.sh."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m components.common.images")
    parser.add_argument("what", choices=("names", "tag", "build-args"))
    parser.add_argument("name", nargs="?", default="")
    parser.add_argument(
        "--registry", default="", help="Registry prefix; default: $VXDEPLOY_REGISTRY or the built-in one."
    )
    args = parser.parse_args(argv)
    try:
        if args.what == "names":
            print("\n".join(IMAGE_NAMES))
        elif args.what == "tag":
            print(image(args.name, args.registry.rstrip("/") or None))
        else:
            print("\n".join(f"{k}={v}" for k, v in build_args(args.name).items()))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
