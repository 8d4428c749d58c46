"""Serving sweep of the embedded digits model through Triton, as the serve check runs it.

builtin://digits-cnn -> ONNX (the project's export) -> the project's Triton package ->
:func:`vxdeploy.components.package.serve_check.check_served_repository`: the correctness round (with the
statistics count check), then the concurrency sweep with dynamic batching off and on.

    .venv/bin/python -m benchmarks.serve_sweep [--concurrency 1 4 16 64] [--window 2.0] [--json out.json]

Prints the verdict, the sweep table and the dynamic-batching gain; the wall time covers
everything from the server's start to its stop.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vxdeploy.components.common import builtin
from vxdeploy.components.common.config import ExportConfig, TritonConfig
from vxdeploy.components.common.data import load_dataset
from vxdeploy.components.common.signature import signature_from_exported_program
from vxdeploy.components.export.onnx_export import export_onnx
from vxdeploy.components.package.repository import package_triton_repository
from vxdeploy.components.package.serve_check import check_served_repository, reference_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--window", type=float, default=2.0, help="seconds measured per point")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="vxdeploy-serve-sweep-") as tmp:
        work = Path(tmp)
        pt2 = builtin.write_builtin("builtin://digits-cnn", work)
        signature = signature_from_exported_program(torch.export.load(str(pt2)))
        evaluation = load_dataset(
            builtin.write_builtin("builtin://digits-eval", work), signature, what="eval"
        )
        samples = evaluation.take(min(len(evaluation), args.samples))
        exported = export_onnx(
            pt2, "torch_export", signature, work / "model.onnx", ExportConfig(), samples.inputs
        )
        triton = TritonConfig(
            serve_check_requests=args.samples,
            serve_check_sweep=args.concurrency,
            serve_check_sweep_window_s=args.window,
        )
        package_triton_repository(
            work / "model.onnx",
            "onnxruntime_fp32",
            exported.signature,
            model_name="digits",
            triton=triton,
            instance_kind="KIND_GPU",
            out_dir=work / "repository",
        )
        reference = reference_outputs(pt2, "torch_export", signature, samples.inputs)
        start = time.perf_counter()
        result = check_served_repository(
            work / "repository", samples, reference, triton=triton, model="digits", fp32=True
        )
        wall = time.perf_counter() - start
    print(f"verdict: {result.verdict}")
    print(
        f"statistics: {result.requests} requests counted of {result.sent} sent; "
        f"{result.executions} executions"
    )
    if result.sweep is not None:
        print(result.sweep.to_markdown())
    swept = result.sweep.wall_s if result.sweep else 0.0
    print(f"serve check + sweep wall time: {wall:.1f} s (sweep {swept:.1f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "summary": result.summary(),
                    "sweep": result.sweep.to_dict() if result.sweep else None,
                    "wall_s": wall,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
