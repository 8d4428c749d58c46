"""A served generation model for the Vertex AI fake: Triton's generate_stream answered from real ONNX parts.

:class:`CaptionServer` is what a deployed generator does with one ``/v2/models/<m>/generate_stream``
request: it runs the parts' ONNX files in ONNX Runtime through the one greedy loop
(:class:`~vxdeploy.components.generation.loop.OnnxParts`) and answers one event per token, as the
decoupled BLS generator streams them (``output_ids`` and ``text`` per response). With
``wrong_captions`` it is a broken version that still answers: each digit word is replaced by the
next digit's (what a mis-calibrated encoder does), so only a check of the text catches it.

Set it on a deployed model with :func:`generation_profile` (a ``ServingProfile``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tests.fakes.vertex import ServingProfile
from vxdeploy.components.generation.loop import OnnxParts
from vxdeploy.components.generation.spec import GenerationSpec


class CaptionServer:
    """Answers generate requests with captions of a real ONNX generation.

    Args:
        onnx_paths: Part (or role) -> ONNX file.
        spec: The generation facts.
        model_name: The generator's name in the answers.
        wrong_captions: Answer the caption of the next digit instead (a fault that still answers).
    """

    def __init__(
        self,
        onnx_paths: Mapping[str, str | Path],
        spec: GenerationSpec,
        *,
        model_name: str = "generator",
        wrong_captions: bool = False,
    ) -> None:
        self.parts = OnnxParts(onnx_paths, spec)
        self.spec = spec
        self.model_name = model_name
        self.wrong_captions = wrong_captions
        self.input_names = list(self.parts.image_inputs)
        encoder = self.parts.sessions["vision_encoder"]
        self.fixed_dims = {i.name: [int(d) for d in i.shape[1:]] for i in encoder.get_inputs()}
        self.requests = 0

    def tokens(self, images: Mapping[str, np.ndarray]) -> list[int]:
        """The generated ids of one sample, up to and including ``eos``."""
        row = self.parts.generate(dict(images)).tokens[0].tolist()
        out: list[int] = []
        for t in row:
            out.append(int(t))
            if t == self.spec.eos_token_id:
                break
        if self.wrong_captions:
            out = [self._next_word(t) for t in out]
        return out

    def _next_word(self, token: int) -> int:
        spec = self.spec
        special = {spec.pad_token_id, spec.bos_token_id, spec.eos_token_id}
        # The digit words: every token but the special ones and the caption's first word ("digit").
        words = [i for i in range(len(spec.vocabulary)) if i not in special][1:]
        if token in words:
            return words[(words.index(token) + 1) % len(words)]
        return token

    def __call__(self, body: Mapping[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        """(HTTP status, the events) for one generate request body."""
        self.requests += 1
        missing = [n for n in self.input_names if n not in body]
        if missing:
            return 400, [{"error": f"generate request lacks input(s) {missing}"}]
        # As Triton's generate extension does: a flat list, shaped by the input's fixed dimensions.
        images: dict[str, np.ndarray] = {}
        for name, fixed in self.fixed_dims.items():
            flat = np.asarray(body[name], dtype=np.float32)
            if flat.ndim != 1 or flat.size % int(np.prod(fixed)):
                return 400, [
                    {"error": f"The schema can not convert input '{name}' to tensor with proper shape"}
                ]
            images[name] = flat.reshape(-1, *fixed)
            if images[name].shape[0] != 1:
                return 400, [{"error": f"expected one image per request, got {images[name].shape[0]}"}]
        return 200, [
            {
                "model_name": self.model_name,
                "model_version": "1",
                "output_ids": [t],
                "text": self.spec.vocabulary[t] if 0 <= t < len(self.spec.vocabulary) else "",
            }
            for t in self.tokens(images)
        ]


def generation_profile(
    server: CaptionServer, *, ttft_ms: float = 40.0, tokens_per_s: float = 200.0, **kwargs: Any
) -> ServingProfile:
    """A serving profile whose generate_stream route streams ``server``'s captions.

    ``ttft_ms`` and ``tokens_per_s`` are what the serving side reports in its generation metrics
    (the traffic simulator writes them); ``kwargs`` go to :class:`ServingProfile`.
    """
    return ServingProfile(generator=server, ttft_ms=ttft_ms, tokens_per_s=tokens_per_s, **kwargs)
