"""Smoke test: sample requests sent to the new deployed model itself, before it takes any traffic.

The route reaches one deployed model by id: the dedicated endpoint's invoke route
(``.../endpoints/E/deployedModels/D/invoke/<path>``) or, on a peered private endpoint, the
deployed model's own ``predict_http_uri``. Requests are KServe v2 JSON, what Triton answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
from google.cloud import aiplatform_v1

from vxdeploy.components.cloud.vertex import VertexApi

KSERVE_DATATYPES = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}


@dataclass
class SmokeResult:
    """What the smoke test sent and got back."""

    route: str
    url: str = ""
    requests: int = 0
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    skipped_reason: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.skipped_reason) or (self.requests > 0 and self.succeeded == self.requests)

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "url": self.url,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "passed": self.passed,
            "failures": self.failures,
            "max_latency_ms": max(self.latencies_ms) if self.latencies_ms else None,
            **({"skipped_reason": self.skipped_reason} if self.skipped_reason else {}),
        }


def kserve_request(batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A KServe v2 inference request body for one batch of named inputs."""
    inputs = []
    for name, arr in batch.items():
        dtype = KSERVE_DATATYPES.get(str(arr.dtype))
        if dtype is None:
            raise ValueError(f"input {name!r} has dtype {arr.dtype}, which KServe v2 JSON cannot carry")
        inputs.append(
            {"name": name, "shape": list(arr.shape), "datatype": dtype, "data": arr.ravel().tolist()}
        )
    return {"inputs": inputs}


def check_kserve_response(body: Any, batch_size: int) -> str:
    """'' when ``body`` is a sound KServe v2 answer for ``batch_size`` samples, else what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list) or not body["outputs"]:
        return f"answer has no 'outputs' list: {str(body)[:200]}"
    for out in body["outputs"]:
        name = out.get("name", "?")
        shape, data = out.get("shape"), out.get("data")
        if not isinstance(shape, list) or not isinstance(data, list):
            return f"output {name!r} lacks 'shape' or 'data'"
        if shape and shape[0] != batch_size:
            return f"output {name!r} has batch {shape[0]}, sent {batch_size}"
        values = list(_flatten(data))
        if len(values) != math.prod(shape):
            return f"output {name!r}: {len(values)} values do not fill shape {shape}"
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return f"output {name!r} holds NaN or Inf"
    return ""


def _flatten(data: Any) -> Any:
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def smoke_url(
    api: VertexApi,
    endpoint: aiplatform_v1.Endpoint,
    deployed: aiplatform_v1.DeployedModel,
    route: str,
    predict_path: str,
) -> str:
    """Where one request to this deployed model goes, for ``route`` 'invoke' or 'private'."""
    if route == "private":
        uri = str(deployed.private_endpoints.predict_http_uri)
        if not uri:
            raise ValueError(
                f"deployed model {deployed.id} has no private predict URI (is the endpoint peered?)"
            )
        return uri
    host = api.base_url
    if not api.overridden and endpoint.dedicated_endpoint_dns:
        # Dedicated endpoints are served on their own DNS name.
        host = f"https://{endpoint.dedicated_endpoint_dns}"
    return f"{host}/v1/{endpoint.name}/deployedModels/{deployed.id}/invoke{predict_path}"


def smoke_test(
    api: VertexApi,
    endpoint: aiplatform_v1.Endpoint,
    deployed: aiplatform_v1.DeployedModel,
    *,
    route: str,
    predict_path: str,
    samples: Mapping[str, np.ndarray],
    count: int,
    timeout_s: float,
) -> SmokeResult:
    """Send ``count`` single-sample requests from ``samples`` to ``deployed``; every one must succeed.

    Args:
        api: Vertex AI clients (their HTTP session carries the credentials).
        endpoint: The endpoint.
        deployed: The new deployed model.
        route: 'invoke', 'private' or 'none' (skipped, with the reason recorded).
        predict_path: The container's inference path, e.g. ``/v2/models/model/infer``.
        samples: Named input arrays, first axis samples (the evaluation data).
        count: Requests to send (cycling through the samples).
        timeout_s: Timeout of one request.
    """
    if route == "none":
        return SmokeResult(
            route, skipped_reason="deployment.smoke_test_route resolves to 'none': no per-model route"
        )
    if count == 0:
        return SmokeResult(route, skipped_reason="canary.smoke_requests=0")
    n = len(next(iter(samples.values()))) if samples else 0
    if n == 0:
        return SmokeResult(route, failures=["no evaluation samples to send"])
    url = smoke_url(api, endpoint, deployed, route, predict_path)
    result = SmokeResult(route, url=url)
    session = api.http()
    for i in range(count):
        batch = {k: v[i % n : i % n + 1] for k, v in samples.items()}
        result.requests += 1
        start = time.perf_counter()
        try:
            response = session.post(url, json=kserve_request(batch), timeout=timeout_s)
        except requests.RequestException as exc:
            result.failures.append(f"request {i}: {type(exc).__name__}: {exc}")
            continue
        result.latencies_ms.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            result.failures.append(f"request {i}: HTTP {response.status_code}: {response.text[:200]}")
            continue
        try:
            problem = check_kserve_response(response.json(), 1)
        except ValueError:
            problem = f"answer is not JSON: {response.text[:200]}"
        if problem:
            result.failures.append(f"request {i}: {problem}")
        else:
            result.succeeded += 1
    return result
