"""Vertex AI container settings for serving a packaged repository with Triton.

The returned dict has the field names of ``aiplatform_v1.ModelContainerSpec`` so deployment
can pass it as ``ModelContainerSpec(**spec)`` (or through :func:`model_upload_kwargs` to
``aiplatform.Model.upload``).

How Triton behaves on Vertex AI (Triton's ``qa/L0_vertex_ai`` and its command-line help):
Vertex sets ``AIP_MODE=PREDICTION``, which turns on Triton's Vertex AI HTTP service on
``AIP_HTTP_PORT`` (Vertex sets it to the first container port) and turns off Triton's own
HTTP and gRPC services. That service answers health checks on ``AIP_HEALTH_ROUTE`` and runs
KServe-v2 inference requests on ``AIP_PREDICT_ROUTE`` (Vertex sets both from the routes
below) against the only model, or ``--vertex-ai-default-model`` when there are several.
``$(AIP_STORAGE_URI)`` in the args is expanded by Vertex to the copied ``artifact_uri``.
"""

from __future__ import annotations

from typing import Any

from vxdeploy.components.common import images
from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.package.repository import TritonRepository

TRITON_COMMAND = "tritonserver"
SERVING_PORT = 8000
HEALTH_ROUTE = "/v2/health/ready"


def default_serving_image(triton: TritonConfig | None = None) -> str:
    """``triton.serving_image``, or the project's serving image in the configured registry.

    Vertex AI has no prebuilt Triton image: every repository is served from an image the user
    owns. The project's serving image (NGC Triton with torch for AOT Inductor and the
    optimizer's TensorRT, ``images.TENSORRT_VERSION``) runs every model kind vxdeploy packages;
    ``make images`` builds it and pushes it to the registry the pipeline is compiled for.
    """
    if triton is not None and triton.serving_image:
        return triton.serving_image
    return images.serving_image()


def serving_image(repository: TritonRepository, triton: TritonConfig) -> str:
    """The image that serves ``repository``: the same for every model kind (:func:`default_serving_image`)."""
    del repository  # one image runs ONNX Runtime models, TensorRT engines and AOT Inductor packages
    return default_serving_image(triton)


def predict_route(model_name: str) -> str:
    return f"/v2/models/{model_name}/infer"


def vertex_serving_container(repository: TritonRepository, triton: TritonConfig) -> dict[str, Any]:
    """The Triton serving container spec for Vertex AI.

    Args:
        repository: The packaged repository (its models and default model).
        triton: The Triton section (image, shared memory, response cache size).

    Returns:
        ``image_uri``, ``command``, ``args``, ``ports``, ``predict_route``, ``health_route``,
        ``shared_memory_size_mb`` and ``env``, named as in ``aiplatform_v1.ModelContainerSpec``.
    """
    args = ["--model-repository=$(AIP_STORAGE_URI)"]
    if len(repository.models) > 1:
        args.append(f"--vertex-ai-default-model={repository.default_model}")
    # The packaged configs are complete; serving them exactly as written keeps the serve check honest.
    args.append("--disable-auto-complete-config")
    if any(c.response_cache.enable for c in repository.configs.values()):
        args.append(f"--cache-config=local,size={triton.response_cache_mb * 1024 * 1024}")
    args.append("--log-verbose=0")
    return {
        "image_uri": serving_image(repository, triton),
        "command": [TRITON_COMMAND],
        "args": args,
        "env": [],
        "ports": [{"container_port": SERVING_PORT}],
        "predict_route": predict_route(repository.default_model),
        "health_route": HEALTH_ROUTE,
        "shared_memory_size_mb": triton.shared_memory_mb,
    }


def model_upload_kwargs(container: dict[str, Any]) -> dict[str, Any]:
    """The same settings as ``aiplatform.Model.upload``'s ``serving_container_*`` arguments."""
    return {
        "serving_container_image_uri": container["image_uri"],
        "serving_container_command": list(container["command"]),
        "serving_container_args": list(container["args"]),
        "serving_container_environment_variables": {e["name"]: e["value"] for e in container["env"]},
        "serving_container_ports": [p["container_port"] for p in container["ports"]],
        "serving_container_predict_route": container["predict_route"],
        "serving_container_health_route": container["health_route"],
        "serving_container_shared_memory_size_mb": container["shared_memory_size_mb"],
    }
