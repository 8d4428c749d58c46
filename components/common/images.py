"""Container images of vxdeploy. Tags derive from the package version, here and nowhere else."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

REGISTRY = os.environ.get("VXDEPLOY_REGISTRY", "us-docker.pkg.dev/vxdeploy/vxdeploy")

try:
    VERSION = version("vxdeploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0.0.0"

IMAGE_NAMES = ("optimizer", "runner", "serving")


def image(name: str, registry: str = REGISTRY) -> str:
    """The tag of one of the project's images, e.g. ``image('runner')``."""
    if name not in IMAGE_NAMES:
        raise ValueError(f"unknown image {name!r}; known: {', '.join(IMAGE_NAMES)}")
    return f"{registry}/{name}:{VERSION}"


OPTIMIZER_IMAGE = image("optimizer")
RUNNER_IMAGE = image("runner")
SERVING_IMAGE = image("serving")
