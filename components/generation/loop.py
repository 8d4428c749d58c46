"""The one greedy generation loop, and running a generation model's parts with it.

Every runtime (PyTorch programs, ONNX Runtime sessions, a Triton client) supplies three NumPy-in,
NumPy-out callables -- ``encode(images) -> image_tokens``, ``prefill(image_tokens, input_ids) ->
(logits, cache)`` and ``step(input_ids, cache) -> (logits, cache)`` -- and :func:`greedy_generate`
runs them; the cache is opaque to the loop. :func:`run_parts_onnx` / :class:`OnnxParts` and
:func:`run_parts_torch` build those callables from the parts' files by the tensor names of the
role contract (:mod:`vxdeploy.components.generation.spec`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vxdeploy.components.common.errors import DataError, ModelIntakeError
from vxdeploy.components.generation.spec import (
    IMAGE_TOKENS,
    INPUT_IDS,
    LOGITS,
    PAST_PREFIX,
    PRESENT_PREFIX,
    GenerationSpec,
)

if TYPE_CHECKING:
    from vxdeploy.components.common.signature import ModelSignature

Images = np.ndarray | Mapping[str, np.ndarray]
"""The vision encoder's input: one array (a single-input encoder) or input name -> array."""


@dataclass(frozen=True)
class Generation:
    """Greedy captions of a batch and how long each phase took (wall clock, the whole batch).

    Attributes:
        tokens: (B, max_new_tokens) generated ids, ``pad`` after each sequence's ``eos``.
        texts: The captions.
        encode_ms: Vision encoder plus projector.
        ttft_ms: Time to first token: encode, project and prefill, from the call's start.
        tokens_per_s: Decode steps per second after the first token (tokens per second per sequence).
        total_ms: The whole generation.
    """

    tokens: np.ndarray
    texts: list[str]
    encode_ms: float
    ttft_ms: float
    tokens_per_s: float
    total_ms: float


def batch_size(images: Images) -> int:
    """Rows of the encoder input (the first array of a mapping)."""
    if isinstance(images, Mapping):
        if not images:
            raise DataError("no encoder inputs given; pass the images (one array per encoder input)")
        return len(next(iter(images.values())))
    return len(images)


def greedy_generate(
    encode: Callable[[Images], Any],
    prefill: Callable[[Any, np.ndarray], tuple[np.ndarray, Any]],
    step: Callable[[np.ndarray, Any], tuple[np.ndarray, Any]],
    images: Images,
    spec: GenerationSpec,
    max_new_tokens: int | None = None,
) -> Generation:
    """Greedy decoding of one batch: encode, prefill from ``bos``, step until ``eos`` or the limit.

    Args:
        encode: Images -> image tokens (vision encoder then projector).
        prefill: (image tokens, ``bos`` ids [B, 1] int64) -> (logits [B, vocab], cache).
        step: (last ids [B, 1] int64, cache) -> (logits, cache).
        images: The encoder's input(s).
        spec: Special tokens, vocabulary and the default ``max_new_tokens``.
        max_new_tokens: Overrides ``spec.max_new_tokens``.

    Returns:
        Tokens, texts and phase timings.
    """
    limit = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    b = batch_size(images)
    start = time.perf_counter()
    image_tokens = encode(images)
    encoded = time.perf_counter()
    logits, cache = prefill(image_tokens, np.full((b, 1), spec.bos_token_id, dtype=np.int64))
    out = np.full((b, limit), spec.pad_token_id, dtype=np.int64)
    done = np.zeros(b, dtype=bool)
    next_ids = np.asarray(logits).argmax(-1).astype(np.int64)
    first = time.perf_counter()
    n = 0
    for n in range(limit):
        out[:, n] = np.where(done, spec.pad_token_id, next_ids)
        done |= next_ids == spec.eos_token_id
        if done.all() or n == limit - 1:
            break
        logits, cache = step(next_ids[:, None], cache)
        next_ids = np.asarray(logits).argmax(-1).astype(np.int64)
    end = time.perf_counter()
    return Generation(
        tokens=out,
        texts=[spec.decode(row.tolist()) for row in out],
        encode_ms=(encoded - start) * 1e3,
        ttft_ms=(first - start) * 1e3,
        tokens_per_s=n / (end - first) if n and end > first else 0.0,
        total_ms=(end - start) * 1e3,
    )


def exact_match(texts: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of captions equal to their reference (x100 = points)."""
    if len(texts) != len(references):
        raise DataError(f"{len(texts)} captions for {len(references)} references; give one per image")
    return sum(t == r for t, r in zip(texts, references, strict=True)) / len(texts) if texts else 0.0


def agreement(tokens: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of rows whose token sequences are identical."""
    a, r = np.asarray(tokens), np.asarray(reference)
    if a.shape != r.shape:
        raise DataError(f"token arrays of shapes {list(a.shape)} and {list(r.shape)} cannot be compared")
    return float((a == r).all(axis=1).mean()) if len(a) else 0.0


def generate_batched(
    run: Callable[[Images], Generation], images: Images, spec: GenerationSpec, batch: int = 64
) -> Generation:
    """Run ``run`` over ``images`` in batches of ``batch`` rows; tokens/texts concatenated, times summed."""
    n = batch_size(images)
    gens = []
    for i in range(0, n, batch):
        chunk: Images = (
            {k: v[i : i + batch] for k, v in images.items()}
            if isinstance(images, Mapping)
            else images[i : i + batch]
        )
        gens.append(run(chunk))
    if not gens:
        return Generation(np.zeros((0, spec.max_new_tokens), np.int64), [], 0.0, 0.0, 0.0, 0.0)
    steps = sum(g.tokens_per_s * max(g.total_ms - g.ttft_ms, 0.0) / 1e3 for g in gens)
    decode_s = sum(max(g.total_ms - g.ttft_ms, 0.0) for g in gens) / 1e3
    return Generation(
        tokens=np.concatenate([g.tokens for g in gens]),
        texts=[t for g in gens for t in g.texts],
        encode_ms=sum(g.encode_ms for g in gens),
        ttft_ms=sum(g.ttft_ms for g in gens),
        tokens_per_s=steps / decode_s if decode_s > 0 else 0.0,
        total_ms=sum(g.total_ms for g in gens),
    )


def _past_for(present: Sequence[str]) -> list[str]:
    return [PAST_PREFIX + n[len(PRESENT_PREFIX) :] for n in present]


class OnnxParts:
    """ONNX Runtime sessions of a generation model's parts, wired by the role contract's tensor names.

    Args:
        paths: Role or part name -> ONNX file of each part (mixed precisions are fine: an INT8 encoder
            with FP32 decoder parts).
        spec: The model's generation facts.
        providers: ONNX Runtime execution providers, in order of preference.
        session_options: Options for every session (default: warnings off).

    Raises:
        ModelIntakeError: a part is missing or its tensors do not follow the role contract.
    """

    def __init__(
        self,
        paths: Mapping[str, str | Path],
        spec: GenerationSpec,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        session_options: Any = None,
    ) -> None:
        import onnxruntime as ort

        self.spec = spec
        by_role = spec.by_role(paths)
        missing = [r for r in spec.roles if r not in by_role]
        if missing:
            raise ModelIntakeError(
                f"no ONNX file for role(s) {missing} (parts {[spec.part(r) for r in missing]}); "
                f"give one for each of {spec.part_names}"
            )
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.log_severity_level = 3
        self.sessions = {
            r: ort.InferenceSession(str(by_role[r]), session_options, providers=list(providers))
            for r in spec.roles
        }
        enc = self.sessions["vision_encoder"]
        self.image_inputs = [i.name for i in enc.get_inputs()]
        self.features = enc.get_outputs()[0].name
        proj = self.sessions.get("projector")
        self.projector_io = (proj.get_inputs()[0].name, proj.get_outputs()[0].name) if proj else None
        pre, stp = self.sessions["decoder_prefill"], self.sessions["decoder_step"]
        pre_in = [i.name for i in pre.get_inputs()]
        if INPUT_IDS not in pre_in or len(pre_in) != 2:
            raise ModelIntakeError(
                f"part {spec.part('decoder_prefill')} (decoder_prefill) has inputs {pre_in}; it needs "
                f"{[IMAGE_TOKENS, INPUT_IDS]} (the image tokens and the bos ids)"
            )
        self.prefill_tokens = next(n for n in pre_in if n != INPUT_IDS)
        self.present = [o.name for o in pre.get_outputs() if o.name.startswith(PRESENT_PREFIX)]
        pre_out = [o.name for o in pre.get_outputs()]
        step_in = {i.name for i in stp.get_inputs()}
        step_out = [o.name for o in stp.get_outputs()]
        past = _past_for(self.present)
        if (
            LOGITS not in pre_out
            or LOGITS not in step_out
            or step_in != {INPUT_IDS, *past}
            or set(self.present) - set(step_out)
        ):
            raise ModelIntakeError(
                f"the decoder parts do not follow the cache contract: prefill outputs {pre_out}, step inputs "
                f"{sorted(step_in)}, step outputs {step_out}; the prefill and the step output {LOGITS!r} and "
                f"present_<x>, the step takes {INPUT_IDS!r} and past_<x> for each present_<x>"
            )
        self.past = past

    def encode(self, images: Images) -> np.ndarray:
        """Vision encoder (then projector): images -> image tokens."""
        feeds = dict(images) if isinstance(images, Mapping) else {self.image_inputs[0]: images}
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        (feats,) = self.sessions["vision_encoder"].run([self.features], feeds)
        if self.projector_io is None:
            out: np.ndarray = feats
            return out
        (tokens,) = self.sessions["projector"].run([self.projector_io[1]], {self.projector_io[0]: feats})
        result: np.ndarray = tokens
        return result

    def prefill(self, image_tokens: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Image tokens and ``bos`` ids -> logits and the cache."""
        logits, *present = self.sessions["decoder_prefill"].run(
            [LOGITS, *self.present], {self.prefill_tokens: image_tokens, INPUT_IDS: ids}
        )
        return logits, present

    def step(self, ids: np.ndarray, cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decode step."""
        feeds = {INPUT_IDS: ids, **dict(zip(self.past, cache, strict=True))}
        logits, *present = self.sessions["decoder_step"].run([LOGITS, *self.present], feeds)
        return logits, present

    def generate(self, images: Images, max_new_tokens: int | None = None) -> Generation:
        """Greedy captions of one batch."""
        return greedy_generate(self.encode, self.prefill, self.step, images, self.spec, max_new_tokens)


def run_parts_onnx(
    paths: Mapping[str, str | Path],
    images: Images,
    spec: GenerationSpec,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Generation:
    """Greedy captions with each part's ONNX file in ONNX Runtime (see :class:`OnnxParts`)."""
    return OnnxParts(paths, spec, providers).generate(images)


class TorchParts:
    """PyTorch modules or ``torch.export`` programs of the parts, wired like :class:`OnnxParts`.

    Args:
        modules: Role or part name -> ``nn.Module``, ``ExportedProgram`` or a ``.pt2`` path.
        spec: The model's generation facts.
        image_inputs: The encoder's input names, in its argument order (for mapping inputs).
    """

    def __init__(
        self, modules: Mapping[str, Any], spec: GenerationSpec, image_inputs: Sequence[str] = ()
    ) -> None:
        import torch

        self.spec = spec
        self.image_inputs = list(image_inputs)
        self.modules: dict[str, Any] = {}
        for role, m in spec.by_role(modules).items():
            if isinstance(m, str | Path):
                m = torch.export.load(str(m))
            if isinstance(m, torch.export.ExportedProgram):
                m = m.module()
            self.modules[role] = m

    @staticmethod
    def _np(t: Any) -> np.ndarray:
        out: np.ndarray = t.detach().numpy()
        return out

    def encode(self, images: Images) -> np.ndarray:
        import torch

        if isinstance(images, Mapping):
            names = self.image_inputs or list(images)
            args = [torch.from_numpy(np.ascontiguousarray(images[n])) for n in names]
        else:
            args = [torch.from_numpy(np.ascontiguousarray(images))]
        with torch.no_grad():
            feats = self.modules["vision_encoder"](*args)
            if "projector" in self.modules:
                feats = self.modules["projector"](feats)
        return self._np(feats)

    def prefill(self, image_tokens: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        import torch

        with torch.no_grad():
            logits, *present = self.modules["decoder_prefill"](
                torch.from_numpy(image_tokens), torch.from_numpy(ids)
            )
        return self._np(logits), present

    def step(self, ids: np.ndarray, cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        import torch

        with torch.no_grad():
            logits, *present = self.modules["decoder_step"](torch.from_numpy(ids), *cache)
        return self._np(logits), present

    def generate(self, images: Images, max_new_tokens: int | None = None) -> Generation:
        """Greedy captions of one batch."""
        return greedy_generate(self.encode, self.prefill, self.step, images, self.spec, max_new_tokens)


def run_parts_torch(
    modules: Mapping[str, Any], images: Images, spec: GenerationSpec, image_inputs: Sequence[str] = ()
) -> Generation:
    """Greedy captions with the parts in PyTorch (see :class:`TorchParts`)."""
    return TorchParts(modules, spec, image_inputs).generate(images)


class NamedRunner(Protocol):
    """What :class:`RunnerParts` needs of a part: ``run(named inputs) -> named outputs``.

    Every :mod:`vxdeploy.components.verify.runners` runner fits.
    """

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class RunnerParts:
    """Any runners of the parts (PyTorch, ONNX Runtime, TensorRT, Triton), wired by tensor names.

    Args:
        runners: Role or part name -> a runner with ``run(feeds) -> outputs`` by name.
        signatures: Role or part name -> the part's signature (input and output names).
        spec: The model's generation facts.

    Raises:
        ModelIntakeError: the signatures do not follow the role contract.
    """

    def __init__(
        self,
        runners: Mapping[str, NamedRunner],
        signatures: Mapping[str, ModelSignature],
        spec: GenerationSpec,
    ) -> None:
        self.spec = spec
        self.runners: dict[str, NamedRunner] = spec.by_role(runners)
        sigs = spec.by_role(signatures)
        missing = [r for r in spec.roles if r not in self.runners or r not in sigs]
        if missing:
            raise ModelIntakeError(f"no runner or signature for role(s) {missing}; give one per part")
        self.image_inputs = sigs["vision_encoder"].input_names
        self.features = sigs["vision_encoder"].output_names[0]
        proj = sigs.get("projector")
        self.projector_io = (proj.input_names[0], proj.output_names[0]) if proj else None
        pre = sigs["decoder_prefill"]
        self.prefill_tokens = next((n for n in pre.input_names if n != INPUT_IDS), IMAGE_TOKENS)
        self.present = [n for n in pre.output_names if n.startswith(PRESENT_PREFIX)]
        self.past = _past_for(self.present)
        step_in = set(sigs["decoder_step"].input_names)
        if INPUT_IDS not in pre.input_names or step_in != {INPUT_IDS, *self.past}:
            raise ModelIntakeError(
                f"the decoder parts do not follow the cache contract: prefill inputs {pre.input_names}, "
                f"step inputs {sorted(step_in)}; the step takes {INPUT_IDS!r} and past_<x> per present_<x>"
            )

    def encode(self, images: Images) -> np.ndarray:
        """Vision encoder (then projector): images -> image tokens."""
        feeds = dict(images) if isinstance(images, Mapping) else {self.image_inputs[0]: images}
        feats = self.runners["vision_encoder"].run(feeds)[self.features]
        if self.projector_io is None:
            return feats
        return self.runners["projector"].run({self.projector_io[0]: feats})[self.projector_io[1]]

    def prefill(self, image_tokens: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Image tokens and ``bos`` ids -> logits and the cache."""
        out = self.runners["decoder_prefill"].run({self.prefill_tokens: image_tokens, INPUT_IDS: ids})
        return out[LOGITS], [out[n] for n in self.present]

    def step(self, ids: np.ndarray, cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decode step."""
        out = self.runners["decoder_step"].run({INPUT_IDS: ids, **dict(zip(self.past, cache, strict=True))})
        return out[LOGITS], [out[n] for n in self.present]

    def part_inputs(self, images: Images) -> dict[str, dict[str, np.ndarray]]:
        """Real inputs of every part: ``images`` run through the earlier parts (role -> named inputs).

        The step's inputs are the first greedy token and the prefill's cache.
        """
        feeds = dict(images) if isinstance(images, Mapping) else {self.image_inputs[0]: images}
        out: dict[str, dict[str, np.ndarray]] = {"vision_encoder": feeds}
        feats = self.runners["vision_encoder"].run(feeds)[self.features]
        tokens = feats
        if self.projector_io is not None:
            out["projector"] = {self.projector_io[0]: feats}
            tokens = self.runners["projector"].run(out["projector"])[self.projector_io[1]]
        ids = np.full((batch_size(images), 1), self.spec.bos_token_id, dtype=np.int64)
        out["decoder_prefill"] = {self.prefill_tokens: tokens, INPUT_IDS: ids}
        logits, cache = self.prefill(tokens, ids)
        first = np.asarray(logits).argmax(-1).astype(np.int64)[:, None]
        out["decoder_step"] = {INPUT_IDS: first, **dict(zip(self.past, cache, strict=True))}
        return out

    def generate(self, images: Images, max_new_tokens: int | None = None) -> Generation:
        """Greedy captions of one batch."""
        return greedy_generate(self.encode, self.prefill, self.step, images, self.spec, max_new_tokens)
