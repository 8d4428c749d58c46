"""The runner layer: one interface for every format, and a registry that says what is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.zoo.models import ZooModel, two_head
from vxdeploy.components.common.signature import load_exported_program, signature_from_exported_program
from vxdeploy.components.verify.runners import (
    RunnerUnavailable,
    TorchRunner,
    open_runner,
    run_batches,
    split_batches,
)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> ZooModel:
    return two_head(tmp_path_factory.mktemp("two_head"))


def test_unknown_runner_kind_lists_the_registry() -> None:
    with pytest.raises(RunnerUnavailable, match="runners: aoti, onnxruntime, tensorrt, torch_export"):
        open_runner("tflite", "m.tflite", signature=None)  # type: ignore[arg-type]


def test_tensorrt_runner_without_tensorrt_names_what_is_missing(zoo: ZooModel) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        signature = signature_from_exported_program(load_exported_program(zoo.model_path))
        with pytest.raises(RunnerUnavailable, match="tensorrt package"):
            open_runner("tensorrt", "engine.plan", signature)
    else:
        pytest.skip("TensorRT is installed here")


def test_program_runner_calls_by_keyword_and_names_dict_outputs_in_model_order(zoo: ZooModel) -> None:
    signature = signature_from_exported_program(load_exported_program(zoo.model_path))
    feeds = dict(np.load(zoo.eval_path))
    inputs = {k: feeds[k] for k in ("features", "context")}

    got = run_batches(open_runner("torch_export", zoo.model_path, signature), inputs, (1, 32))

    assert list(got) == ["class_logits", "score"]
    want = zoo.reference(inputs)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_aoti_runner_without_a_gpu_says_so(zoo: ZooModel, tmp_path: Path) -> None:
    signature = signature_from_exported_program(load_exported_program(zoo.model_path))

    with pytest.raises(RunnerUnavailable, match="no GPU"):
        open_runner("aoti", tmp_path / "model.pt2", signature, device="cuda")


def test_eager_runner_flattens_a_model_output(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    from tests.zoo.models import bert_encoder

    zoo = bert_encoder(tmp_path)
    signature = signature_from_exported_program(load_exported_program(zoo.model_path))
    ids = np.load(zoo.eval_path)

    out = TorchRunner("eager", zoo.module, signature).run({k: ids[k][:3] for k in signature.input_names})

    assert isinstance(zoo.module, BertModel) and isinstance(zoo.module.config, BertConfig)
    assert list(out) == ["last_hidden_state", "pooler_output"]
    assert out["last_hidden_state"].shape[:2] == (3, 16) and out["pooler_output"].shape == (3, 64)


def test_split_batches_repeats_the_last_size() -> None:
    sizes = [len(b["x"]) for b in split_batches({"x": np.zeros(70)}, (1, 32))]

    assert sizes == [1, 32, 32, 5]


class _ScalarRunner:
    name, device, max_batch, output_names = "scalar", "cpu", None, ["y", "count"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": feeds["x"] * 2, "count": np.asarray(3)}

    def close(self) -> None:
        pass


def test_batches_are_joined_and_scalar_results_kept() -> None:
    out = run_batches(_ScalarRunner(), {"x": np.arange(5.0)}, (2,))  # type: ignore[arg-type]

    assert out["y"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0] and out["count"].ndim == 0
