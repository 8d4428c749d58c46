"""The embedded multi-part default: a tiny vision-language model that captions the bundled digits.

``builtin://digits-vlm`` is a vision encoder (convolutions -> 16 patch features), a projector (linear to
the decoder width) and a two-layer causal decoder that generates ``"digit <word>"`` (e.g. ``"digit three"``)
greedily with a key/value cache. It trains in seconds on scikit-learn's digits (the same split as
``builtin://digits-cnn``), so its caption accuracy on held-out digits is real. The parts are exported one
by one with ``torch.export`` and to ONNX; the decoder as a prefill graph and a decode-step graph whose past
keys/values are inputs and whose present keys/values are outputs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vxdeploy.components.common.builtin import digits_split
from vxdeploy.components.generation.loop import Generation, greedy_generate
from vxdeploy.components.generation.spec import GenerationSpec

if TYPE_CHECKING:
    import torch

MODEL = "digits-vlm"

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PAD, BOS, EOS = 0, 1, 2
PREFIX_WORD = "digit"
VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", PREFIX_WORD, *DIGIT_WORDS)
"""Token id -> word; the caption of digit ``d`` is ``"digit " + DIGIT_WORDS[d]``."""
_WORD_ID = {w: i for i, w in enumerate(VOCAB)}

N_PATCHES = 16  # the encoder's 4x4 grid of patch features
VISION_WIDTH = 64
WIDTH = 64
HEADS = 4
LAYERS = 2
MAX_POSITIONS = 32
MAX_NEW_TOKENS = 4  # "digit", word, <eos> and one spare
_SEED = 0
_EPOCHS = 10

PARTS = ("vision_encoder", "projector", "decoder_prefill", "decoder_step")
"""The exported parts, in the order a generation runs them."""


def caption_tokens(digit: int) -> list[int]:
    """The target tokens (without ``<bos>``) for one digit: ``digit <word> <eos>``."""
    return [_WORD_ID[PREFIX_WORD], _WORD_ID[DIGIT_WORDS[digit]], EOS]


def decode_text(tokens: Sequence[int]) -> str:
    """Generated token ids -> caption text, stopping at ``<eos>`` and skipping padding."""
    words: list[str] = []
    for t in tokens:
        if t == EOS:
            break
        if t not in (PAD, BOS) and 0 <= t < len(VOCAB):
            words.append(VOCAB[t])
    return " ".join(words)


def past_names(kind: str) -> list[str]:
    """I/O names of the cache: ``past_key_0, past_value_0, ...`` (``kind='past'``) or ``present_*``."""
    return [f"{kind}_{kv}_{i}" for i in range(LAYERS) for kv in ("key", "value")]


def _modules() -> dict[str, type[torch.nn.Module]]:
    """The network classes, defined lazily so importing this module does not import torch."""
    import torch
    from torch import nn

    class VisionEncoder(nn.Module):
        """(B, 1, 8, 8) images -> (B, 16, VISION_WIDTH) patch features."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, VISION_WIDTH, 3, stride=2, padding=1)
            self.pos = nn.Parameter(torch.zeros(1, N_PATCHES, VISION_WIDTH))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv2(torch.relu(self.conv1(images))))  # (B, C, 4, 4)
            return x.flatten(2).transpose(1, 2) + self.pos

    class Projector(nn.Module):
        """Patch features -> image tokens of the decoder's width."""

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Sequential(nn.Linear(VISION_WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, WIDTH))

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.proj(features)
            return out

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(WIDTH)
            self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
            self.out = nn.Linear(WIDTH, WIDTH)
            self.ln2 = nn.LayerNorm(WIDTH)
            self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))

        def forward(
            self, x: torch.Tensor, past_k: torch.Tensor | None, past_v: torch.Tensor | None
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            b, t, _ = x.shape
            dh = WIDTH // HEADS
            q, k, v = self.qkv(self.ln1(x)).split(WIDTH, dim=2)
            q, k, v = (z.reshape(b, t, HEADS, dh).transpose(1, 2) for z in (q, k, v))
            if past_k is not None and past_v is not None:
                k = torch.cat([past_k, k], dim=2)
                v = torch.cat([past_v, v], dim=2)
            # Query i (at absolute position past + i) sees keys 0 .. past + i.
            past = k.shape[2] - t
            rows = torch.arange(t, device=x.device).unsqueeze(1) + past
            cols = torch.arange(k.shape[2], device=x.device).unsqueeze(0)
            scores = (q @ k.transpose(2, 3)) * (dh**-0.5)
            scores = scores.masked_fill(cols > rows, float("-inf"))
            att = torch.softmax(scores, dim=-1) @ v
            x = x + self.out(att.transpose(1, 2).reshape(b, t, WIDTH))
            x = x + self.mlp(self.ln2(x))
            return x, k, v

    class Decoder(nn.Module):
        """Causal decoder over ``[image tokens, <bos>, generated...]`` with a key/value cache."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(len(VOCAB), WIDTH)
            self.pos = nn.Embedding(MAX_POSITIONS, WIDTH)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.ln = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(WIDTH, len(VOCAB))

        def run(
            self, x: torch.Tensor, past: Sequence[torch.Tensor]
        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
            """Hidden states ``x`` (B, T, W) after ``past`` cached positions -> logits, present cache."""
            offset = past[0].shape[2] if past else 0
            positions = torch.arange(x.shape[1], device=x.device) + offset
            x = x + self.pos(positions).unsqueeze(0)
            present: list[torch.Tensor] = []
            for i, block in enumerate(self.blocks):
                pk = past[2 * i] if past else None
                pv = past[2 * i + 1] if past else None
                x, k, v = block(x, pk, pv)
                present += [k, v]
            return self.head(self.ln(x)), present

    class DecoderPrefill(nn.Module):
        """(image tokens, input ids) -> logits of the last position, present keys/values."""

        def __init__(self, decoder: Decoder) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, image_tokens: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = torch.cat([image_tokens, self.decoder.embed(input_ids)], dim=1)
            logits, present = self.decoder.run(x, [])
            return (logits[:, -1, :], *present)

    class DecoderStep(nn.Module):
        """(one input id per sequence, past keys/values) -> logits, present keys/values."""

        def __init__(self, decoder: Decoder) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(
            self,
            input_ids: torch.Tensor,
            past_key_0: torch.Tensor,
            past_value_0: torch.Tensor,
            past_key_1: torch.Tensor,
            past_value_1: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:
            # Named arguments (LAYERS == 2), not *past: torch.export and ONNX keep the names.
            past = [past_key_0, past_value_0, past_key_1, past_value_1]
            logits, present = self.decoder.run(self.decoder.embed(input_ids), past)
            return (logits[:, -1, :], *present)

    return {
        "VisionEncoder": VisionEncoder,
        "Projector": Projector,
        "Decoder": Decoder,
        "DecoderPrefill": DecoderPrefill,
        "DecoderStep": DecoderStep,
    }


@dataclass
class DigitsVlm:
    """The trained parts (``torch.nn.Module`` each, in eval mode) and how training went."""

    vision_encoder: Any
    projector: Any
    decoder: Any
    train_seconds: float
    final_loss: float

    def part_modules(self) -> dict[str, Any]:
        """One module per exported part (prefill and step share the decoder's weights)."""
        classes = _modules()
        return {
            "vision_encoder": self.vision_encoder,
            "projector": self.projector,
            "decoder_prefill": classes["DecoderPrefill"](self.decoder).eval(),
            "decoder_step": classes["DecoderStep"](self.decoder).eval(),
        }


def train_digits_vlm(seed: int = _SEED, epochs: int = _EPOCHS) -> DigitsVlm:
    """Train the three parts jointly (teacher forcing) on the training split; deterministic for a seed.

    Args:
        seed: Seeds the initialization and the batch order.
        epochs: Passes over the 1,297 training images.

    Returns:
        The trained model in eval mode.
    """
    import torch

    classes = _modules()
    start = time.perf_counter()
    torch.manual_seed(seed)
    encoder, projector = classes["VisionEncoder"](), classes["Projector"]()
    decoder: Any = classes["Decoder"]()  # its run() and embed are not on nn.Module
    params = [*encoder.parameters(), *projector.parameters(), *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)
    x_train, y_train, _, _ = digits_split()
    images = torch.from_numpy(np.ascontiguousarray(x_train))
    targets = torch.tensor([caption_tokens(int(d)) for d in y_train])  # (N, 3)
    inputs = torch.cat([torch.full((len(targets), 1), BOS), targets[:, :-1]], dim=1)  # <bos> digit word
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(images) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss = torch.tensor(0.0)
    for m in (encoder, projector, decoder):
        m.train()
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), 64):
            idx = perm[i : i + 64]
            tokens = projector(encoder(images[idx]))
            x = torch.cat([tokens, decoder.embed(inputs[idx])], dim=1)
            logits, _ = decoder.run(x, [])
            text_logits = logits[:, N_PATCHES:, :]  # positions of <bos>, digit, word predict the next token
            loss = torch.nn.functional.cross_entropy(
                text_logits.reshape(-1, len(VOCAB)), targets[idx].reshape(-1)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    for m in (encoder, projector, decoder):
        m.eval()
    return DigitsVlm(encoder, projector, decoder, time.perf_counter() - start, float(loss.item()))


def label_captions() -> tuple[str, ...]:
    """Reference caption of each digit label: ``"digit zero"`` .. ``"digit nine"``."""
    return tuple(f"{PREFIX_WORD} {w}" for w in DIGIT_WORDS)


def generation_spec() -> GenerationSpec:
    """The generation facts of ``builtin://digits-vlm`` (part name = role)."""
    return GenerationSpec(
        parts={p: p for p in PARTS},
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        max_new_tokens=MAX_NEW_TOKENS,
        vocabulary=VOCAB,
        label_captions=label_captions(),
    )


def _greedy(encode: Any, prefill: Any, step: Any, images: np.ndarray, max_new_tokens: int) -> Generation:
    """The shared loop (:func:`~vxdeploy.components.generation.loop.greedy_generate`) for this model."""
    return greedy_generate(encode, prefill, step, images, generation_spec(), max_new_tokens)


def generate_torch(model: DigitsVlm, images: np.ndarray, max_new_tokens: int = MAX_NEW_TOKENS) -> Generation:
    """Greedy captions of ``images`` (N, 1, 8, 8) float32 in [0, 1] with the PyTorch parts and a KV cache."""
    import torch

    parts = model.part_modules()

    def encode(x: np.ndarray) -> np.ndarray:
        feats = parts["vision_encoder"](torch.from_numpy(np.ascontiguousarray(x)))
        out: np.ndarray = parts["projector"](feats).numpy()
        return out

    def prefill(tokens: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, list[torch.Tensor]]:
        logits, *present = parts["decoder_prefill"](torch.from_numpy(tokens), torch.from_numpy(ids))
        return logits.numpy(), present

    def step(ids: np.ndarray, past: list[torch.Tensor]) -> tuple[np.ndarray, list[torch.Tensor]]:
        logits, *present = parts["decoder_step"](torch.from_numpy(ids), *past)
        return logits.numpy(), present

    with torch.no_grad():
        return _greedy(encode, prefill, step, images, max_new_tokens)


def generate_onnx(
    paths: Mapping[str, str | Path],
    images: np.ndarray,
    max_new_tokens: int = MAX_NEW_TOKENS,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Generation:
    """Greedy captions with the exported ONNX parts in ONNX Runtime, the cache passed between steps.

    Args:
        paths: The ONNX file of each of :data:`PARTS` (as :func:`export_parts` returns them).
        images: (N, 1, 8, 8) float32 in [0, 1].
        max_new_tokens: Upper bound of the generated tokens per image.
        providers: ONNX Runtime execution providers, in order of preference.

    Returns:
        The captions and the phase timings.
    """
    import onnxruntime as ort

    missing = [p for p in PARTS if p not in paths]
    if missing:
        from vxdeploy.components.common.errors import ConfigError

        raise ConfigError(
            "paths", sorted(paths), f"no ONNX file for part(s) {missing}; give one for each of {list(PARTS)}"
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = {p: ort.InferenceSession(str(paths[p]), opts, providers=list(providers)) for p in PARTS}
    past_in, present_out = past_names("past"), past_names("present")

    def encode(x: np.ndarray) -> np.ndarray:
        (feats,) = sess["vision_encoder"].run(["features"], {"images": np.ascontiguousarray(x, np.float32)})
        (tokens,) = sess["projector"].run(["image_tokens"], {"features": feats})
        out: np.ndarray = tokens
        return out

    def prefill(tokens: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        logits, *present = sess["decoder_prefill"].run(
            ["logits", *present_out], {"image_tokens": tokens, "input_ids": ids}
        )
        return logits, present

    def step(ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"input_ids": ids, **dict(zip(past_in, past, strict=True))}
        logits, *present = sess["decoder_step"].run(["logits", *present_out], feeds)
        return logits, present

    return _greedy(encode, prefill, step, images, max_new_tokens)


@dataclass(frozen=True)
class CaptionAccuracy:
    """How the generated captions compare with ``"digit <word>"`` of the labels.

    Attributes:
        exact: Fraction of captions equal to the reference text.
        digit_word: Fraction whose second word is the right digit word (any surrounding text).
        n: Images scored.
    """

    exact: float
    digit_word: float
    n: int


def caption_accuracy(texts: Sequence[str], labels: np.ndarray) -> CaptionAccuracy:
    """Score generated captions against digit labels (exact caption and digit-word accuracy)."""
    if len(texts) != len(labels):
        from vxdeploy.components.common.errors import DataError

        raise DataError(
            f"caption_accuracy: {len(texts)} captions for {len(labels)} labels; give one per image"
        )
    refs = [f"{PREFIX_WORD} {DIGIT_WORDS[int(d)]}" for d in labels]
    exact = sum(t == r for t, r in zip(texts, refs, strict=True))
    word = sum(DIGIT_WORDS[int(d)] in t.split() for t, d in zip(texts, labels, strict=True))
    n = len(texts)
    return CaptionAccuracy(exact / n if n else 0.0, word / n if n else 0.0, n)


def _example_inputs(model: DigitsVlm, batch: int = 2) -> dict[str, tuple[torch.Tensor, ...]]:
    """Real example inputs of each part (the first held-out images run through the earlier parts)."""
    import torch

    _, _, x_eval, _ = digits_split()
    images = torch.tensor(x_eval[:batch])  # fresh tensor: standard strides (see builtin.py)
    parts = model.part_modules()
    with torch.no_grad():
        feats = parts["vision_encoder"](images)
        tokens = parts["projector"](feats)
        ids = torch.full((batch, 1), BOS, dtype=torch.int64)
        _, *present = parts["decoder_prefill"](tokens, ids)
    return {
        "vision_encoder": (images,),
        "projector": (feats,),
        "decoder_prefill": (tokens, ids),
        "decoder_step": (ids, *present),
    }


INPUT_NAMES = {
    "vision_encoder": ["images"],
    "projector": ["features"],
    "decoder_prefill": ["image_tokens", "input_ids"],
    "decoder_step": ["input_ids", *past_names("past")],
}
OUTPUT_NAMES = {
    "vision_encoder": ["features"],
    "projector": ["image_tokens"],
    "decoder_prefill": ["logits", *past_names("present")],
    "decoder_step": ["logits", *past_names("present")],
}


def export_programs(model: DigitsVlm) -> dict[str, Any]:
    """``torch.export`` programs of the four parts, batch dynamic, the step's cache length dynamic."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    past = torch.export.Dim("past", min=1, max=MAX_POSITIONS - 1)
    examples = _example_inputs(model)
    cache = [{0: batch, 2: past} for _ in past_names("past")]
    dynamic: dict[str, Any] = {
        "vision_encoder": ({0: batch},),
        "projector": ({0: batch},),
        "decoder_prefill": ({0: batch}, {0: batch}),
        "decoder_step": ({0: batch}, *cache),
    }
    out: dict[str, Any] = {}
    for name, module in model.part_modules().items():
        out[name] = torch.export.export(module, examples[name], dynamic_shapes=dynamic[name])
    return out


def export_parts(model: DigitsVlm, out_dir: str | Path, opset: int = 19) -> dict[str, Path]:
    """Export each part to ``out_dir/<part>.pt2`` and, through the export stage, ``out_dir/<part>.onnx``.

    The ONNX step is the pipeline's own :func:`~vxdeploy.components.export.onnx_export.export_onnx`
    (dynamo exporter, dims named after the signature, ``onnx.checker``, parity with PyTorch at batch 1
    and 32 on real held-out inputs run through the earlier parts).

    Args:
        model: The trained model.
        out_dir: Folder to write into (created); files are written to a temp name, then renamed.
        opset: ONNX opset of the exported graphs.

    Returns:
        Part name -> its ONNX file; the ``.pt2`` program sits beside it with the same stem.

    Raises:
        ParityError: when a part's ONNX graph disagrees with PyTorch beyond the export tolerances.
    """
    import torch

    from vxdeploy.components.common.config import ExportConfig
    from vxdeploy.components.common.signature import signature_from_exported_program
    from vxdeploy.components.export.onnx_export import export_onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = _example_inputs(model, batch=64)
    cfg = ExportConfig(opset=opset)
    paths: dict[str, Path] = {}
    for name, ep in export_programs(model).items():
        pt2 = out / f"{name}.pt2"
        tmp_pt2 = out / f"{name}.part.pt2"
        torch.export.save(ep, str(tmp_pt2))
        tmp_pt2.replace(pt2)
        signature = signature_from_exported_program(ep, OUTPUT_NAMES[name])
        inputs = {n: t.numpy() for n, t in zip(INPUT_NAMES[name], examples[name], strict=True)}
        paths[name] = export_onnx(pt2, "torch_export", signature, out / f"{name}.onnx", cfg, inputs).onnx_path
    return paths


def part_parity(model: DigitsVlm, paths: Mapping[str, str | Path], batch: int = 8) -> dict[str, float]:
    """Largest absolute difference between ONNX Runtime and PyTorch per part, on held-out digits."""
    import onnxruntime as ort
    import torch

    examples = _example_inputs(model, batch=batch)
    parts = model.part_modules()
    worst: dict[str, float] = {}
    for name in PARTS:
        sess = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        feeds = {n: t.numpy() for n, t in zip(INPUT_NAMES[name], examples[name], strict=True)}
        got = sess.run(OUTPUT_NAMES[name], feeds)
        with torch.no_grad():
            ref = parts[name](*examples[name])
        refs = ref if isinstance(ref, tuple) else (ref,)
        worst[name] = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, refs, strict=True))
    return worst


_CACHE_VERSION = 2  # bump when the model, its training or its export change


def write_digits_vlm(dest_dir: str | Path) -> dict[str, Path]:
    """Materialize ``builtin://digits-vlm``: each part's ``.pt2`` and ``.onnx`` in ``dest_dir``.

    Training is deterministic, so the parts are built once into the built-in cache
    (:func:`~vxdeploy.components.common.builtin.cache_dir`) and copied on later calls.

    Args:
        dest_dir: Folder to copy the parts into.

    Returns:
        Part name -> its ``.pt2`` program in ``dest_dir`` (the ``.onnx`` file sits beside it).
    """
    from vxdeploy.components.common.builtin import cache_dir
    from vxdeploy.components.common.uris import copy_atomic

    cached = cache_dir() / f"digits-vlm-v{_CACHE_VERSION}"
    if not all((cached / f"{p}.{ext}").is_file() for p in PARTS for ext in ("pt2", "onnx")):
        import tempfile

        # Build in a private folder, then rename each file in: concurrent builders never share a temp name.
        cached.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=cached) as tmp:
            export_parts(train_digits_vlm(), tmp)
            for part in PARTS:
                for ext in ("onnx", "pt2"):
                    Path(tmp, f"{part}.{ext}").replace(cached / f"{part}.{ext}")
    dest = Path(dest_dir)
    out: dict[str, Path] = {}
    for part in PARTS:
        copy_atomic(cached / f"{part}.onnx", dest / f"{part}.onnx")
        out[part] = copy_atomic(cached / f"{part}.pt2", dest / f"{part}.pt2")
    return out
