"""The embedded default model: a small CNN trained in seconds on scikit-learn's bundled digits.

``builtin://digits-cnn`` and its data (``builtin://digits-calibration``, ``builtin://digits-eval``)
make a run do real work offline: the model is really trained, exported with ``torch.export``
and its accuracy on held-out digits is real.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BUILTIN_PREFIX = "builtin://"
MODEL = "digits-cnn"
CALIBRATION = "digits-calibration"
EVAL = "digits-eval"
_SEED = 0
_N_EVAL = 500
_N_CALIBRATION = 512
_CACHE_VERSION = 2  # bump when the model, its training or the splits change


def is_builtin(uri: str) -> bool:
    return uri.startswith(BUILTIN_PREFIX)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_eval, y_eval)`` of the bundled digits: every builtin's one split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # (N, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(_SEED).permutation(len(x))
    x, y = x[order], y[order]
    return x[_N_EVAL:], y[_N_EVAL:], x[:_N_EVAL], y[:_N_EVAL]


def build_digits_cnn() -> object:
    """The untrained network (plain torch, no torchvision)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def train_digits_cnn(epochs: int = 12) -> tuple[object, float]:
    """Train the CNN on the training split; return the model and its held-out accuracy."""
    import torch

    torch.manual_seed(_SEED)
    x_train, y_train, x_eval, y_eval = digits_split()
    model = build_digits_cnn()
    assert isinstance(model, torch.nn.Module)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(_SEED)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_eval)).argmax(1).numpy() == y_eval).mean())
    return model, acc


def cache_dir() -> Path:
    """Where built-in artifacts are kept between runs (``VXDEPLOY_CACHE``, else ``~/.cache/vxdeploy``)."""
    import torch

    root = Path(os.environ.get("VXDEPLOY_CACHE") or Path.home() / ".cache" / "vxdeploy")
    return root / f"builtin-v{_CACHE_VERSION}-torch{torch.__version__}"


def write_builtin(uri: str, dest_dir: str | Path) -> Path:
    """Materialize a ``builtin://`` model or dataset into ``dest_dir`` and return its path.

    Training is deterministic, so the result is cached and copied on later calls.
    """
    from vxdeploy.components.common.uris import copy_atomic

    cached = _build_builtin(uri, cache_dir())
    return copy_atomic(cached, Path(dest_dir) / cached.name)


def _build_builtin(uri: str, dest: Path) -> Path:
    import torch

    from vxdeploy.components.common.data import Dataset

    name = uri.removeprefix(BUILTIN_PREFIX)
    known = {MODEL: "digits_cnn.pt2", CALIBRATION: "digits_calibration.npz", EVAL: "digits_eval.npz"}
    if name in known and (dest / known[name]).is_file():
        return dest / known[name]
    dest.mkdir(parents=True, exist_ok=True)
    x_train, _, x_eval, y_eval = digits_split()
    if name == MODEL:
        model, _ = train_digits_cnn()
        assert isinstance(model, torch.nn.Module)
        batch = torch.export.Dim("batch", min=1, max=1024)
        # A fresh tensor has standard strides; a NumPy view's (64, 1, 8, 1) is ambiguous for
        # the size-1 channel dim and made AOT Inductor miscompile the program.
        example = torch.tensor(x_eval[:2])
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        target = dest / "digits_cnn.pt2"
        tmp = dest / "digits_cnn.part.pt2"
        torch.export.save(ep, str(tmp))
        tmp.replace(target)
        return target
    if name == CALIBRATION:
        target = dest / "digits_calibration.npz"
        Dataset({"input": x_train[:_N_CALIBRATION]}).save(target)
        return target
    if name == EVAL:
        target = dest / "digits_eval.npz"
        Dataset({"input": x_eval}, y_eval).save(target)
        return target
    from vxdeploy.components.common.errors import UserError

    raise UserError(
        f"unknown builtin {uri!r}; known: {', '.join(BUILTIN_PREFIX + n for n in (MODEL, CALIBRATION, EVAL))}"
    )
