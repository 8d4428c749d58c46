"""AOT Inductor packages from torch.export programs: built, loadable, correct, or skipped with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vxdeploy.components.common.config import CompilationConfig
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.errors import CandidateUnavailable
from vxdeploy.components.common.signature import signature_from_exported_program
from vxdeploy.components.compile import aoti
from vxdeploy.components.compile.build import CompileSources, build_candidates
from vxdeploy.components.compile.candidates import CandidateManifest


@pytest.fixture(scope="module")
def digits_aoti(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[CandidateManifest, Path]:
    pt2 = digits_dir / "digits_cnn.pt2"
    signature = signature_from_exported_program(torch.export.load(str(pt2)))
    out = tmp_path_factory.mktemp("aoti")
    cfg = CompilationConfig(candidates=["aoti"], aoti_devices=["cpu", "cuda"])
    manifest = build_candidates(
        out, cfg, CompileSources(signature, None, source_path=pt2, source_format="torch_export")
    )
    return manifest, out


def test_cpu_package_loads_with_aoti_load_package_and_matches_the_program(
    digits_aoti: tuple[CandidateManifest, Path], digits_dir: Path
) -> None:
    manifest, out = digits_aoti
    cpu = next(c for c in manifest.candidates if c.name == "aoti_cpu")
    assert cpu.status == "built", cpu.reason
    signature = manifest.model_signature()
    x = load_dataset(digits_dir / "digits_eval.npz", signature, what="eval").inputs["input"][:7]

    package = torch._inductor.aoti_load_package(str(out / cpu.file))

    with torch.inference_mode():
        got = package(torch.from_numpy(x))
        expected = torch.export.load(str(digits_dir / "digits_cnn.pt2")).module()(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)
    assert cpu.options["check_max_abs_diff"] <= 1e-3 and cpu.versions["torch"] == torch.__version__


def test_cuda_package_is_skipped_without_a_gpu(digits_aoti: tuple[CandidateManifest, Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cuda = next(c for c in digits_aoti[0].candidates if c.name == "aoti_cuda")

    assert cuda.status == "skipped" and "GPU" in cuda.reason


def test_onnx_source_has_no_aoti_candidate_and_says_why(tmp_path: Path) -> None:
    with pytest.raises(CandidateUnavailable, match="source model is ONNX"):
        aoti.load_exported_program(tmp_path / "model.onnx", "onnx")


def test_torchscript_source_has_no_aoti_candidate_and_says_why(tmp_path: Path) -> None:
    with pytest.raises(CandidateUnavailable, match="re-export"):
        aoti.load_exported_program(tmp_path / "model.pt", "torchscript")


def test_program_exported_from_ambiguous_strides_is_re_exported_with_its_batch_range() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten()).eval()
    ambiguous = torch.zeros(2, 8, 8, 1).permute(0, 3, 1, 2)  # shape (2, 1, 8, 8), strides (64, 1, 8, 1)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (ambiguous,), dynamic_shapes=({0: batch},))

    fixed = aoti.with_standard_input_layout(ep)

    val = next(
        n for n in fixed.graph.nodes if n.op == "placeholder" and n.name in fixed.graph_signature.user_inputs
    )
    assert tuple(val.meta["val"].stride())[1:] == (64, 8, 1)
    (bounds,) = fixed.range_constraints.values()
    assert (int(bounds.lower), int(bounds.upper)) == (1, 64)


def test_program_with_standard_strides_is_kept_as_is() -> None:
    model = torch.nn.Linear(4, 2).eval()
    ep = torch.export.export(model, (torch.zeros(2, 4),))

    assert aoti.with_standard_input_layout(ep) is ep


@pytest.mark.gpu
def test_cuda_package_builds_and_runs_on_the_gpu(
    digits_aoti: tuple[CandidateManifest, Path], digits_dir: Path
) -> None:
    manifest, out = digits_aoti
    cuda = next(c for c in manifest.candidates if c.name == "aoti_cuda")
    assert cuda.status == "built", cuda.reason
    assert cuda.gpu_name == torch.cuda.get_device_name()
    x = torch.from_numpy(np.load(digits_dir / "digits_eval.npz")["input"][:5])

    package = torch._inductor.aoti_load_package(str(out / cuda.file))

    with torch.inference_mode():
        got = package(x.cuda()).cpu()
        expected = torch.export.load(str(digits_dir / "digits_cnn.pt2")).module()(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-3)
