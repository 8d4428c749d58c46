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


VLM_PREFIX = "builtin://digits-vlm/"
"""``builtin://digits-vlm/<part>``: one part (``.pt2``) of the embedded captioning model."""
DATA_INPUT = "input"
"""The array name the built-in datasets are cached under."""


def write_builtin(uri: str, dest_dir: str | Path, input_name: str = DATA_INPUT) -> Path:
    """Materialize a ``builtin://`` model, model part or dataset into ``dest_dir`` and return its path.

    Training is deterministic, so the result is cached and copied on later calls.

    Args:
        uri: ``builtin://digits-cnn``, ``builtin://digits-vlm/<part>``, ``builtin://digits-calibration``
            or ``builtin://digits-eval``.
        dest_dir: Folder to write into.
        input_name: The name a dataset's images are saved under (the model's first input), so the
            same digits feed a model whose input is called ``images``.
    """
    from vxdeploy.components.common.uris import copy_atomic

    if uri.startswith(VLM_PREFIX):
        return _write_vlm_part(uri, Path(dest_dir))
    cached = _build_builtin(uri, cache_dir())
    if input_name != DATA_INPUT and cached.suffix == ".npz":
        from vxdeploy.components.common.data import read_npz

        arrays = read_npz(cached, what=uri)
        arrays[input_name] = arrays.pop(DATA_INPUT)
        target = Path(dest_dir) / cached.name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(target)
        return target
    return copy_atomic(cached, Path(dest_dir) / cached.name)


def _write_vlm_part(uri: str, dest: Path) -> Path:
    from vxdeploy.components.common import builtin_vlm  # lazily: the VLM is trained on first use
    from vxdeploy.components.common.errors import UserError

    part = uri.removeprefix(VLM_PREFIX)
    if part not in builtin_vlm.PARTS:
        raise UserError(
            f"unknown builtin part {uri!r}; builtin://digits-vlm has parts "
            f"{', '.join(VLM_PREFIX + p for p in builtin_vlm.PARTS)}"
        )
    return builtin_vlm.write_digits_vlm(dest)[part]


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

    if name == "digits-vlm":
        raise UserError(
            f"{uri!r} is a multi-part model: set it as model.uri (or --model), which fills model.parts "
            f"with its parts ({VLM_PREFIX}<part>)"
        )
    raise UserError(
        f"unknown builtin {uri!r}; known: "
        f"{', '.join(BUILTIN_PREFIX + n for n in (MODEL, 'digits-vlm', CALIBRATION, EVAL))}"
    )
