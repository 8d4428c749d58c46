"""The generation repository served by the real bundled Triton, streamed through a real gRPC client.

One server per module serves the packaged ``digits-vlm`` repository (ONNX parts swapped for the
Python-backend ONNX Runtime model, as the serve check does); the stage test starts its own.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from kfp import dsl

from tests.generation_support import digits_vlm_files, eval_npz, selected_model_dir, source_model_dir
from vxdeploy.components.common.config import TritonConfig
from vxdeploy.components.generation.loop import TorchParts, generate_batched
from vxdeploy.components.generation.serve_check import (
    _bundled_text_substitution,
    stream_generations,
)
from vxdeploy.components.generation.serving import package_generation_repository
from vxdeploy.components.generation.spec import GenerationSpec
from vxdeploy.components.package.repository import MODEL_REPOSITORY_DIR
from vxdeploy.components.package.serve_check import serve_copy
from vxdeploy.components.package.serve_sweep import read_counters
from vxdeploy.components.package.triton_install import ServeCheckServer
from vxdeploy.components.package.tritonserver import find_bundled_triton, running_triton

INSTALL, WHY_NOT = find_bundled_triton()
pytestmark = pytest.mark.skipif(INSTALL is None, reason=WHY_NOT)
MODEL = "digits-vlm"
_HTTP: dict[str, str] = {}  # the module server's gRPC address -> its HTTP address
TRITON = TritonConfig(
    max_batch_size=8,
    dynamic_batching={"preferred_batch_sizes": [8], "max_queue_delay_microseconds": 2000},
    serve_check_requests=24,
)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vlm")
    files = digits_vlm_files(root / "files")
    sel_dir, sel_meta = selected_model_dir(files, root / "selected")
    src_dir, src_meta = source_model_dir(files, root / "source")
    spec = GenerationSpec.from_dict(sel_meta["generation"])
    data = np.load(eval_npz(root, 24))
    images = {"images": data["images"]}
    reference = generate_batched(TorchParts(files, spec, ["images"]).generate, images, spec)
    return {
        "root": root,
        "spec": spec,
        "selected": (sel_dir, sel_meta),
        "source": (src_dir, src_meta),
        "eval": root / "eval.npz",
        "images": images,
        "labels": data["labels"],
        "reference": reference.tokens,
    }


@pytest.fixture(scope="module")
def server(vlm: dict[str, Any]) -> Iterator[str]:
    assert INSTALL is not None
    sel_dir, meta = vlm["selected"]
    packaged = package_generation_repository(
        sel_dir,
        meta["parts"],
        vlm["spec"],
        model_name=MODEL,
        triton=TRITON,
        instance_kind="KIND_CPU",
        out_dir=vlm["root"] / "repo",
    )
    served = vlm["root"] / "served"
    serve_copy(packaged.repository.model_repository, served, gpu_available=False)
    _bundled_text_substitution(served, MODEL, ServeCheckServer(INSTALL, "bundled", frozenset({"python"})))
    with running_triton(
        served, install=INSTALL, startup_timeout_s=120, cache_size_bytes=16 << 20, workdir=vlm["root"] / "srv"
    ) as running:
        _HTTP[running.grpc_url] = running.http_url
        yield running.grpc_url


def _stream(url: str, images: np.ndarray) -> list[tuple[float, Any, Any]]:
    """Send one request on a gRPC stream; every response (and error) until the final flag."""
    client = grpcclient.InferenceServerClient(url)
    inbox: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: inbox.put((time.perf_counter(), result, error)))
    item = grpcclient.InferInput("images", list(images.shape), "FP32")
    item.set_data_from_numpy(np.ascontiguousarray(images, np.float32))
    client.async_stream_infer(MODEL, [item], request_id="r", enable_empty_final_response=True)
    got = []
    try:
        while True:
            at, result, error = inbox.get(timeout=30)
            got.append((at, result, error))
            if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
                return got
    finally:
        client.stop_stream()
        client.close()


def test_each_token_arrives_as_its_own_response_then_the_final_flag(vlm: dict[str, Any], server: str) -> None:
    got = _stream(server, vlm["images"]["images"][:1])

    assert all(error is None for _, _, error in got)
    *tokens, final = got
    assert final[1].get_response().parameters["triton_final_response"].bool_param
    assert not final[1].get_response().outputs  # the final flag comes alone
    ids = [int(r.as_numpy("output_ids")[0, 0]) for _, r, _ in tokens]
    ref = [t for t in vlm["reference"][0].tolist()]
    assert ids == ref[: len(ids)] and ids[-1] == vlm["spec"].eos_token_id  # "digit <word> <eos>"
    assert len(ids) == 3
    encode = [r.as_numpy("encode_ms") for _, r, _ in tokens]
    assert encode[0] is not None and float(encode[0][0, 0]) > 0 and all(e is None for e in encode[1:])
    times = [at for at, _, _ in got]
    assert times == sorted(times)
    assert vlm["spec"].decode(ids) == vlm["spec"].decode(ref)


def test_a_request_of_several_images_streams_one_token_per_image(vlm: dict[str, Any], server: str) -> None:
    images = vlm["images"]["images"][:3]
    got = _stream(server, images)

    rows = [r.as_numpy("output_ids") for _, r, e in got[:-1]]
    assert all(r.shape == (3, 1) for r in rows)
    tokens = np.concatenate(rows, axis=1)
    want = vlm["reference"][:3, : tokens.shape[1]]
    assert np.array_equal(tokens, want)  # pad after each sequence's eos


def test_a_request_the_generator_cannot_take_gets_an_error_not_a_hang(server: str) -> None:
    got = _stream(server, np.zeros((1, 1, 4, 4), np.float32))
    assert got[-1][2] is not None and "images" in str(got[-1][2])


def test_the_generate_extension_streams_a_caption_from_the_flat_image(
    vlm: dict[str, Any], server: str
) -> None:
    """``/v2/models/<m>/generate_stream`` (SSE), what Vertex AI's invoke route reaches; JSON lists are 1-D."""
    import requests

    http = _HTTP[server]
    image = vlm["images"]["images"][1]
    url = f"http://{http}/v2/models/{MODEL}/generate_stream"
    with requests.post(url, json={"images_flat": image.reshape(-1).tolist()}, stream=True, timeout=30) as r:
        assert r.status_code == 200, r.text
        events = [json.loads(line[len(b"data: ") :]) for line in r.iter_lines() if line.startswith(b"data: ")]
    ids = [e["output_ids"] for e in events]
    assert ids == vlm["reference"][1, : len(ids)].tolist() and ids[-1] == vlm["spec"].eos_token_id
    assert "encode_ms" in events[0] and "encode_ms" not in events[1]

    bad = requests.post(url, json={"images_flat": [0.5] * 10}, timeout=30)
    assert "'images_flat' has 10 values; it holds 'images' of shape [1, 8, 8] (64 values each)" in bad.text


def test_concurrent_streams_give_every_image_its_reference_caption(vlm: dict[str, Any], server: str) -> None:
    n = len(vlm["reference"])
    got, wall = stream_generations(server, MODEL, vlm["images"], list(range(n)), 4)

    assert [g.error for g in got] == [""] * n and all(g.final for g in got)
    for g in got:
        assert g.tokens == vlm["reference"][g.index, : len(g.tokens)].tolist()
        assert g.ttft_ms > 0 and g.total_ms >= g.ttft_ms
    assert wall > 0


def test_a_repeated_image_is_answered_from_the_encoders_response_cache(
    vlm: dict[str, Any], server: str
) -> None:
    image = {"images": np.full((1, 1, 8, 8), 0.5, np.float32)}
    before = read_counters(server, "vision_encoder")
    first, _ = stream_generations(server, MODEL, image, [0], 1)
    middle = read_counters(server, "vision_encoder")
    again, _ = stream_generations(server, MODEL, image, [0], 1)
    after = read_counters(server, "vision_encoder")

    assert middle.cache_hits == before.cache_hits  # a new image is encoded
    assert after.cache_hits == middle.cache_hits + 1
    assert after.executions == middle.executions  # ... and not again
    assert again[0].tokens == first[0].tokens


def test_the_serve_check_stage_streams_compares_and_reports_the_figures(
    vlm: dict[str, Any], tmp_path: Path
) -> None:
    from vxdeploy.components.package.stage import run_package, run_serve_check

    sel_dir, sel_meta = vlm["selected"]
    src_dir, src_meta = vlm["source"]
    repo = dsl.Model(name="triton_repository", uri=str(tmp_path / "repo"), metadata={})
    triton = TRITON.model_dump()
    run_package(
        dsl.Model(name="selected_model", uri=str(sel_dir), metadata=dict(sel_meta)),
        {"name": MODEL},
        triton,
        {},
        repo,
        dsl.Artifact(name="report", uri=str(tmp_path / "package.json"), metadata={}),
    )
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    summary = dsl.Markdown(name="summary", uri=str(tmp_path / "summary.md"), metadata={})
    run_serve_check(
        repo,
        dsl.Model(name="source_model", uri=str(src_dir), metadata=dict(src_meta)),
        dsl.Dataset(name="eval_data", uri=str(vlm["eval"]), metadata={"samples": 24, "labelled": True}),
        triton,
        metrics,
        dsl.Artifact(name="report", uri=str(tmp_path / "check.json"), metadata={}),
        summary=summary,
    )

    report = json.loads((tmp_path / "check.json").read_text())
    s = report["summary"]
    assert report["status"] == "succeeded", report["reason"]
    assert s["passed"] and s["agreement_reference"] == 1.0 and s["agreement_in_process"] == 1.0
    assert s["served_exact"] >= 0.9  # real captions of held-out digits
    assert s["ttft_ms"] > 0 and s["tokens_per_s"] > 0 and s["encode_ms"] > 0
    assert s["repeat_hit"] and s["cache_hits"] > 0
    for c in (1, 2, 4):
        assert 0 < s[f"p50_ms_c{c}"] <= s[f"p95_ms_c{c}"]
    assert s["sent"] == 24 + 3 * 24 + 2
    assert 0 < s["generator_executions"] <= s["generator_requests"] == 1 + 24 + 3 * 24  # + the warm-up
    assert [lv["concurrency"] for lv in report["details"]["levels"]] == ["1 (new images)", 1, 2, 4]
    assert "onnxruntime_onnx served as backend python" in " ".join(report["details"]["substitutions"])
    text = (tmp_path / "summary.md").read_text()
    assert "TTFT" in text and "| 4 |" in text
    assert metrics.metadata["ttft_ms"] == s["ttft_ms"]
    assert (tmp_path / "repo" / MODEL_REPOSITORY_DIR / MODEL / "config.pbtxt").is_file()

    # The run report's Serve check section shows the served generator's figures.
    from vxdeploy.components.report.build import build_report, render_markdown

    package = json.loads((tmp_path / "package.json").read_text())
    markdown = render_markdown(build_report({"package": package, "serve_check": report}, run_id="r"))
    assert f"Served generator `{MODEL}` (BLS, decoupled, streamed through gRPC): TTFT" in markdown
    assert "| 1 (new images) |" in markdown and "TTFT p50 ms" in markdown
    assert "p50 ms c2" not in markdown  # shown in the levels table, not repeated as figures
