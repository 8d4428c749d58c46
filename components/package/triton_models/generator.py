"""Triton Python-backend (BLS) generator of a multi-part generation model, streaming one token at a time.

This file is copied verbatim to ``<generator>/<version>/model.py``. The model is *decoupled*: each
request gets one response per generated token (``output_ids`` [n, 1] and its ``text`` piece, the first
response also ``encode_ms``), then an empty response carrying the final flag. It runs the parts, each a
model of the same repository, through ``pb_utils.InferenceRequest``: the vision encoder (whose response
cache makes a repeated image skip encoding), the projector, the decoder's prefill, then the decoder's
step in a greedy loop, the ``present_*`` outputs of one call fed as the ``past_*`` inputs of the next.
The requests of one dynamic batch generate together (one batched call per part and step); each request's
stream ends as soon as all of its sequences have generated ``eos``. Each image input may also come as
``<input>_flat``, its values as one list (all Triton's generate extension can send), reshaped here.

Everything it needs comes from the config's parameters (written by
:mod:`vxdeploy.components.generation.serving`): ``wiring`` (JSON: the part model per role and the tensor
names between them) and ``generation`` (JSON: bos/eos/pad ids, ``max_new_tokens``, ``vocabulary``).
Text is decoded the way ``GenerationSpec.decode`` does (vocabulary words joined by spaces, stopping at
``eos``, skipping ``bos``/``pad``); each response's ``text`` is what the new token adds to the caption.

Generation metrics: each request's time to first token and whole-generation time (from the moment its
batch reaches the generator; Triton's ``nv_inference_queue_duration_us`` has the wait before that)
and its decode speed (tokens after the first per second) are Triton custom metrics (histograms
``vxdeploy_generation_time_to_first_token_ms``, ``vxdeploy_generation_tokens_per_second``,
``vxdeploy_generation_latency_ms``; counters ``vxdeploy_generation_tokens_total``,
``vxdeploy_generation_failures_total``, ``vxdeploy_generation_metrics_export_errors_total``) on
Triton's metrics port. Where the serving container's environment asks for it (on Vertex AI, see
:mod:`vxdeploy.components.monitoring.generation_export`), a background thread also writes them to
Cloud Monitoring; it is imported only then, and nothing a request does waits on it.
"""

from __future__ import annotations

import json
import os
import site
import sys
import time
from typing import Any

# Triton's Python stub embeds the base interpreter, which ignores PYTHONPATH; the serve check
# names the project's site-packages here so numpy imports (see python_model.py).
for _path in reversed([p for p in os.environ.get("VXDEPLOY_PYTHON_PATHS", "").split(os.pathsep) if p]):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _numpy(tensor: Any) -> np.ndarray:
    """A part's output as NumPy (DLPack: NumPy-1 builds of the backend misread NumPy 2 arrays)."""
    if tensor.is_cpu():
        return np.array(np.from_dlpack(tensor))
    from torch.utils.dlpack import from_dlpack  # a GPU tensor (a TensorRT part on KIND_GPU): to the host

    return np.asarray(from_dlpack(tensor.to_dlpack()).cpu().numpy())


def _tensor(name: str, array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return pb_utils.Tensor(name, array)
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


def _renamed(name: str, tensor: Any) -> Any:
    """A part's output tensor as another part's input, without copying its data."""
    return pb_utils.Tensor.from_dlpack(name, tensor.to_dlpack())


class _Decoder:
    """Token ids -> caption text, as ``GenerationSpec.decode``."""

    def __init__(self, generation: dict[str, Any]) -> None:
        self.vocabulary = [str(v) for v in generation["vocabulary"]]
        self.bos = int(generation["bos_token_id"])
        self.eos = int(generation["eos_token_id"])
        self.pad = int(generation["pad_token_id"])

    def decode(self, ids: list[int]) -> str:
        words: list[str] = []
        for t in ids:
            if t == self.eos:
                break
            if t not in (self.pad, self.bos) and 0 <= t < len(self.vocabulary):
                words.append(self.vocabulary[t])
        return " ".join(words)

    def piece(self, before: list[int], token: int) -> str:
        """What ``token`` adds to the text of ``before`` (the pieces of a stream join to the caption)."""
        old, new = self.decode(before), self.decode([*before, token])
        return new[len(old) :] if new.startswith(old) else new


class _Stream:
    """One request of a batch: its rows, its response sender, the tokens it has so far."""

    def __init__(self, request: Any, start: int, stop: int, received_s: float) -> None:
        self.sender = request.get_response_sender()
        self.start, self.stop = start, stop
        self.tokens: list[list[int]] = [[] for _ in range(stop - start)]
        self.open = True
        self.sent = 0
        self.received_s = received_s
        self.first_s = self.last_s = received_s

    def close(self) -> None:
        if self.open:
            self.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            self.open = False

    def fail(self, message: str) -> None:
        if self.open:
            self.sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            self.open = False


_MS_BUCKETS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0]
_RATE_BUCKETS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0]


class _Metrics:
    """The generator's Triton custom metrics (Prometheus, on the metrics port)."""

    def __init__(self, labels: dict[str, str]) -> None:
        family = pb_utils.MetricFamily
        self.families = [
            family(
                name="vxdeploy_generation_time_to_first_token_ms",
                description="Milliseconds from the generator receiving a request to its first token",
                kind=family.HISTOGRAM,
            ),
            family(
                name="vxdeploy_generation_tokens_per_second",
                description="Decode speed of one generation: tokens after the first per second",
                kind=family.HISTOGRAM,
            ),
            family(
                name="vxdeploy_generation_latency_ms",
                description="Milliseconds from the generator receiving a request to its final response",
                kind=family.HISTOGRAM,
            ),
            family(
                name="vxdeploy_generation_tokens_total",
                description="Tokens streamed (one per image per response)",
                kind=family.COUNTER,
            ),
            family(
                name="vxdeploy_generation_failures_total",
                description="Requests that ended with an error response",
                kind=family.COUNTER,
            ),
            family(
                name="vxdeploy_generation_metrics_export_errors_total",
                description="Failed writes of the generation metrics to Cloud Monitoring",
                kind=family.COUNTER,
            ),
        ]
        ttft, rate, total, tokens, failures, export = self.families
        self.ttft = ttft.Metric(labels=labels, buckets=_MS_BUCKETS)
        self.rate = rate.Metric(labels=labels, buckets=_RATE_BUCKETS)
        self.total = total.Metric(labels=labels, buckets=_MS_BUCKETS)
        self.tokens = tokens.Metric(labels=labels)
        self.failures = failures.Metric(labels=labels)
        self.export_errors = export.Metric(labels=labels)

    def close(self) -> None:
        """Metrics go before their families (the backend's rule)."""
        for name in ("ttft", "rate", "total", "tokens", "failures", "export_errors"):
            delattr(self, name)
        self.families = []


def _start_exporter() -> Any:
    """The Cloud Monitoring exporter the environment asks for (None: off); errors only logged."""
    logger = pb_utils.Logger
    try:
        from vxdeploy.components.monitoring.generation_export import start_exporter
    except ImportError:
        # The embedded interpreter reads no .pth files of the paths it was given (an editable install).
        for path in [p for p in os.environ.get("VXDEPLOY_PYTHON_PATHS", "").split(os.pathsep) if p]:
            site.addsitedir(path)
        try:
            from vxdeploy.components.monitoring.generation_export import start_exporter
        except ImportError as exc:
            logger.log_warn(f"generation metrics export off: vxdeploy cannot be imported here ({exc})")
            return None
    try:
        exporter, why = start_exporter()
    except Exception as exc:  # never keep the model from loading
        logger.log_warn(f"generation metrics export off: {type(exc).__name__}: {exc}")
        return None
    if exporter is None:
        logger.log_info(f"generation metrics export: {why}")
        return None
    logger.log_info(f"generation metrics export: on ({exporter.target.endpoint.resource_name})")
    return exporter


class TritonPythonModel:
    """Triton's entry point: ``initialize`` once per instance, ``execute`` per batch of requests."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ValueError("the generator streams tokens: set model_transaction_policy { decoupled: true }")
        params = config.get("parameters", {})
        self.wiring = json.loads(params["wiring"]["string_value"])
        generation = json.loads(params["generation"]["string_value"])
        self.text = _Decoder(generation)
        self.max_new_tokens = int(generation["max_new_tokens"])
        # <input>_flat -> element shape: the flat list Triton's generate extension sends for an image.
        self.flat = {k: [int(d) for d in v] for k, v in self.wiring.get("flat_inputs", {}).items()}
        self.image_inputs = [t["name"] for t in config["input"] if t["name"] not in self.flat]
        # "false" where the Python backend was built against NumPy 1 but runs NumPy 2 (the serve check's
        # bundled stand-in): it would send empty BYTES tensors, and DLPack has no text type around it.
        self.send_text = params.get("send_text", {}).get("string_value", "true") != "false"
        labels = {"model": args.get("model_name", ""), "version": args.get("model_version", "")}
        try:
            self.metrics: _Metrics | None = _Metrics(labels)
        except Exception as exc:  # metrics off in this server (--allow-metrics=false): serve anyway
            pb_utils.Logger.log_warn(f"generation metrics not registered: {exc}")
            self.metrics = None
        self.exporter = _start_exporter()
        self._export_errors = 0

    def finalize(self) -> None:
        if self.exporter is not None:
            self.exporter.stop(timeout_s=5.0)
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _observe(self, stream: _Stream) -> None:
        """One finished generation into the metrics (and the export buffer)."""
        done = time.perf_counter()
        ttft_ms = (stream.first_s - stream.received_s) * 1e3
        total_ms = (done - stream.received_s) * 1e3
        span = stream.last_s - stream.first_s
        rate = (stream.sent - 1) / span if stream.sent > 1 and span > 0 else None
        try:
            if self.metrics is not None:
                self.metrics.ttft.observe(ttft_ms)
                self.metrics.total.observe(total_ms)
                if rate is not None:
                    self.metrics.rate.observe(rate)
                self.metrics.tokens.increment(stream.sent * (stream.stop - stream.start))
            if self.exporter is not None:
                self.exporter.record(ttft_ms, rate, total_ms)
        except Exception as exc:  # a metric never fails a generation
            pb_utils.Logger.log_warn(f"generation metrics: {exc}")

    def _sync_export_errors(self) -> None:
        if self.exporter is None or self.metrics is None:
            return
        errors = self.exporter.errors
        if errors > self._export_errors:
            self.metrics.export_errors.increment(errors - self._export_errors)
            self._export_errors = errors

    def _call(self, role: str, inputs: list[Any], outputs: list[str]) -> list[Any]:
        request = pb_utils.InferenceRequest(
            model_name=self.wiring["parts"][role], requested_output_names=outputs, inputs=inputs
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{role} ({self.wiring['parts'][role]}): {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name) for name in outputs]

    def _images(self, request: Any) -> dict[str, np.ndarray]:
        """A request's encoder inputs, [n, ...] each: sent as tensors, or flat (``<input>_flat``)."""
        out: dict[str, np.ndarray] = {}
        for name in self.image_inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                out[name] = np.array(np.from_dlpack(tensor))
                continue
            flat_name = name + "_flat"
            flat = pb_utils.get_input_tensor_by_name(request, flat_name) if flat_name in self.flat else None
            if flat is None:
                also = f" or {flat_name!r} (its values as one list)" if flat_name in self.flat else ""
                raise ValueError(f"the request has no {name!r}; send {name!r}{also}")
            values = np.array(np.from_dlpack(flat))
            dims = self.flat[flat_name]
            size = int(np.prod(dims))
            if values.size == 0 or values.size % size:
                raise ValueError(
                    f"{flat_name!r} has {values.size} values; it holds {name!r} of shape {dims} "
                    f"({size} values each)"
                )
            out[name] = values.reshape(-1, *dims)
        return out

    def execute(self, requests: list[Any]) -> None:
        received = time.perf_counter()
        self._sync_export_errors()
        feeds, accepted = [], []
        for request in requests:
            try:
                feeds.append(self._images(request))
                accepted.append(request)
            except ValueError as exc:  # this request only: an error response, final
                self._failed(1)  # counted first: a client reading the metrics after the error sees it
                request.get_response_sender().send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        requests = accepted
        groups: list[list[int]] = []  # requests whose images stack into one batch
        for i, feed in enumerate(feeds):
            for group in groups:
                first = feeds[group[0]]
                if all(first[n].shape[1:] == feed[n].shape[1:] for n in self.image_inputs):
                    group.append(i)
                    break
            else:
                groups.append([i])
        for group in groups:
            rows = [len(feeds[i][self.image_inputs[0]]) for i in group]
            bounds = np.cumsum([0, *rows])
            streams = [
                _Stream(requests[i], int(a), int(b), received)
                for i, a, b in zip(group, bounds[:-1], bounds[1:], strict=True)
            ]
            images = {n: np.concatenate([feeds[i][n] for i in group]) for n in self.image_inputs}
            try:
                self._generate(images, streams, int(bounds[-1]))
            except Exception as exc:  # every open stream of the batch gets the error
                self._failed(sum(s.open for s in streams))
                for stream in streams:
                    stream.fail(str(exc))
        return None

    def _failed(self, n: int) -> None:
        if self.metrics is not None and n:
            try:
                self.metrics.failures.increment(n)
            except Exception as exc:
                pb_utils.Logger.log_warn(f"generation metrics: {exc}")

    def _generate(self, images: dict[str, np.ndarray], streams: list[_Stream], batch: int) -> None:
        w = self.wiring
        start = time.perf_counter()
        (features,) = self._call(
            "vision_encoder", [_tensor(n, a) for n, a in images.items()], [w["features"]]
        )
        if "projector" in w["parts"]:
            (features,) = self._call(
                "projector", [_renamed(w["projector_input"], features)], [w["projector_output"]]
            )
        encode_ms = (time.perf_counter() - start) * 1e3
        ids = np.full((batch, 1), self.text.bos, dtype=np.int64)
        present = w["present"]
        outs = self._call(
            "decoder_prefill",
            [_renamed(w["image_tokens"], features), _tensor(w["input_ids"], ids)],
            [w["logits"], *present],
        )
        done = np.zeros(batch, dtype=bool)
        for n in range(self.max_new_tokens):
            logits = _numpy(outs[0]).reshape(batch, -1)
            next_ids = logits.argmax(-1).astype(np.int64)
            next_ids = np.where(done, self.text.pad, next_ids)
            done |= next_ids == self.text.eos
            last = n == self.max_new_tokens - 1
            for stream in streams:
                if stream.open:
                    self._respond(stream, next_ids, encode_ms)
                    if done[stream.start : stream.stop].all() or last:
                        # Observed before the final response: a client that reads the metrics once
                        # its stream ends finds this generation counted.
                        self._observe(stream)
                        stream.close()
            if done.all() or last:
                break
            step_ids = next_ids.reshape(batch, 1)
            past = [_renamed(p, t) for p, t in zip(w["past"], outs[1:], strict=True)]
            outs = self._call(
                "decoder_step", [_tensor(w["input_ids"], step_ids), *past], [w["logits"], *present]
            )

    def _respond(self, stream: _Stream, next_ids: np.ndarray, encode_ms: float) -> None:
        rows = next_ids[stream.start : stream.stop]
        pieces = []
        for j, token in enumerate(rows.tolist()):
            pieces.append(self.text.piece(stream.tokens[j], token).encode())
            stream.tokens[j].append(token)
        shape = (len(rows), 1)
        tensors = [_tensor("output_ids", rows.reshape(shape).astype(np.int64))]
        if self.send_text:
            tensors.append(_tensor("text", np.array(pieces, dtype=np.object_).reshape(shape)))
        if stream.sent == 0:
            tensors.append(_tensor("encode_ms", np.full(shape, encode_ms, dtype=np.float32)))
        stream.sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
        stream.last_s = time.perf_counter()
        if stream.sent == 0:
            stream.first_s = stream.last_s
        stream.sent += 1
