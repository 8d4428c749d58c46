"""An AOT Inductor package served by Triton's Python backend through vxdeploy's model.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package.repository import package_triton_repository
from vxdeploy.components.package.serve_check import check_served_repository, reference_outputs
from vxdeploy.components.package.tritonserver import find_bundled_triton

INSTALL, WHY_NOT = find_bundled_triton()
SIGNATURE = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 8)),),
    outputs=(TensorSpec("output", "float32", ("batch", 3)),),
)


@pytest.mark.skipif(INSTALL is None, reason=WHY_NOT)
def test_an_aoti_candidate_serves_the_reference_answers_in_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (torch.randn(2, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "source.pt2"))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "candidate.pt2"))
    triton = TritonConfig(
        max_batch_size=8,
        dynamic_batching={"preferred_batch_sizes": [8], "max_queue_delay_microseconds": 20000},
        serve_check_requests=32,
        serve_check_concurrency=8,
        serve_check_sweep=[],  # answers only; the sweep is tested in test_serve_check.py
    )
    repo = package_triton_repository(
        package,
        "aoti",
        SIGNATURE,
        model_name="mlp",
        triton=triton,
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "r",
    )
    samples = Dataset({"input": np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)})
    reference = reference_outputs(tmp_path / "source.pt2", "torch_export", SIGNATURE, samples.inputs)

    result = check_served_repository(
        repo.root, samples, reference, triton=triton, model="mlp", fp32=True, install=INSTALL
    )

    assert result.passed, result.reason
    assert result.max_abs_diff < 1e-4
    assert result.executions < result.requests == 32
    assert result.substitutions == []
