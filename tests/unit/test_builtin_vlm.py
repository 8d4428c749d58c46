"""The embedded vision-language model: real captions, exported parts, KV-cache generation in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vxdeploy.components.common import builtin_vlm as vlm
from vxdeploy.components.common.builtin import digits_split
from vxdeploy.components.common.errors import ConfigError, DataError

# Measured 0.954 exact-caption accuracy on the 500 held-out digits (seed 0, 10 epochs).
CAPTION_ACCURACY_FLOOR = 0.90


@pytest.fixture(scope="module")
def model() -> vlm.DigitsVlm:
    return vlm.train_digits_vlm(seed=0)


@pytest.fixture(scope="module")
def onnx_parts(model: vlm.DigitsVlm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return vlm.export_parts(model, tmp_path_factory.mktemp("digits-vlm"))


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    _, _, x_eval, y_eval = digits_split()
    return x_eval, y_eval


@pytest.fixture(scope="module")
def torch_generation(model: vlm.DigitsVlm, held_out: tuple[np.ndarray, np.ndarray]) -> vlm.Generation:
    return vlm.generate_torch(model, held_out[0])


def test_captions_held_out_digits_correctly(
    torch_generation: vlm.Generation, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    accuracy = vlm.caption_accuracy(torch_generation.texts, held_out[1])

    assert accuracy.n == 500
    assert accuracy.exact >= CAPTION_ACCURACY_FLOOR, accuracy


def test_each_onnx_part_matches_pytorch(model: vlm.DigitsVlm, onnx_parts: dict[str, Path]) -> None:
    worst = vlm.part_parity(model, onnx_parts, batch=8)

    assert set(worst) == set(vlm.PARTS)
    assert max(worst.values()) < 1e-4, worst


def test_onnx_kv_cache_generation_equals_pytorch_generation(
    onnx_parts: dict[str, Path], torch_generation: vlm.Generation, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    generation = vlm.generate_onnx(onnx_parts, held_out[0])

    np.testing.assert_array_equal(generation.tokens, torch_generation.tokens)
    assert generation.texts == torch_generation.texts
    assert 0 < generation.encode_ms <= generation.ttft_ms <= generation.total_ms
    assert generation.tokens_per_s > 0


def test_cached_decode_step_equals_recomputing_the_whole_sequence(
    model: vlm.DigitsVlm, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    parts = model.part_modules()
    images = torch.tensor(held_out[0][:4])
    with torch.no_grad():
        tokens = parts["projector"](parts["vision_encoder"](images))
        bos = torch.full((4, 1), vlm.BOS)
        first, *past = parts["decoder_prefill"](tokens, bos)
        next_ids = first.argmax(-1, keepdim=True)
        cached, *_ = parts["decoder_step"](next_ids, *past)
        full, *_ = parts["decoder_prefill"](tokens, torch.cat([bos, next_ids], dim=1))

    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_training_is_deterministic_for_a_seed() -> None:
    first = vlm.train_digits_vlm(seed=3, epochs=1)
    again = vlm.train_digits_vlm(seed=3, epochs=1)
    other = vlm.train_digits_vlm(seed=4, epochs=1)

    for a, b in zip(first.decoder.state_dict().values(), again.decoder.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert first.final_loss == again.final_loss
    assert first.final_loss != other.final_loss


def test_exported_parts_are_programs_and_onnx_files(onnx_parts: dict[str, Path]) -> None:
    import onnx

    step = onnx.load(str(onnx_parts["decoder_step"]))

    assert [i.name for i in step.graph.input] == ["input_ids", *vlm.past_names("past")]
    assert [o.name for o in step.graph.output] == ["logits", *vlm.past_names("present")]
    cache_dims = step.graph.input[1].type.tensor_type.shape.dim
    assert cache_dims[0].dim_param and cache_dims[2].dim_param  # batch and cache length stay dynamic
    for path in onnx_parts.values():
        assert path.with_suffix(".pt2").is_file()
        torch.export.load(str(path.with_suffix(".pt2")))


def test_caption_accuracy_scores_exact_and_digit_word() -> None:
    accuracy = vlm.caption_accuracy(["digit three", "three", "digit four"], np.array([3, 3, 5]))

    assert accuracy.exact == pytest.approx(1 / 3)
    assert accuracy.digit_word == pytest.approx(2 / 3)


def test_caption_accuracy_refuses_mismatched_lengths() -> None:
    with pytest.raises(DataError, match="2 captions for 3 labels"):
        vlm.caption_accuracy(["digit one", "digit two"], np.array([1, 2, 3]))


def test_decode_text_stops_at_eos() -> None:
    ids = vlm.caption_tokens(7) + [vlm.VOCAB.index("one")]

    assert vlm.decode_text(ids) == "digit seven"


def test_generate_onnx_names_a_missing_part(onnx_parts: dict[str, Path]) -> None:
    partial = {k: v for k, v in onnx_parts.items() if k != "decoder_step"}

    with pytest.raises(ConfigError, match="decoder_step"):
        vlm.generate_onnx(partial, np.zeros((1, 1, 8, 8), np.float32))


def test_write_digits_vlm_copies_the_cached_parts(
    onnx_parts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from vxdeploy.components.common.builtin import cache_dir

    monkeypatch.setenv("VXDEPLOY_CACHE", str(tmp_path / "cache"))
    shutil.copytree(next(iter(onnx_parts.values())).parent, cache_dir() / f"digits-vlm-v{vlm._CACHE_VERSION}")

    written = vlm.write_digits_vlm(tmp_path / "run")

    assert sorted(written) == sorted(vlm.PARTS)
    for part, path in written.items():
        assert path == tmp_path / "run" / f"{part}.pt2"
        assert path.read_bytes() == onnx_parts[part].with_suffix(".pt2").read_bytes()
        assert path.with_suffix(".onnx").is_file()


def test_parts_go_through_the_export_stage_and_still_generate_the_same_captions(
    onnx_parts: dict[str, Path],
    torch_generation: vlm.Generation,
    held_out: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    from vxdeploy.components.common.config import ExportConfig, ModelPartConfig
    from vxdeploy.components.export.onnx_export import export_parts

    parts = [
        ModelPartConfig(name=p, uri=str(onnx_parts[p].with_suffix(".pt2")), output_names=vlm.OUTPUT_NAMES[p])
        for p in vlm.PARTS
    ]

    results = export_parts(parts, tmp_path / "onnx", ExportConfig(), tmp_path / "work")
    generation = vlm.generate_onnx({p: r.onnx_path for p, r in results.items()}, held_out[0][:64])

    assert generation.texts == torch_generation.texts[:64]
