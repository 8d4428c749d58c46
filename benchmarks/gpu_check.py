"""GPU evidence in one prepared run: eager FP32/TF32/FP16/BF16, torch.compile and AOT Inductor packages.

For the benchmark models (the embedded digits CNN, a ResNet-50-sized CNN and a MiniLM-sized BERT
encoder) at batch 1, 8 and 32 it measures every runner's throughput (median and IQR over timed
rounds) and its accuracy against PyTorch eager FP32 (per-sample cosine, max abs diff, top-1
agreement for the classifiers), and writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``
(default ``$OUT``, else ``benchmarks/results/gpu_check``) after every step, so a run killed at its
limit still leaves what it measured. It stops itself inside ``--budget-s``: the clock is checked
before each runner and each batch, and what was skipped for time is recorded with the reason.

It depends only on what a lent GPU machine has (torch, numpy, transformers, scikit-learn): the
project's own modules it imports (``vxdeploy.components.compile.aoti``,
``vxdeploy.components.common.builtin``,
``signature``, ``stage``) need neither pydantic nor kfp. The selection harness
(``vxdeploy.components.select.benchmark``) imports the pydantic config, so its cosine / top-1 / median
definitions are followed here rather than imported.

Usage::

    python3 -m benchmarks.gpu_check --budget-s 300           # on the GPU machine (device tool)
    .venv/bin/python -m benchmarks.gpu_check --device cpu --quick --out /tmp/gc   # CPU dry run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.models import resnet50_random, synthetic_images, token_batch, transformer_encoder
from vxdeploy.components.common.stage import markdown_table, write_json, write_text_atomic

SCHEMA_VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_check"
MODELS = ("digits", "resnet50", "transformer")
FULL_BATCHES = (1, 8, 32)
QUICK_BATCHES = (1, 2)
REFERENCE = "eager_fp32"


@dataclass(frozen=True)
class RunnerSpec:
    """One way of running a model, with what it needs and the least time it is worth starting with."""

    name: str
    kind: str  # "eager", "compile" or "aoti"
    description: str
    min_budget_s: float
    cuda_only: bool = False
    autocast: torch.dtype | None = None
    tf32: bool = False
    compile_mode: str | None = None


# In priority order: when the budget runs short, the runners at the end are the ones skipped.
RUNNERS = (
    RunnerSpec(REFERENCE, "eager", "PyTorch eager, FP32 (TF32 off): the reference", 5.0),
    RunnerSpec("eager_tf32", "eager", "PyTorch eager, TF32 matmul/conv", 5.0, cuda_only=True, tf32=True),
    RunnerSpec("autocast_fp16", "eager", "eager under torch.autocast(float16)", 5.0, autocast=torch.float16),
    RunnerSpec(
        "autocast_bf16", "eager", "eager under torch.autocast(bfloat16)", 5.0, autocast=torch.bfloat16
    ),
    RunnerSpec(
        "aoti", "aoti", "AOT Inductor package via vxdeploy.components.compile.aoti.compile_aoti", 60.0
    ),
    RunnerSpec("compile_default", "compile", "torch.compile(mode=None, dynamic=False)", 90.0),
    RunnerSpec(
        "compile_max_autotune",
        "compile",
        "torch.compile(mode='max-autotune-no-cudagraphs', dynamic=False)",
        180.0,
        cuda_only=True,
        compile_mode="max-autotune-no-cudagraphs",
    ),
)
RUNNER_NAMES = tuple(r.name for r in RUNNERS)


@dataclass
class BenchModel:
    """A model on the device, its inputs per batch size, and how to compare its outputs."""

    name: str
    module: nn.Module
    inputs: dict[int, tuple[torch.Tensor, ...]]
    classifier: bool
    description: str
    max_batch: int
    # For the encoder: the attention mask, so padded positions do not count in the comparison.
    valid_mask: Callable[[tuple[torch.Tensor, ...]], torch.Tensor | None] = lambda args: None
    pt2: Path | None = None  # a torch.export program the pipeline itself would compile, if any
    # Build time relative to the large models: scales a runner's min_budget_s for this model.
    build_cost: float = 1.0
    notes: list[str] = field(default_factory=list)


@dataclass
class Clock:
    """The run's time budget."""

    budget_s: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def log(clock: Clock, message: str) -> None:
    print(f"[{clock.elapsed():7.1f}s] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# models


def build_digits(device: torch.device, batches: Sequence[int], work: Path) -> BenchModel:
    """The embedded digits CNN (trained on scikit-learn's digits) and its held-out digits."""
    from vxdeploy.components.common import builtin

    notes: list[str] = []
    pt2: Path | None
    try:
        pt2 = builtin.write_builtin("builtin://digits-cnn", work)
        images = np.load(builtin.write_builtin("builtin://digits-eval", work))["input"]
        program = torch.export.load(str(pt2))
        module = builtin.build_digits_cnn()
        assert isinstance(module, nn.Module)
        module.load_state_dict(program.state_dict)
        description = "builtin://digits-cnn (trained), held-out digits 1x8x8"
    except ImportError as exc:  # scikit-learn missing: same network, random weights and inputs
        pt2 = None
        module = builtin.build_digits_cnn()
        assert isinstance(module, nn.Module)
        images = np.random.default_rng(0).random((max(batches), 1, 8, 8), dtype=np.float32)
        description = "digits CNN layout, random weights and inputs"
        notes.append(f"scikit-learn missing ({exc}): the digits CNN is untrained, its inputs random")
    x = torch.from_numpy(np.ascontiguousarray(images[: max(batches)]))
    return BenchModel(
        "digits",
        module.eval().to(device),
        {b: (x[:b].clone().to(device),) for b in batches},
        classifier=True,
        description=description,
        max_batch=1024,
        pt2=pt2,
        notes=notes,
        build_cost=0.25,
    )


def build_resnet50(device: torch.device, batches: Sequence[int], size: int) -> BenchModel:
    """ResNet-50's layout, random weights, BN statistics from synthetic images; smooth images."""
    x = synthetic_images(max(batches), size, seed=1)
    return BenchModel(
        "resnet50",
        resnet50_random(size).to(device),
        {b: (x[:b].clone().to(device),) for b in batches},
        classifier=True,
        description=f"ResNet-50 (random weights), 3x{size}x{size} synthetic images",
        max_batch=64,
    )


def build_transformer(device: torch.device, batches: Sequence[int], seq_len: int) -> BenchModel:
    """The MiniLM-L6-sized BERT encoder on random tokens with right padding."""
    tokens = token_batch(max(batches), seq_len=seq_len, seed=1)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    return BenchModel(
        "transformer",
        transformer_encoder().to(device),
        {b: (ids[:b].clone().to(device), mask[:b].clone().to(device)) for b in batches},
        classifier=False,
        description=f"BERT encoder, MiniLM-L6 size (random weights), seq_len {seq_len}, padded",
        max_batch=64,
        valid_mask=lambda args: args[1],
    )


def build_model(
    name: str, device: torch.device, batches: Sequence[int], quick: bool, work: Path
) -> BenchModel:
    if name == "digits":
        return build_digits(device, batches, work)
    if name == "resnet50":
        return build_resnet50(device, batches, size=32 if quick else 224)
    if name == "transformer":
        return build_transformer(device, batches, seq_len=16 if quick else 128)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


# ---------------------------------------------------------------------------------------------
# runners


@contextlib.contextmanager
def precision(spec: RunnerSpec, device: torch.device) -> Iterator[None]:
    """TF32 on only for the TF32 runner; autocast for the autocast runners."""
    matmul = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if spec.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = spec.tf32
    try:
        if spec.autocast is not None:
            with torch.autocast(device.type, dtype=spec.autocast):
                yield
        else:
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


Forward = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]


def prepare_runner(
    spec: RunnerSpec, bm: BenchModel, device: torch.device, work: Path
) -> tuple[Forward, dict[str, Any]]:
    """What calls the model for this runner, and what was recorded while building it."""
    if spec.kind == "eager":
        return (lambda args: bm.module(*args)), {}
    if spec.kind == "compile":
        torch._dynamo.reset()  # a fresh cache: no guards or kernels carried over from another mode
        compiled = torch.compile(bm.module, mode=spec.compile_mode, dynamic=False)
        return (lambda args: compiled(*args)), {"mode": spec.compile_mode or "default", "dynamic": False}
    if spec.kind == "aoti":
        return prepare_aoti(bm, device, work)
    raise ValueError(f"unknown runner kind {spec.kind!r}")


def prepare_aoti(bm: BenchModel, device: torch.device, work: Path) -> tuple[Forward, dict[str, Any]]:
    """Build the package the way the pipeline does: a batch-dynamic torch.export program -> compile_aoti."""
    from vxdeploy.components.common.signature import signature_from_exported_program
    from vxdeploy.components.compile.aoti import compile_aoti

    info: dict[str, Any] = {"via": "vxdeploy.components.compile.aoti.compile_aoti", "device": device.type}
    start = time.perf_counter()
    if bm.pt2 is not None:
        pt2 = bm.pt2
        info["program"] = "the pipeline's own torch.export program (builtin)"
    else:
        # Export from the CPU copy: the pipeline's programs come from users' CPU exports, and
        # compile_aoti moves the program to CUDA itself.
        cpu_module = bm.module.to("cpu")
        # Batch 2 as the example: an example batch of 1 would specialize the batch dimension.
        example = tuple(torch.cat([t[:1], t[:1]]).cpu() for t in bm.inputs[min(bm.inputs)])
        batch = torch.export.Dim("batch", min=1, max=bm.max_batch)
        try:
            program = torch.export.export(
                cpu_module, example, dynamic_shapes=tuple({0: batch} for _ in example)
            )
        finally:
            bm.module.to(device)
        pt2 = work / f"{bm.name}.pt2"
        torch.export.save(program, str(pt2))
        info["program"] = f"torch.export with batch Dim(1..{bm.max_batch})"
    info["export_s"] = round(time.perf_counter() - start, 3)
    signature = signature_from_exported_program(torch.export.load(str(pt2)))
    package = work / f"{bm.name}_{device.type}.pt2"
    info.update(compile_aoti(pt2, package, signature, device=device.type))
    loaded = torch._inductor.aoti_load_package(str(package))

    def forward(args: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = loaded(*args)
        first: torch.Tensor = out[0] if isinstance(out, (list, tuple)) else out
        return first

    return forward, info


# ---------------------------------------------------------------------------------------------
# measurement


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    forward: Forward,
    args: tuple[torch.Tensor, ...],
    device: torch.device,
    *,
    warmup: int,
    rounds: int,
    round_s: float,
    fixed_iterations: int | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Throughput over timed rounds of back-to-back calls (synchronized at round ends), and the output.

    The first call is timed alone (for torch.compile it includes the compilation at this shape);
    the warm-up's mean call time sets the calls per round (about ``round_s`` each).
    """
    batch = int(args[0].shape[0])
    start = time.perf_counter()
    out = forward(args)
    synchronize(device)
    first_call_s = time.perf_counter() - start
    # Warm up for `warmup` calls and at least one round's time: the first tens of calls can be
    # far slower than the rest (lazy kernel selection and caches), seen on CPU here.
    calls, start = 0, time.perf_counter()
    while calls < warmup or time.perf_counter() - start < round_s:
        out = forward(args)
        calls += 1
        if calls % 8 == 0 or calls >= warmup:
            synchronize(device)
    synchronize(device)
    per_call = (time.perf_counter() - start) / max(calls, 1)
    iterations = fixed_iterations or int(min(1000, max(1, round(round_s / max(per_call, 1e-6)))))
    throughputs: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(iterations):
            out = forward(args)
        synchronize(device)
        throughputs.append(batch * iterations / (time.perf_counter() - start))
    q1, median, q3 = (float(v) for v in np.percentile(throughputs, [25, 50, 75]))
    figures = {
        "throughput_median": median,
        "throughput_q1": q1,
        "throughput_q3": q3,
        "iqr_pct": 100.0 * (q3 - q1) / median if median > 0 else 0.0,
        "latency_ms_median": 1e3 * batch / median if median > 0 else None,
        "rounds": rounds,
        "iterations_per_round": iterations,
        "first_call_s": round(first_call_s, 4),
    }
    return out, figures


def compare(reference: torch.Tensor, got: torch.Tensor, mask: torch.Tensor | None) -> dict[str, Any]:
    """Per-sample cosine, max abs diff and top-1 agreement, through the project's one comparison.

    ``vxdeploy.components.verify.compare.compare_outputs`` gives top-1 agreement for (samples, classes)
    outputs. With a mask (the encoder's attention mask) padded positions are zeroed in both first.
    """
    from vxdeploy.components.verify.compare import compare_outputs

    ref = reference.detach().double().cpu()
    out = got.detach().double().cpu()
    if mask is not None and ref.shape == out.shape:
        keep = mask.detach().cpu().to(ref.dtype).reshape(*mask.shape, *([1] * (ref.dim() - mask.dim())))
        ref, out = ref * keep, out * keep
    (figures,) = compare_outputs({"output": ref.numpy()}, {"output": out.numpy()})
    if not figures.shapes_match:
        raise ValueError(f"output shape {figures.candidate_shape} != reference shape {figures.shape}")
    return {
        "samples": figures.shape[0] if figures.shape else 1,
        "cosine_min": figures.cosine_min,
        "cosine_mean": figures.cosine_mean,
        "max_abs_diff": figures.max_abs_diff,
        "max_rel_diff": figures.max_rel_diff,
        "finite": bool(torch.isfinite(got).all()),
        "top1_agreement": figures.top1_agreement,
    }


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    """Everything one run records; written out after every step."""

    args: argparse.Namespace
    device: torch.device
    clock: Clock
    out_dir: Path
    started_utc: str
    environment: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    runners: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False

    def record(self, row: dict[str, Any]) -> None:
        self.results.append(row)
        self.write()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "started_utc": self.started_utc,
            "wall_s": round(self.clock.elapsed(), 1),
            "finished": self.finished,
            "budget_s": self.clock.budget_s,
            "quick": bool(self.args.quick),
            "device": self.device.type,
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "settings": {
                "batches": list(self.args.batches),
                "rounds": self.args.rounds,
                "round_s": self.args.round_s,
                "warmup": self.args.warmup,
                "reference": REFERENCE,
                "fp32_means": "TF32 off (float32 matmul precision 'highest', cudnn.allow_tf32 False) "
                "except in eager_tf32",
                "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                "throughput": "samples/s per round of back-to-back calls, synchronized at the round's "
                "end; median and quartiles over rounds",
            },
            "environment": self.environment,
            "models": self.models,
            "runners": self.runners,
            "results": self.results,
        }

    def write(self) -> None:
        write_json(self.out_dir / "gpu_check.json", self.to_dict())
        write_text_atomic(self.out_dir / "gpu_check.md", markdown_report(self.to_dict()))


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, and the GPU's name, compute capability and memory."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        major, minor = torch.cuda.get_device_capability(device)
        env["gpu"] = {
            "name": torch.cuda.get_device_name(device),
            "compute_capability": f"{major}.{minor}",
            "total_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "count": torch.cuda.device_count(),
        }
        try:
            smi = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=driver_version,clocks.max.sm,power.limit",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            env["gpu"]["nvidia_smi"] = smi.stdout.strip().splitlines()[0] if smi.stdout.strip() else ""
        except (OSError, subprocess.SubprocessError) as exc:
            env["gpu"]["nvidia_smi"] = f"unavailable: {exc}"
    return env


def plan(args: argparse.Namespace, device: torch.device) -> list[tuple[RunnerSpec, str]]:
    """(runner, model) steps in priority order: each runner on every model, runner by runner."""
    selected = [r for r in RUNNERS if r.name in args.runners]
    if REFERENCE not in args.runners:
        selected.insert(0, RUNNERS[0])  # accuracy needs the reference
    return [(spec, model) for spec in selected for model in args.models]


def skip_reason(spec: RunnerSpec, model: str, args: argparse.Namespace, device: torch.device) -> str:
    """Why this step is not run at all, or "" (the time budget is checked separately)."""
    if spec.cuda_only and device.type != "cuda":
        what = "TF32 is a CUDA tensor-core mode" if spec.tf32 else "max-autotune tunes GPU kernels"
        return f"CUDA only ({what}); device is {device.type}"
    if not (args.quick and device.type == "cpu") or spec.name == REFERENCE:
        return ""
    # The CPU dry run shows that every path works, in well under a minute: the models are built
    # and run once each, the other runners run on the first model only.
    if model != args.models[0]:
        return f"--quick on CPU runs {spec.name} on the first model only ({args.models[0]})"
    if spec.kind == "aoti" and not args.runners_given:
        return (
            "--quick on CPU: a CPU AOT Inductor build takes 20-40 s on 2 cores; name it in --runners "
            "to build it (tests/unit/test_aoti.py builds the digits package through compile_aoti)"
        )
    return ""


def run_step(
    run: Run, spec: RunnerSpec, bm: BenchModel, references: dict[tuple[str, int], torch.Tensor]
) -> None:
    args, device, clock = run.args, run.device, run.clock
    info: dict[str, Any] = {"model": bm.name, "runner": spec.name, "description": spec.description}
    try:
        with tempfile.TemporaryDirectory(prefix=f"gpu-check-{bm.name}-") as tmp:
            start = time.perf_counter()
            with precision(spec, device):
                forward, built = prepare_runner(spec, bm, device, Path(tmp))
            info.update(built, status="ready", prepare_s=round(time.perf_counter() - start, 3))
            # torch.compile compiles again at each batch size (dynamic=False): a batch is started
            # only when at least as much time is left as the last batch's first call took.
            needed = 1.0
            for batch in args.batches:
                if clock.left() < needed:
                    run.record(
                        row(
                            bm,
                            spec,
                            batch,
                            "skipped",
                            f"time budget: {clock.left():.0f} s left, ~{needed:.0f} s needed",
                        )
                    )
                    log(clock, f"{bm.name} {spec.name} b{batch}: skipped for time")
                    continue
                try:
                    with torch.inference_mode(), precision(spec, device):
                        out, figures = measure(
                            forward,
                            bm.inputs[batch],
                            device,
                            warmup=args.warmup,
                            rounds=args.rounds,
                            round_s=args.round_s,
                            fixed_iterations=2 if args.quick else None,
                        )
                    out = out.float()
                    if spec.name == REFERENCE:
                        references[(bm.name, batch)] = out.detach().cpu()
                    reference = references.get((bm.name, batch))
                    if reference is not None:
                        figures["accuracy"] = compare(reference, out, bm.valid_mask(bm.inputs[batch]))
                    ref_row = next(
                        (
                            r
                            for r in run.results
                            if (r["model"], r["runner"], r["batch"], r["status"])
                            == (bm.name, REFERENCE, batch, "ok")
                        ),
                        None,
                    )
                    if ref_row is not None and spec.name != REFERENCE:
                        figures["speedup_vs_eager_fp32"] = (
                            figures["throughput_median"] / ref_row["throughput_median"]
                        )
                    if spec.kind == "compile":
                        needed = max(1.0, figures["first_call_s"])
                    result = row(bm, spec, batch, "ok", "", **figures)
                    run.record(result)
                    log(clock, progress_line(result))
                except Exception as exc:  # one batch failing must not lose the others
                    run.record(row(bm, spec, batch, "failed", error_text(exc), traceback=tail(exc)))
                    log(clock, f"{bm.name} {spec.name} b{batch}: FAILED {error_text(exc)}")
            del forward
    except Exception as exc:  # a runner that cannot be built: say why, measure the next one
        info.update(status="failed", reason=error_text(exc), traceback=tail(exc))
        for batch in args.batches:
            run.results.append(row(bm, spec, batch, "failed", f"build: {error_text(exc)}"))
        log(clock, f"{bm.name} {spec.name}: build FAILED {error_text(exc)}")
    finally:
        run.runners.append(info)
        run.write()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def row(
    bm: BenchModel, spec: RunnerSpec, batch: int, status: str, reason: str, **figures: Any
) -> dict[str, Any]:
    return {
        "model": bm.name,
        "runner": spec.name,
        "batch": batch,
        "status": status,
        "reason": reason,
        **figures,
    }


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text if len(text) <= 600 else text[:597] + "..."


def tail(exc: BaseException) -> list[str]:
    return "".join(traceback.format_exception(exc)).splitlines()[-20:]


def progress_line(result: dict[str, Any]) -> str:
    acc = result.get("accuracy") or {}
    parts = [
        f"{result['model']} {result['runner']} b{result['batch']}:",
        f"{result['throughput_median']:.1f} samples/s (IQR {result['iqr_pct']:.1f} %)",
        f"first call {result['first_call_s']:.2f} s",
    ]
    if "speedup_vs_eager_fp32" in result:
        parts.append(f"x{result['speedup_vs_eager_fp32']:.2f} vs eager fp32")
    if acc:
        parts.append(f"cos {acc['cosine_min']:.6f}, max abs {acc['max_abs_diff']:.3g}")
        if acc.get("top1_agreement") is not None:
            parts.append(f"top-1 {100 * acc['top1_agreement']:.0f} %")
    return " ".join(parts)


def run_all(run: Run) -> None:
    args, device, clock = run.args, run.device, run.clock
    references: dict[tuple[str, int], torch.Tensor] = {}
    built: dict[str, BenchModel] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for name in args.models:
            if clock.left() < 5.0:
                run.models[name] = {"status": "skipped", "reason": f"time budget: {clock.left():.0f} s left"}
                continue
            start = time.perf_counter()
            try:
                bm = build_model(name, device, args.batches, args.quick, work)
            except Exception as exc:
                run.models[name] = {"status": "failed", "reason": error_text(exc), "traceback": tail(exc)}
                log(clock, f"model {name}: FAILED {error_text(exc)}")
                continue
            built[name] = bm
            run.models[name] = {
                "status": "ready",
                "description": bm.description,
                "parameters": sum(p.numel() for p in bm.module.parameters()),
                "classifier": bm.classifier,
                "build_s": round(time.perf_counter() - start, 2),
                "notes": bm.notes,
            }
            log(clock, f"model {name}: {bm.description} ({run.models[name]['parameters']:,} parameters)")
        run.write()
        for spec, name in plan(args, device):
            if name not in built:
                continue
            reason = skip_reason(spec, name, args, device)
            needed = 0.0 if args.quick else spec.min_budget_s * built[name].build_cost
            if not reason and clock.left() < needed:
                reason = (
                    f"time budget: {clock.left():.0f} s left, {spec.name} starts with {needed:.0f} s or more"
                )
            if reason:
                for batch in args.batches:
                    run.results.append(row(built[name], spec, batch, "skipped", reason))
                run.runners.append(
                    {"model": name, "runner": spec.name, "status": "skipped", "reason": reason}
                )
                run.write()
                log(clock, f"{name} {spec.name}: skipped ({reason})")
                continue
            log(clock, f"{name} {spec.name}: {spec.description}")
            run_step(run, spec, built[name], references)


# ---------------------------------------------------------------------------------------------
# report


def markdown_report(data: dict[str, Any]) -> str:
    """The table of a run: throughput per batch, speed-up over eager FP32, worst accuracy over batches."""
    env = data["environment"]
    gpu = env.get("gpu") or {}
    batches = data["settings"]["batches"]
    header = [
        "# GPU check" + (" (quick dry run)" if data["quick"] else ""),
        "",
        f"- when: {data['started_utc']}; wall {data['wall_s']} s of a {data['budget_s']:.0f} s budget"
        + ("" if data["finished"] else " (**incomplete**: the run was still going when this was written)"),
        f"- device: {data['device']}"
        + (
            f"; GPU {gpu.get('name')} (compute capability {gpu.get('compute_capability')}, "
            f"{gpu.get('total_memory_gib')} GiB, {gpu.get('multiprocessors')} SMs; nvidia-smi: "
            f"{gpu.get('nvidia_smi')})"
            if gpu
            else ""
        ),
        f"- torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), transformers "
        f"{env.get('transformers')}, Python {env['python']}, {env['cpu_count']} CPUs",
        f"- throughput: {data['settings']['throughput']}; FP32 means {data['settings']['fp32_means']}",
        "- accuracy: against eager FP32 at the same batch, worst over the batch sizes",
        "",
    ]
    for name, model in data["models"].items():
        header.append(f"- model `{name}`: {model.get('description', model.get('reason', ''))}")
    header.append("\n")
    rows = []
    by_key = {(r["model"], r["runner"], r["batch"]): r for r in data["results"]}
    seen: list[tuple[str, str]] = []
    for r in data["results"]:
        if (r["model"], r["runner"]) not in seen:
            seen.append((r["model"], r["runner"]))
    for model, runner in seen:
        cells: dict[str, Any] = {"model": model, "runner": runner}
        accs = []
        notes = []
        for b in batches:
            r = by_key.get((model, runner, b))
            if r is None:
                cells[f"b{b} samples/s (IQR)"] = ""
                cells[f"× fp32 b{b}"] = ""
            elif r["status"] == "ok":
                cells[f"b{b} samples/s (IQR)"] = f"{r['throughput_median']:.4g} ({r['iqr_pct']:.1f} %)"
                speedup = r.get("speedup_vs_eager_fp32")
                cells[f"× fp32 b{b}"] = f"{speedup:.2f}" if speedup is not None else ""
                if r.get("accuracy"):
                    accs.append(r["accuracy"])
            else:
                cells[f"b{b} samples/s (IQR)"] = r["status"]
                cells[f"× fp32 b{b}"] = ""
                if r["reason"] and r["reason"] not in notes:
                    notes.append(r["reason"])
        if accs and runner != REFERENCE:
            cells["cosine min"] = f"{min(a['cosine_min'] for a in accs):.6f}"
            cells["max abs diff"] = f"{max(a['max_abs_diff'] for a in accs):.3g}"
            top1 = [a["top1_agreement"] for a in accs if a.get("top1_agreement") is not None]
            cells["top-1 agree"] = f"{100 * min(top1):.0f} %" if top1 else "n/a"
        else:
            cells["cosine min"] = cells["max abs diff"] = cells["top-1 agree"] = ""
        cells["notes"] = "; ".join(notes)
        rows.append(cells)
    columns = (
        ["model", "runner"]
        + [f"b{b} samples/s (IQR)" for b in batches]
        + [f"× fp32 b{b}" for b in batches]
        + ["cosine min", "max abs diff", "top-1 agree", "notes"]
    )
    built = [
        f"- `{r['model']}` {r['runner']}: {r.get('status')}"
        + (f", built in {r['prepare_s']} s" if "prepare_s" in r else "")
        + (f" (compile {r['compile_s']} s)" if "compile_s" in r else "")
        + (f": {r['reason']}" if r.get("reason") else "")
        for r in data["runners"]
        if r["runner"] not in (REFERENCE, "eager_tf32", "autocast_fp16", "autocast_bf16")
    ]
    return "\n".join(header) + markdown_table(rows, columns) + "\n" + "\n".join(built) + "\n"


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: cuda when present"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, few iterations: the CPU dry run")
    p.add_argument(
        "--budget-s", type=float, default=300.0, help="stop starting new work after this many seconds"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default $OUT, else benchmarks/results/)"
    )
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--runners", nargs="+", choices=RUNNER_NAMES, default=list(RUNNER_NAMES))
    p.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 8 32 (quick: 1 2)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per batch (default 7; quick 3)")
    p.add_argument("--round-s", type=float, default=0.05, help="target length of one timed round")
    p.add_argument("--warmup", type=int, default=None, help="calls after the first (default 5; quick 1)")
    args = p.parse_args(argv)
    args.runners_given = any(a == "--runners" or a.startswith("--runners=") for a in (argv or sys.argv[1:]))
    args.batches = args.batches or list(QUICK_BATCHES if args.quick else FULL_BATCHES)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    return args


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu"
        )
    return torch.device(choice)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    out_dir = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else DEFAULT_OUT)
    clock = Clock(args.budget_s)
    torch.manual_seed(0)
    run = Run(
        args,
        device,
        clock,
        Path(out_dir),
        dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        environment(device),
    )
    gpu = run.environment.get("gpu")
    log(clock, f"device {device}" + (f": {gpu['name']} (cc {gpu['compute_capability']})" if gpu else ""))
    log(clock, f"torch {torch.__version__}, CUDA {torch.version.cuda}; writing to {run.out_dir}")
    run.write()
    run_all(run)
    run.finished = True
    run.write()
    ok = sum(r["status"] == "ok" for r in run.results)
    failed = sum(r["status"] == "failed" for r in run.results)
    skipped = sum(r["status"] == "skipped" for r in run.results)
    log(clock, f"done: {ok} measured, {failed} failed, {skipped} skipped -> {run.out_dir / 'gpu_check.md'}")
    # Failures are figures too (they are in the report); only a run that measured nothing fails.
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
