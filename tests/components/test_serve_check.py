"""Package and serve-check components under kfp.local, served by a real Triton on loopback."""

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.package.tritonserver import find_bundled_triton

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("input", "float32", ("batch", 16)),),
    outputs=(TensorSpec("output", "float32", ("batch", 4)),),
)

needs_triton = pytest.mark.skipif(find_bundled_triton()[0] is None, reason=find_bundled_triton()[1])


def _source_and_candidate(root: Path) -> tuple[Path, Path, Path]:
    """A torch.export .pt2 (the reference), the same weights as ONNX (the candidate), eval data."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 4).eval()
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(linear, (torch.randn(2, 16),), dynamic_shapes=({0: batch},))
    source_dir, candidate_dir = root / "source", root / "candidate"
    source_dir.mkdir(parents=True)
    candidate_dir.mkdir(parents=True)
    torch.export.save(program, str(source_dir / "model.pt2"))
    weight = linear.weight.detach().numpy().T.copy()
    bias = linear.bias.detach().numpy().copy()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["output"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    # IR 10: what torch.onnx.export writes, and within what this ONNX Runtime reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    onnx.save(model, str(candidate_dir / "model.onnx"))
    eval_path = root / "eval.npz"
    np.savez(eval_path, input=np.random.default_rng(0).standard_normal((48, 16)).astype(np.float32))
    return source_dir, candidate_dir, eval_path


def _run_pipeline(root: Path, triton: dict[str, Any]) -> Path:
    from kfp import dsl, local

    from vxdeploy.components.package.component import package_triton_repository, serve_check

    source_dir, candidate_dir, eval_path = _source_and_candidate(root)
    signature = SIGNATURE.to_dict()

    @dsl.pipeline(name="package-and-serve")
    def package_and_serve() -> None:
        selected = dsl.importer(
            artifact_uri=str(candidate_dir),
            artifact_class=dsl.Model,
            metadata={
                "kind": "onnxruntime_fp32",
                "file": "model.onnx",
                "signature": signature,
                "precision": "fp32",
            },
        )
        source = dsl.importer(
            artifact_uri=str(source_dir),
            artifact_class=dsl.Model,
            metadata={"format": "torch_export", "file": "model.pt2", "signature": signature},
        )
        eval_data = dsl.importer(artifact_uri=str(eval_path), artifact_class=dsl.Dataset)
        packaged = package_triton_repository(
            selected_model=selected.output,
            model={"name": "linear"},
            triton=triton,
            deployment={"accelerator_type": "NVIDIA_L4", "accelerator_count": 1},
        )
        serve_check(
            triton_repository=packaged.outputs["triton_repository"],
            source_model=source.output,
            eval_data=eval_data.output,
            triton=triton,
            deployment={"accelerator_type": "NVIDIA_L4", "accelerator_count": 1, "max_replicas": 50},
            service_levels={"p95_latency_ms": 250, "requests_per_second": 2000},
        )

    pipeline_root = root / "pipeline_root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True
    )
    package_and_serve()
    return next(p for p in pipeline_root.iterdir() if p.is_dir())


@needs_triton
def test_the_packaged_repository_serves_matching_answers_and_batches_concurrent_requests(
    tmp_path: Path,
) -> None:
    triton = {
        "max_batch_size": 16,
        "dynamic_batching": {"preferred_batch_sizes": [16], "max_queue_delay_microseconds": 20000},
        "serve_check_requests": 48,
        "serve_check_concurrency": 16,
        "serve_check_sweep": [1, 16],
        "serve_check_sweep_window_s": 0.5,
    }

    run_root = _run_pipeline(tmp_path, triton)

    package = json.loads((run_root / "package-triton-repository" / "report").read_text())
    check = json.loads((run_root / "serve-check" / "report").read_text())
    summary = check["summary"]
    assert package["summary"]["instance_kind"] == "KIND_GPU"
    assert check["status"] == "succeeded", check
    assert summary["requests"] == 48
    assert summary["executions"] < summary["requests"]
    assert summary["max_abs_diff"] < 1e-4
    assert summary["p50_ms"] > 0 and summary["p99_ms"] >= summary["p50_ms"]
    assert any("onnxruntime_onnx served as backend python" in s for s in check["details"]["substitutions"])

    # The substitutions are the verdict, not a footnote: reason (terminal, report.md) and summary.
    assert check["reason"].startswith("passed with substitutions: onnxruntime_onnx -> python backend")
    assert "KIND_GPU -> KIND_CPU" in check["reason"]
    assert summary["verdict"] == check["reason"].split("; no request")[0]
    assert (summary["mode"], summary["server"]) == ("required", "bundled")
    # Triton's statistics, read once settled, count every request sent.
    assert summary["sent"] == summary["requests"] == 48
    sweep = check["details"]["sweep"]
    assert [(p["batching"], p["concurrency"]) for p in sweep["points"]] == [
        ("off", 1),
        ("off", 16),
        ("on", 1),
        ("on", 16),
    ]
    for point in sweep["points"]:
        assert point["statistics_requests"] == point["requests"] > 0
        assert point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
        assert point["compute_ms"] > 0
    assert all(p["avg_batch"] == 1 for p in sweep["points"] if p["batching"] == "off")
    assert max(p["avg_batch"] for p in sweep["points"] if p["batching"] == "on") > 1
    assert summary["sweep_counts_match"] is True
    # The cost table prices the served throughput at the p95 target.
    cost = check["details"]["cost"]
    best = max((p for p in sweep["points"] if p["p95_ms"] <= 250), key=lambda p: p["throughput_rps"])
    row = next(r for r in cost["rows"] if r["name"].endswith(f"(dynamic batching {best['batching']})"))
    assert row["throughput_rps"] == best["throughput_rps"]
    assert row["replicas"] == max(1, math.ceil(2000 / best["throughput_rps"] - 1e-9))
    markdown = (run_root / "serve-check" / "summary").read_text()
    assert "| batching | clients | infer/s | p50 ms | p95 ms | p99 ms |" in markdown
    assert "Cost from served throughput" in markdown
