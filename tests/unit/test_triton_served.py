"""Packaged repositories served by the real bundled Triton on loopback: ensembles, and server cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package.ensemble import EnsembleStep, ModelPart, package_ensemble
from vxdeploy.components.package.tritonserver import TritonStartError, find_bundled_triton, running_triton

INSTALL, WHY_NOT = find_bundled_triton()
pytestmark = pytest.mark.skipif(INSTALL is None, reason=WHY_NOT)

# A Python-backend part: out = in * scale + shift, numbers crossing through DLPack.
PART_SOURCE = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.scale = float(params["scale"]["string_value"])
        self.shift = float(params["shift"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "in"))
            y = np.ascontiguousarray(x * self.scale + self.shift, dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("out", y)]))
        return responses
"""
AFFINE = ModelSignature(
    inputs=(TensorSpec("in", "float32", ("batch", 4)),),
    outputs=(TensorSpec("out", "float32", ("batch", 4)),),
)


def _affine_part(tmp_path: Path, name: str) -> ModelPart:
    source = tmp_path / f"{name}.py"
    source.write_text(PART_SOURCE)
    return ModelPart(name, "python", AFFINE, source)


def _with_parameters(model_dir: Path, scale: float, shift: float) -> None:
    from vxdeploy.components.package.model_config import read_model_config, write_model_config

    config = read_model_config(model_dir)
    config.parameters["scale"].string_value = str(scale)
    config.parameters["shift"].string_value = str(shift)
    write_model_config(config, model_dir)


def test_triton_loads_the_packaged_ensemble_and_runs_its_steps_in_order(tmp_path: Path) -> None:
    repo = package_ensemble(
        [_affine_part(tmp_path, "scale"), _affine_part(tmp_path, "shift")],
        [
            EnsembleStep("scale", {"in": "x"}, {"out": "scaled"}),
            EnsembleStep("shift", {"in": "scaled"}, {"out": "y"}),
        ],
        triton=TritonConfig(max_batch_size=8, dynamic_batching={"preferred_batch_sizes": [8]}),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
        name="affine",
    )
    _with_parameters(repo.model_repository / "scale", 2.0, 0.0)
    _with_parameters(repo.model_repository / "shift", 1.0, 1.0)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)

    with running_triton(repo.model_repository, install=INSTALL, startup_timeout_s=60) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        request = grpcclient.InferInput("x", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        y = client.infer("affine", [request]).as_numpy("y")
        client.close()

    np.testing.assert_allclose(y, x * 2 + 1)


def test_a_model_that_fails_to_load_stops_the_server_with_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('weights are missing')\n")
    repo = package_ensemble(
        [ModelPart("broken", "python", AFFINE, broken)],
        [EnsembleStep("broken", {"in": "x"}, {"out": "y"})],
        triton=TritonConfig(warmup=False),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
    )

    with pytest.raises(TritonStartError, match="weights are missing"):
        with running_triton(repo.model_repository, install=INSTALL, startup_timeout_s=60):
            pass


def test_a_config_triton_refuses_is_named_on_the_errors_first_line(tmp_path: Path) -> None:
    # Given a model whose config Triton refuses (an output without dims), and a log that ends in
    # status tables rather than the cause
    model = tmp_path / "repo" / "model"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "model"\nbackend: "python"\nmax_batch_size: 8\n'
        'input { name: "x" data_type: TYPE_FP32 dims: 2 }\noutput { name: "label" data_type: TYPE_INT64 }\n'
    )

    # When the server starts, then the error's first line says why
    with pytest.raises(TritonStartError) as raised:
        with running_triton(tmp_path / "repo", install=INSTALL, startup_timeout_s=60):
            pass
    first = str(raised.value).splitlines()[0]
    assert "model output 'label' must specify 'dims'" in first, first


def test_the_server_is_stopped_when_the_code_using_it_fails(tmp_path: Path) -> None:
    repo = package_ensemble(
        [_affine_part(tmp_path, "scale")],
        [EnsembleStep("scale", {"in": "x"}, {"out": "y"})],
        triton=TritonConfig(warmup=False),
        instance_kind="KIND_CPU",
        out_dir=tmp_path / "repo",
    )
    _with_parameters(repo.model_repository / "scale", 1.0, 0.0)
    pid = 0

    with pytest.raises(ZeroDivisionError):
        with running_triton(repo.model_repository, install=INSTALL, startup_timeout_s=60) as server:
            pid = server.pid
            _ = 1 / 0

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
