"""Stage reports of one run, made by the stages' own record types, for the report tests.

The figures are shaped like a busy 2-core machine's digits run (three candidates and the
reference at batch 1, 8 and 32, a noisy one, skipped TensorRT, a served sweep, a 4-step canary);
the records go through the same ``to_dict`` / ``row`` the stages write, and a JSON round trip.
"""

from __future__ import annotations

import json
from typing import Any

from vxdeploy.components.canary.analysis import Analysis, Check
from vxdeploy.components.canary.metrics import WindowStats
from vxdeploy.components.canary.rollout import StepRecord
from vxdeploy.components.package.serve_sweep import SweepPoint, SweepResult
from vxdeploy.components.select.benchmark import (
    AccuracyFigures,
    BenchmarkResult,
    CandidateFigures,
    LatencyFigures,
    SpeedupFigures,
)

BATCHES = (1, 8, 32)
SUBSTITUTION = "instance_group KIND_GPU -> KIND_CPU (no GPU on this machine)"
NOT_COSTED = "not costed: a2-highgpu-1g with 1 x NVIDIA_TESLA_A100 has no price in the snapshot"


def _latency(batch: int, p50_ms: float, iqr_pct: float = 8.0) -> LatencyFigures:
    return LatencyFigures(
        batch_size=batch,
        iterations=400,
        seconds=1.0,
        p50_ms=p50_ms,
        p90_ms=p50_ms * 1.2,
        p95_ms=p50_ms * 1.4,
        p99_ms=p50_ms * 2.0,
        mean_ms=p50_ms * 1.1,
        std_ms=p50_ms * 0.2,
        min_ms=p50_ms * 0.8,
        max_ms=p50_ms * 3.0,
        throughput=batch * 1000.0 / p50_ms,
        throughput_mean=batch * 900.0 / p50_ms,
        iqr_pct=iqr_pct,
        cv_pct=iqr_pct * 1.5,
    )


def _accuracy(value: float, drop: float, cosine: float) -> AccuracyFigures:
    return AccuracyFigures(
        samples=500,
        max_abs_diff=5.7e-06 if drop == 0 else 3.15,
        cosine_mean=cosine,
        cosine_min=cosine - 0.001,
        top1_agreement=0.998,
        task_accuracy=value / 100,
        reference_accuracy=0.982,
        drop_points=drop,
        drop_basis="top1_accuracy",
        outputs=[
            {
                "name": "output",
                "metric": "top1_accuracy",
                "task": "classification",
                "candidate_value": value,
                "fp32_value": 98.2,
                "drop_points": drop,
                "within_budget": True,
            }
        ],
    )


def _candidate(
    name: str, runtime: str, precision: str, p50s: tuple[float, ...], acc: AccuracyFigures, **extra: Any
) -> CandidateFigures:
    latency = {b: _latency(b, p) for b, p in zip(BATCHES, p50s, strict=True)}
    return CandidateFigures(
        name=name,
        kind=name,
        precision=precision,
        runtime=runtime,
        device="cpu",
        accuracy=acc,
        latency=latency,
        candidate={"name": name, "status": "built"},
        **extra,
    )


def benchmark() -> BenchmarkResult:
    """The reference, two ONNX Runtime candidates and an AOTI one (noisy at batch 8)."""
    reference = _candidate("pytorch_eager", "pytorch", "fp32", (0.37, 1.2, 4.1), _accuracy(98.2, 0.0, 1.0))
    reference.reference = True
    fp32 = _candidate(
        "onnxruntime_fp32", "onnxruntime", "fp32", (0.0408, 0.199, 0.841), _accuracy(98.2, 0.0, 1.0)
    )
    int8 = _candidate(
        "onnxruntime_int8", "onnxruntime", "int8", (0.0281, 0.0995, 0.351), _accuracy(98.0, 0.2, 0.9996)
    )
    aoti = _candidate("aoti_cpu", "aoti", "fp32", (0.108, 0.546, 3.9), _accuracy(98.2, 0.0, 1.0))
    aoti.latency[8] = _latency(8, 0.546, iqr_pct=365.6)
    for cand in (fp32, int8, aoti):
        for b in BATCHES:
            ratio = reference.latency[b].p50_ms / cand.latency[b].p50_ms
            distinct = cand is not aoti or b != 32
            cand.speedup[b] = SpeedupFigures(
                b,
                ratio,
                ratio * 0.9 if distinct else 0.68,
                ratio * 1.1 if distinct else 1.33,
                20,
                "faster" if distinct else "not distinguishable",
            )
    skipped = CandidateFigures(
        "tensorrt_fp16",
        "tensorrt_fp16",
        "fp16",
        "tensorrt",
        "cuda",
        rejected_reason="not built (skipped): TensorRT is not installed here",
        candidate={"name": "tensorrt_fp16", "status": "skipped"},
    )
    return BenchmarkResult([reference, fp32, int8, aoti, skipped], "pytorch_eager", 500, list(BATCHES))


def sweep() -> SweepResult:
    points = [
        SweepPoint(
            mode, clients, 40, 36, 0, rate, 6.0 * clients, 9.0 * clients, 10.0 * clients, 8, avg, 1.5, 2.0, 40
        )
        for mode, rates, avg in (("off", (20.5, 36.5, 30.1), 1.0), ("on", (144.5, 162.0, 188.0), 8.0))
        for clients, rate in zip((1, 4, 16), rates, strict=True)
    ]
    return SweepResult("digits", points, 2.0, 14.2, 5.15, "best within p99 budget", "tritonclient gRPC")


def canary_steps(*, rolled_back: bool = False) -> list[StepRecord]:
    """10, 25, 50 and 100 %; the 100 % step has no baseline traffic and is compared with step 3's."""
    records = []
    baseline = {1: WindowStats(92, 0, 40.3), 2: WindowStats(78, 0, 37.5), 3: WindowStats(50, 0, 34.3)}
    for step, percent in enumerate((10, 25, 50, 100), start=1):
        errors = 30 if rolled_back and step == 2 else 0
        canary = WindowStats(percent, errors, 30.0 + step)
        passed = errors == 0
        check = Check("error rate", errors / percent, 0.05, passed, "canary error rate 30% over 5%")
        compared = baseline.get(step, baseline[3])
        records.append(
            StepRecord(
                step,
                percent,
                1,
                {"canary": percent},
                "2026-12-01T12:00:00Z",
                "2026-12-01T12:00:01Z",
                Analysis(canary, compared, [check]),
                "baseline, same window" if step < 4 else "baseline, its last window with traffic",
                None if step < 4 else 3,
            )
        )
        if rolled_back and step == 2:
            break
    return records


def _json(data: dict[str, Any]) -> dict[str, Any]:
    """What a stage report holds once written and read back (keys sorted, as write_json does)."""
    read: dict[str, Any] = json.loads(json.dumps(data, sort_keys=True, default=lambda o: o.tolist()))
    return read


def stage_reports(*, deployed: bool = True, rolled_back: bool = False) -> dict[str, dict[str, Any]]:
    """Every stage's report of one run, by stage name."""
    result = benchmark()

    def rep(
        stage: str,
        summary: dict[str, Any],
        details: dict[str, Any],
        status: str = "succeeded",
        reason: str = "",
    ) -> dict[str, Any]:
        return _json(
            {
                "stage": stage,
                "status": status,
                "reason": reason,
                "duration_s": 1.5,
                "summary": summary,
                "details": details,
            }
        )

    cost = {
        "rows": [
            {"name": "aoti_cpu", "priced": True, "notes": []},
            {"name": "tensorrt_fp16", "priced": False, "notes": [NOT_COSTED]},
        ],
        "notes": [
            "Figures measured on cpu:Xeon are priced as Vertex AI n1-standard-4 replicas.",
            "Replicas = ceil(...)",
        ],
        "markdown": (
            "### Cost at 50 predictions/s in us-central1\n\n"
            "| candidate | $/hour |\n|---|---|\n| aoti_cpu | $0.2185 |\n"
        ),
    }
    reports = {
        "validate": rep(
            "validate",
            {"checks": 2, "passed": 1, "problems": 0},
            {
                "checks": [
                    {"name": "config", "status": "passed", "detail": ""},
                    {"name": "serving image", "status": "skipped", "detail": "nothing pulls it"},
                ]
            },
        ),
        "intake": rep(
            "intake",
            {
                "format": "torch_export",
                "model_uri": "builtin://digits-cnn",
                "calibration_samples": 512,
                "eval_samples": 500,
            },
            {},
        ),
        "export": rep(
            "export",
            {
                "opset": 19,
                "parity_reference": "pytorch",
                "parity_samples": 64,
                "parity_max_abs_diff": 5.7e-06,
                "parity_min_cosine": 0.99999,
            },
            {
                "parity": [
                    {
                        "name": "output",
                        "shape": [64, 10],
                        "max_abs_diff": 5.72e-06,
                        "max_rel_diff": 0.00019,
                        "cosine_mean": 0.9999999,
                        "cosine_min": 0.99999,
                        "top1_agreement": 1.0,
                        "mismatched": 0,
                    },
                    {
                        "name": "embedding",
                        "shape": [64, 32],
                        "max_abs_diff": 1.1e-05,
                        "max_rel_diff": 0.0003,
                        "cosine_mean": 0.99999,
                        "cosine_min": 0.9999,
                        "top1_agreement": None,
                        "mismatched": 0,
                    },
                ]
            },
        ),
        "calibrate": rep(
            "calibrate",
            {
                "method": "entropy",
                "backend": "onnxruntime",
                "operators": "all",
                "accepted": True,
                "fp32_accuracy": 98.2,
                "int8_accuracy": 98.0,
                "accuracy_drop_points": 0.2,
                "excluded_layers": 1,
                "calibration_samples": 512,
                "eval_samples": 500,
            },
            {
                "excluded_layers": ["/fc/Gemm"],
                "notes": [],
                "steps": [
                    {
                        "step": 0,
                        "excluded": 0,
                        "excluded_layers": "-",
                        "fp32_accuracy_%": 98.2,
                        "int8_accuracy_%": 97.4,
                        "drop_points": 0.8,
                        "min_cosine": 0.9981,
                        "within_budget": False,
                    },
                    {
                        "step": 1,
                        "excluded": 1,
                        "excluded_layers": "/fc/Gemm",
                        "fp32_accuracy_%": 98.2,
                        "int8_accuracy_%": 98.0,
                        "drop_points": 0.2,
                        "min_cosine": 0.9996,
                        "within_budget": True,
                    },
                ],
            },
        ),
        "compile": rep(
            "compile",
            {"built": ["onnxruntime_fp32", "onnxruntime_int8", "aoti_cpu"], "skipped": ["tensorrt_fp16"]},
            {
                "skipped": [
                    {
                        "name": "tensorrt_fp16",
                        "kind": "tensorrt_fp16",
                        "reason": "TensorRT is not installed here",
                        "status": "skipped",
                    }
                ],
                "candidates": [
                    {
                        "name": "tensorrt_fp16",
                        "kind": "tensorrt_fp16",
                        "reason": "TensorRT is not installed here",
                        "status": "skipped",
                    }
                ],
            },
        ),
        "select": rep(
            "select",
            {
                "selected": "aoti_cpu",
                "policy": "max_throughput",
                "reason": "aoti_cpu selected by max_throughput: throughput 1.466e+04 samples/s at batch 8",
            },
            {
                "selected": "aoti_cpu",
                "benchmark": result.to_dict(),
                "decision": {
                    "policy": "max_throughput",
                    "selected": "aoti_cpu",
                    "warnings": ["the reference's spread is 94% at batch 1"],
                },
                "cost": cost,
            },
        ),
        "package": rep(
            "package",
            {
                "model_name": "digits",
                "kind": "aoti",
                "backend": "python",
                "instance_kind": "KIND_CPU",
                "max_batch_size": 32,
            },
            {"notes": []},
        ),
        "serve_check": rep(
            "serve_check",
            {
                "verdict": "passed with substitutions: " + SUBSTITUTION,
                "requests": 64,
                "executions": 8,
                "dynamic_batching_gain": 5.15,
            },
            {
                "substitutions": [SUBSTITUTION],
                "errors": [],
                "sweep": sweep().to_dict(),
                "cost": cost,
            },
            reason="passed with substitutions: " + SUBSTITUTION,
        ),
    }
    if deployed:
        steps = canary_steps(rolled_back=rolled_back)
        decision = "rolled_back" if rolled_back else "promoted"
        reports["deploy"] = rep(
            "deploy",
            {
                "endpoint": "projects/p/locations/us-central1/endpoints/e",
                "deploy": "deployed",
                "traffic_percent": 0,
            },
            {},
        )
        reports["canary"] = rep(
            "canary",
            {
                "decision": decision,
                "steps_analysed": len(steps),
                "final_split": {"baseline": 100} if rolled_back else {"canary": 100},
            },
            {
                "steps": [s.row() for s in steps],
                "analyses": [s.to_dict() for s in steps],
                "smoke_test": {"requests": 4, "succeeded": 4},
            },
            status="failed" if rolled_back else "succeeded",
            reason="step 2 (25%): canary error rate 30% over 5%" if rolled_back else "all 4 step(s) passed",
        )
        if not rolled_back:
            reports["monitoring"] = rep(
                "monitoring", {"alert_policies": 3, "notification_channels": 0, "dashboard": "d"}, {}
            )
    return reports
