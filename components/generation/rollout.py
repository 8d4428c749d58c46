"""Deploying and canarying a generation model on Vertex AI: requests stream captions from its generator.

How a request reaches the generator, and why (the decision; sources in brackets):

* Under Vertex AI (``AIP_MODE=PREDICTION``) Triton runs its Vertex AI HTTP service instead of its own.
  That service answers the predict route with an *infer* of ``--vertex-ai-default-model``, and the
  ``X-Vertex-Ai-Triton-Redirect`` header reaches only infer, ready, config, stats, metadata, metrics
  and the repository API: there is no redirect to the generate extension [Triton
  ``src/vertex_ai_server.cc``]. ``:predict``, ``:rawPredict`` and ``:streamRawPredict`` (the
  streaming method sends its body to the same predict route) therefore all end in an infer.
* Triton's HTTP infer refuses decoupled models ("HTTP end point doesn't support models with decoupled
  transaction policy", 501), and the generator is decoupled: it sends one response per token
  [Triton ``http_server.cc``; decoupled_models.md].
* Triton's generate extension serves decoupled models over HTTP: ``/v2/models/<m>/generate``
  returns exactly one response (a decoupled model that sends several gets "generate expects model to
  produce exactly 1 response"), ``/v2/models/<m>/generate_stream`` returns every response as a
  Server-Sent Event (a chunk of a chunked body); a request property named after a model input is
  that input tensor (flat, shaped by the model's metadata), and each output tensor is a property of
  the event, a scalar when it holds one element [Triton protocol/extension_generate.md,
  ``http_server.cc``, L0_http tests].
* Vertex AI's invoke route (``ModelContainerSpec.invoke_route_prefix = "/*"``, dedicated endpoints
  only, HTTP only, preview) forwards ``.../deployedModels/D/invoke/<path>`` to ``<path>`` on the
  container, and every other Vertex route is then off [Vertex AI "Use arbitrary custom routes"].

So a generation repository is deployed with the invoke route on a dedicated endpoint, Triton's own
HTTP service answering (``--allow-vertex-ai=false --allow-http=true``, what
:meth:`~vxdeploy.components.deploy.model_upload.ServingContainer.to_spec` adds), and the generator's
route is ``/v2/models/<generator>/generate_stream``: tokens reach the client as they are produced,
so time to first token is what a user sees. The non-decoupled fallback (a generator returning the
whole caption in one response through ``:predict``) keeps the plain predict route but hides TTFT
behind the whole generation, so vxdeploy does not use it.

This module is the client side: the streamed request (:func:`stream_generation`), captions of eval
images through one deployed model (:class:`CaptionProbe`), and :class:`GenerationCanary` -- the
generation-aware smoke test and per-window figures the canary rollout
(:func:`~vxdeploy.components.canary.rollout.run_canary`) takes in place of its defaults: a canary
that answers but generates other captions than the model that serves fails.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import requests
from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1

from vxdeploy.components.canary.metrics import MetricsSource, WindowStats
from vxdeploy.components.canary.smoke import SmokeResult, smoke_url
from vxdeploy.components.cloud.endpoints import get_endpoint
from vxdeploy.components.cloud.vertex import VertexApi
from vxdeploy.components.common.config import CanaryConfig, DeploymentConfig
from vxdeploy.components.common.errors import UserError
from vxdeploy.components.generation.spec import OUTPUT_IDS, GenerationSpec

GENERATE_STREAM = "generate_stream"
TEXT_OUTPUT = "text"
"""The generator's text output (one piece per token); the caption is decoded from ``output_ids``."""


def generate_stream_route(model_name: str) -> str:
    """The generator's streaming route on Triton's HTTP service."""
    return f"/v2/models/{model_name}/{GENERATE_STREAM}"


def is_generate_stream_route(path: str) -> bool:
    """Whether ``path`` is a generate_stream route (the generator's, as the deploy step records it)."""
    return path.rstrip("/").endswith(f"/{GENERATE_STREAM}")


def require_invoke_route(cfg: DeploymentConfig, dedicated: bool, endpoint_name: str) -> None:
    """A generation model is served only through the invoke route of a dedicated endpoint.

    Raises:
        UserError: the smoke-test route resolves to 'private' (the peered per-model URL is Vertex's
            predict route) or the endpoint is not dedicated; the message names the fix.
    """
    route = cfg.resolved_smoke_test_route
    if route == "private":
        raise UserError(
            f"deployment.smoke_test_route resolves to 'private' (network={cfg.network!r}): a generation "
            "model's generator is decoupled and streams its tokens, which Vertex AI's predict route "
            "(the private per-model URL included) cannot carry; deploy it to a dedicated endpoint "
            "(deployment.network='' and smoke_test_route 'auto' or 'invoke'), whose invoke route reaches "
            "Triton's generate_stream"
        )
    if not dedicated:
        raise UserError(
            f"endpoint {endpoint_name} is not a dedicated endpoint: a generation model streams its tokens "
            "through Triton's generate_stream, which Vertex AI serves only on the invoke route of dedicated "
            "endpoints; set deployment.endpoint to a new name (vxdeploy creates dedicated endpoints)"
        )


def generate_request(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The generate-extension request for one sample: each encoder input as a property of its name.

    Flat: Triton counts a property's top-level elements and shapes them by the input's metadata shape
    (fixed dimensions first, the rest on the dynamic ones: 64 values become ``[1, 1, 8, 8]`` for an
    input ``[-1, 1, 8, 8]``); a nested array would count as one element [Triton ``http_server.cc``,
    ``ExactMappingInput``].
    """
    body: dict[str, Any] = {}
    for name, arr in inputs.items():
        if arr.dtype.kind not in "fiub":
            raise ValueError(
                f"input {name!r} has dtype {arr.dtype}, which a JSON generate request cannot carry"
            )
        if arr.ndim and arr.shape[0] != 1:
            raise ValueError(f"input {name!r} holds {arr.shape[0]} samples; a generate request carries one")
        body[name] = arr.ravel().tolist()
    return body


def sse_events(lines: Iterable[str | bytes]) -> Iterable[dict[str, Any]]:
    """The JSON objects of a Server-Sent Events stream's ``data:`` fields (one object per event)."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.strip():
            if data:
                yield _event("\n".join(data))
                data = []
            continue
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield _event("\n".join(data))


def _event(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return {"error": f"event is not JSON: {text[:200]}"}
    return obj if isinstance(obj, dict) else {"error": f"event is not a JSON object: {text[:200]}"}


def token_ids(event: Mapping[str, Any]) -> list[int]:
    """The token ids one generator response carries (``output_ids``: a number or nested lists)."""
    value = event.get(OUTPUT_IDS)
    if value is None:
        return []
    flat: list[int] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(int(item))
    return flat


@dataclass(frozen=True)
class StreamedGeneration:
    """One caption streamed from the generator, as the client saw it arrive.

    Attributes:
        tokens: Generated ids up to and including ``eos``.
        text: The caption (``spec.decode(tokens)``).
        ttft_ms: From sending the request to the first token; None when no token came.
        total_ms: From sending the request to the end of the stream.
        error: '' or what went wrong (HTTP status, an error event, no tokens).
    """

    tokens: list[int]
    text: str
    ttft_ms: float | None
    total_ms: float
    error: str = ""

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens after the first per second of stream after the first token (None with one token)."""
        if self.ttft_ms is None or len(self.tokens) < 2 or self.total_ms <= self.ttft_ms:
            return None
        return (len(self.tokens) - 1) / ((self.total_ms - self.ttft_ms) / 1e3)


def stream_generation(
    session: requests.Session,
    url: str,
    inputs: Mapping[str, np.ndarray],
    spec: GenerationSpec,
    timeout_s: float,
) -> StreamedGeneration:
    """POST one sample to a generate_stream ``url`` and collect its tokens as they arrive."""
    start = time.perf_counter()
    tokens: list[int] = []
    first: float | None = None
    try:
        response = session.post(
            url,
            json=generate_request(inputs),
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=timeout_s,
        )
    except requests.RequestException as exc:
        return StreamedGeneration(
            [], "", None, (time.perf_counter() - start) * 1e3, f"{type(exc).__name__}: {exc}"
        )
    with response:
        if response.status_code != 200:
            return StreamedGeneration(
                [],
                "",
                None,
                (time.perf_counter() - start) * 1e3,
                f"HTTP {response.status_code}: {response.text[:200]}",
            )
        error = ""
        try:
            # chunk_size=None: each chunk of the chunked body as it arrives (a size would wait to fill it).
            for event in sse_events(response.iter_lines(chunk_size=None)):
                if "error" in event:
                    # The status was sent with the first event: a later error arrives as an event.
                    error = f"error event: {str(event['error'])[:200]}"
                    break
                new = token_ids(event)
                if new and first is None:
                    first = time.perf_counter()
                tokens += new
                if spec.eos_token_id in new:
                    break
        except requests.RequestException as exc:
            error = f"stream broke: {type(exc).__name__}: {exc}"
    end = time.perf_counter()
    if spec.eos_token_id in tokens:
        tokens = tokens[: tokens.index(spec.eos_token_id) + 1]
    if not error and not tokens:
        error = "the stream ended without a token"
    return StreamedGeneration(
        tokens,
        spec.decode(tokens),
        (first - start) * 1e3 if first is not None else None,
        (end - start) * 1e3,
        error,
    )


def _quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.quantile(np.asarray(values, dtype=float), q)) if values else None


@dataclass
class ProbeResult:
    """Captions of the eval images generated through one deployed model."""

    deployed_model_id: str
    url: str
    generations: list[StreamedGeneration] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f"image {i}: {g.error}" for i, g in enumerate(self.generations) if g.error]

    @property
    def complete(self) -> bool:
        """Every image got a caption."""
        return bool(self.generations) and not self.failures

    @property
    def captions(self) -> list[str]:
        return [g.text for g in self.generations]

    @property
    def ttft_p95_ms(self) -> float | None:
        return _quantile([g.ttft_ms for g in self.generations if g.ttft_ms is not None], 0.95)

    @property
    def tokens_per_s(self) -> float | None:
        rates = [r for g in self.generations if (r := g.tokens_per_s) is not None]
        return float(statistics.median(rates)) if rates else None

    def agreement(self, reference: Sequence[str]) -> float | None:
        """Fraction of images captioned as ``reference`` does (a failed one disagrees); None: unmeasured."""
        if not self.generations:
            return None
        n = min(len(self.generations), len(reference))
        same = sum(
            1 for g, r in zip(self.generations[:n], reference[:n], strict=True) if not g.error and g.text == r
        )
        return same / n if n else None


@dataclass
class CaptionProbe:
    """Streams captions of eval images through one deployed model's own route (before or beside traffic).

    Args:
        api: Vertex AI clients (the HTTP session carries the credentials).
        route: 'invoke' (what a generation deployment uses) or 'private'.
        path: The generator's route, ``/v2/models/<generator>/generate_stream``.
        samples: The encoder inputs of the eval images, first axis samples.
        spec: The generation facts (``eos``, vocabulary).
        count: Images captioned per probe (cycling through the samples).
        timeout_s: Timeout of one streamed request.
    """

    api: VertexApi
    route: str
    path: str
    samples: Mapping[str, np.ndarray]
    spec: GenerationSpec
    count: int
    timeout_s: float

    @property
    def n_samples(self) -> int:
        return len(next(iter(self.samples.values()))) if self.samples else 0

    def run(self, endpoint: aiplatform_v1.Endpoint, deployed: aiplatform_v1.DeployedModel) -> ProbeResult:
        url = smoke_url(self.api, endpoint, deployed, self.route, self.path)
        result = ProbeResult(str(deployed.id), url)
        n = self.n_samples
        session = self.api.http()
        for i in range(self.count if n else 0):
            one = {k: v[i % n : i % n + 1] for k, v in self.samples.items()}
            result.generations.append(stream_generation(session, url, one, self.spec, self.timeout_s))
        return result


@dataclass
class GenerationSmokeResult(SmokeResult):
    """The smoke test of a generation model: every request streamed a caption, and the captions agree.

    Attributes:
        captions: What the canary generated for the eval images.
        reference: What it is compared with (the serving model's captions), empty without one.
        reference_source: Where the reference comes from, or why there is none.
        agreement: Fraction of images with the reference's caption; None without a reference.
        min_agreement: The limit (``canary.min_output_agreement``).
        label_exact_match: Fraction of captions equal to the eval labels' captions (reported, not gated:
            the accuracy gate ran on the selected and served model).
        ttft_p95_ms: p95 time to first token the smoke test saw through the invoke route.
    """

    captions: list[str] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)
    reference_source: str = ""
    agreement: float | None = None
    min_agreement: float = 1.0
    label_exact_match: float | None = None
    ttft_p95_ms: float | None = None

    @property
    def passed(self) -> bool:
        if self.skipped_reason:
            return True
        answered = self.requests > 0 and self.succeeded == self.requests
        return answered and (self.agreement is None or self.agreement >= self.min_agreement)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "captions": self.captions,
            "reference_source": self.reference_source,
            "agreement": self.agreement,
            "min_agreement": self.min_agreement,
            "label_exact_match": self.label_exact_match,
            "ttft_p95_ms": self.ttft_p95_ms,
        }


class GenerationCanary:
    """The generation-aware parts of one canary rollout: its smoke test and its per-window figures.

    :meth:`smoke` has the signature of :func:`~vxdeploy.components.canary.smoke.smoke_test` and
    :meth:`window_stats` is a :class:`~vxdeploy.components.canary.metrics.MetricsSource`, so
    :func:`~vxdeploy.components.canary.rollout.run_canary` runs them unchanged. The smoke test
    captions the eval images through the canary and through the model that serves (the reference,
    taken before any traffic moves); every analysis window then captions them again through each
    deployed model and compares with that reference, beside the error rate and latency that
    ``metrics`` reads. TTFT and decode speed come from the serving side's custom metrics when it
    writes them, else from the probe's own streams.

    Args:
        api: Vertex AI clients.
        endpoint_name: The endpoint.
        spec: The generation facts.
        samples: Encoder inputs of the eval images.
        labels: Their labels (``labels`` of the eval data), or None.
        cfg: The canary section (``min_output_agreement``, ``agreement_samples``, ``max_ttft_ms``).
        route: The resolved smoke-test route.
        path: The generator's generate_stream route.
        metrics: Where requests, errors and latency come from (Cloud Monitoring).
    """

    def __init__(
        self,
        api: VertexApi,
        endpoint_name: str,
        spec: GenerationSpec,
        samples: Mapping[str, np.ndarray],
        labels: np.ndarray | None,
        cfg: CanaryConfig,
        *,
        route: str,
        path: str,
        metrics: MetricsSource,
    ) -> None:
        self.api = api
        self.endpoint_name = endpoint_name
        self.spec = spec
        self.labels = labels
        self.cfg = cfg
        self.route = route
        self.metrics = metrics
        self.probe = CaptionProbe(
            api, route, path, samples, spec, count=cfg.agreement_samples, timeout_s=cfg.smoke_timeout_s
        )
        self.reference: list[str] = []
        self.reference_source = ""

    # -- the smoke test ---------------------------------------------------------------------------

    def smoke(
        self,
        api: VertexApi,
        endpoint: aiplatform_v1.Endpoint,
        deployed: aiplatform_v1.DeployedModel,
        *,
        route: str,
        predict_path: str,
        samples: Mapping[str, np.ndarray],
        count: int,
        timeout_s: float,
    ) -> GenerationSmokeResult:
        """Stream captions of the eval images from the canary and compare them with the serving model's.

        ``count`` (``canary.smoke_requests``) is raised to ``canary.agreement_samples`` so the agreement
        is measured on as many images as every later window. The reference is the serving model's
        captions of the same images; on a first deployment there is none (the labels' exact match is
        reported instead: the accuracy gate already ran on the served model).
        """
        del api, predict_path, samples, timeout_s  # the probe holds them
        result = GenerationSmokeResult(route, min_agreement=self.cfg.min_output_agreement)
        if route == "none":
            result.skipped_reason = "deployment.smoke_test_route resolves to 'none': no per-model route"
            return result
        if count == 0:
            result.skipped_reason = "canary.smoke_requests=0"
            return result
        if self.probe.n_samples == 0:
            result.failures.append("no evaluation samples to caption")
            return result
        canary = self.probe.run(endpoint, deployed)
        result.url = canary.url
        result.requests = len(canary.generations)
        result.succeeded = sum(1 for g in canary.generations if not g.error)
        result.failures = canary.failures
        result.latencies_ms = [g.total_ms for g in canary.generations]
        result.captions = canary.captions
        result.ttft_p95_ms = canary.ttft_p95_ms
        if self.labels is not None and len(self.labels):
            refs = self.spec.references(np.asarray(self.labels)[: self.probe.n_samples])
            n = self.probe.n_samples
            wanted = [refs[i % n] for i in range(len(canary.generations))]
            result.label_exact_match = sum(
                c == r for c, r in zip(canary.captions, wanted, strict=True)
            ) / max(len(wanted), 1)
        self._take_reference(endpoint, str(deployed.id))
        result.reference = self.reference
        result.reference_source = self.reference_source
        if self.reference:
            result.agreement = canary.agreement(self.reference)
            if result.agreement is not None and result.agreement < result.min_agreement:
                differ = [
                    f"image {i}: {c!r} vs {r!r}"
                    for i, (c, r) in enumerate(zip(canary.captions, self.reference, strict=False))
                    if c != r
                ]
                result.failures.append(
                    f"captions agree with {self.reference_source} on {result.agreement:.1%} of "
                    f"{len(canary.generations)} eval images (need >= {result.min_agreement:.1%}): "
                    + "; ".join(differ[:3])
                )
        return result

    def _take_reference(self, endpoint: aiplatform_v1.Endpoint, canary_id: str) -> None:
        """The serving model's captions of the probe's images (the busiest model that serves)."""
        serving = sorted(
            ((v, k) for k, v in endpoint.traffic_split.items() if k != canary_id and v > 0), reverse=True
        )
        for _, dm_id in serving:
            deployed = next((d for d in endpoint.deployed_models if str(d.id) == dm_id), None)
            if deployed is None:
                continue
            probe = self.probe.run(endpoint, deployed)
            if probe.complete:
                self.reference = probe.captions
                self.reference_source = f"serving deployed model {dm_id}"
                return
            self.reference_source = (
                f"none: serving deployed model {dm_id} did not caption every image "
                f"({'; '.join(probe.failures[:2])}), so the canary's captions are not compared"
            )
            return
        self.reference_source = "none: no model served before this rollout"

    # -- the analysis windows ---------------------------------------------------------------------

    def window_stats(
        self, endpoint_id: str, deployed_model_id: str, start: datetime, end: datetime
    ) -> WindowStats:
        """Requests, errors, latency (from ``metrics``) plus caption agreement, TTFT and decode speed."""
        base = self.metrics.window_stats(endpoint_id, deployed_model_id, start, end)
        notes = [base.note] if base.note else []
        agreement: float | None = None
        probe: ProbeResult | None = None
        try:
            endpoint = get_endpoint(self.api, self.endpoint_name)
            deployed = next((d for d in endpoint.deployed_models if str(d.id) == deployed_model_id), None)
            if deployed is None:
                notes.append(f"deployed model {deployed_model_id} is not on the endpoint")
            elif self.route in ("invoke", "private"):
                probe = self.probe.run(endpoint, deployed)
                if self.reference:
                    agreement = probe.agreement(self.reference)
                if probe.failures:
                    notes.append("captions: " + "; ".join(probe.failures[:2]))
        except (gexc.GoogleAPICallError, ValueError) as exc:
            notes.append(f"caption probe failed: {exc}")
        ttft, rate, source = None, None, ""
        reader = getattr(self.metrics, "generation_stats", None)
        if reader is not None:
            try:
                ttft, rate = reader(endpoint_id, deployed_model_id, start, end)
            except gexc.GoogleAPICallError as exc:
                notes.append(f"generation metrics query failed: {exc}")
            if ttft is not None:
                source = "serving side's generation metrics"
        if ttft is None and probe is not None and probe.ttft_p95_ms is not None:
            ttft, rate, source = probe.ttft_p95_ms, probe.tokens_per_s, "the canary's own streams"
        return WindowStats(
            requests=base.requests,
            errors=base.errors,
            p99_latency_ms=base.p99_latency_ms,
            note="; ".join(notes),
            generation=True,
            output_agreement=agreement,
            agreement_expected=bool(self.reference),
            ttft_p95_ms=ttft,
            tokens_per_s=rate,
            generation_source=source,
        )


__all__ = [
    "GENERATE_STREAM",
    "CaptionProbe",
    "GenerationCanary",
    "GenerationSmokeResult",
    "ProbeResult",
    "StreamedGeneration",
    "generate_request",
    "generate_stream_route",
    "is_generate_stream_route",
    "require_invoke_route",
    "sse_events",
    "stream_generation",
    "token_ids",
]
