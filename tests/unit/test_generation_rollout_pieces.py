"""Generation-aware rollout pieces: the streamed generate client, canary checks, metrics and cost."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests

from vxdeploy.components.canary.analysis import analyse
from vxdeploy.components.canary.metrics import WindowStats, combine
from vxdeploy.components.common import builtin_vlm
from vxdeploy.components.common.config import (
    CanaryConfig,
    DeploymentConfig,
    MonitoringConfig,
    ServiceLevelConfig,
)
from vxdeploy.components.common.errors import UserError
from vxdeploy.components.cost.generation import GenerationPoint, generation_cost
from vxdeploy.components.cost.prices import load_price_table
from vxdeploy.components.generation.rollout import (
    ProbeResult,
    StreamedGeneration,
    generate_request,
    require_invoke_route,
    sse_events,
    stream_generation,
    token_ids,
)
from vxdeploy.components.monitoring import generation_metrics as gm
from vxdeploy.components.monitoring.policies import ServingShape, build_alert_policies
from vxdeploy.components.monitoring.vertex_metrics import EndpointRef

SPEC = builtin_vlm.generation_spec()
EOS = SPEC.eos_token_id
DIGIT, SEVEN = SPEC.vocabulary.index("digit"), SPEC.vocabulary.index("seven")
ENDPOINT = EndpointRef("vx-project", "us-central1", "4242")


# --------------------------------------------------------------------------------- the SSE client
def test_sse_events_are_the_json_of_each_data_field() -> None:
    # Given a stream as Triton's generate_stream writes it (a comment and a two-line data field too)
    lines = [
        'data: {"output_ids": [3], "text": "digit"}',
        "",
        ": keep-alive",
        'data: {"output_ids": [[10]],',
        'data:  "text": "seven"}',
        "",
        'data: {"error": "boom"}',
    ]

    # When it is read / Then each event is one object, the split field joined
    assert list(sse_events(lines)) == [
        {"output_ids": [3], "text": "digit"},
        {"output_ids": [[10]], "text": "seven"},
        {"error": "boom"},
    ]


@pytest.mark.parametrize("value", [7, [7], [[7]], [[7, 8]]])
def test_token_ids_read_a_number_or_nested_lists(value: object) -> None:
    assert token_ids({"output_ids": value})[:1] == [7]


def test_one_image_is_sent_flat_as_a_property_named_after_the_encoder_input() -> None:
    # Triton shapes a generate property by the input's metadata: it must be a flat list
    body = generate_request({"images": np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)})
    assert body == {"images": [0.0, 1.0, 2.0, 3.0]}


def test_a_generate_request_carries_one_sample() -> None:
    with pytest.raises(ValueError, match="holds 2 samples"):
        generate_request({"images": np.zeros((2, 1, 2, 2), np.float32)})


class _Streaming(BaseHTTPRequestHandler):
    """Streams 'digit seven <eos>' one event per chunk (chunked, as Triton does), pausing between them."""

    protocol_version = "HTTP/1.1"
    pause_s = 0.05

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, token in enumerate((DIGIT, SEVEN, EOS)):
            if i:
                time.sleep(self.pause_s)
            event = f'data: {{"output_ids": [{token}]}}\n\n'.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture()
def streaming_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Streaming)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/models/generator/generate_stream"
    finally:
        server.shutdown()
        server.server_close()


def test_stream_generation_times_the_first_token_as_it_arrives(streaming_url: str) -> None:
    # Given a generator that streams three tokens 50 ms apart
    # When one caption is streamed
    with requests.Session() as session:
        got = stream_generation(
            session, streaming_url, {"images": np.zeros((1, 1, 8, 8), np.float32)}, SPEC, 10
        )

    # Then the caption is decoded and the first token came at least two pauses before the end
    assert (got.text, got.error, got.ttft_ms is not None, got.total_ms - (got.ttft_ms or 0) >= 95) == (
        "digit seven",
        "",
        True,
        True,
    )


def test_a_stream_that_ends_without_a_token_is_an_error() -> None:
    done = StreamedGeneration([], "", None, 3.0, "the stream ended without a token")
    probe = ProbeResult("7", "url", [done])
    assert (probe.complete, probe.agreement(["digit seven"]), done.tokens_per_s) == (False, 0.0, None)


# --------------------------------------------------------------------------------- canary checks
def _gen(agreement: float | None, ttft: float | None = 40.0, rate: float | None = 200.0) -> WindowStats:
    return WindowStats(
        requests=1000,
        errors=0,
        p99_latency_ms=50.0,
        generation=True,
        output_agreement=agreement,
        agreement_expected=True,
        ttft_p95_ms=ttft,
        tokens_per_s=rate,
        generation_source="test",
    )


def test_a_canary_with_other_captions_fails_even_with_no_errors() -> None:
    analysis = analyse(_gen(0.5), _gen(1.0), CanaryConfig())
    failed = [c.name for c in analysis.checks if not c.passed]
    assert (analysis.passed, failed) == (False, ["output_agreement"])


def test_a_canary_whose_captions_were_not_measured_fails_as_no_data() -> None:
    analysis = analyse(_gen(None), _gen(1.0), CanaryConfig())
    assert [c.detail for c in analysis.checks if not c.passed] == [
        "canary generated no captions to compare with the reference: no data is not a pass"
    ]


def test_without_a_reference_only_ttft_and_serving_figures_are_checked() -> None:
    # Given a first deployment: nothing to compare the captions with
    first = WindowStats(requests=100, p99_latency_ms=50.0, generation=True, ttft_p95_ms=40.0)

    # When it is analysed / Then no agreement check, and it passes
    analysis = analyse(first, None, CanaryConfig())
    assert ([c.name for c in analysis.checks], analysis.passed) == (
        ["canary_requests", "canary_error_rate", "canary_p99_latency_ms", "canary_ttft_p95_ms"],
        True,
    )


@pytest.mark.parametrize(
    ("canary", "failing"),
    [
        (_gen(1.0, ttft=900.0), {"canary_ttft_p95_ms", "ttft_ratio"}),
        (_gen(1.0, ttft=None), {"canary_ttft_p95_ms"}),
        (_gen(1.0, rate=50.0), {"tokens_per_s_ratio"}),
        (_gen(1.0), set()),
    ],
)
def test_time_to_first_token_and_decode_speed_are_held_to_limits(
    canary: WindowStats, failing: set[str]
) -> None:
    analysis = analyse(canary, _gen(1.0), CanaryConfig())
    assert {c.name for c in analysis.checks if not c.passed} == failing


def test_combined_baselines_agree_as_their_worst_one() -> None:
    both = combine([_gen(1.0), _gen(0.8)])
    assert (both.generation, both.output_agreement, both.requests) == (True, 0.8, 2000)


def test_a_generation_model_is_not_served_through_the_private_predict_route() -> None:
    cfg = DeploymentConfig(
        network="projects/123/global/networks/vpc",
        accelerator_type="",
        accelerator_count=0,
        machine_type="n1-standard-4",
    )
    with pytest.raises(UserError, match="smoke_test_route resolves to 'private'"):
        require_invoke_route(cfg, dedicated=True, endpoint_name="projects/p/locations/l/endpoints/1")


# --------------------------------------------------------------------------------- metrics and alerts
def test_generation_metrics_are_distributions_on_generic_task_labelled_like_vertex() -> None:
    now = datetime.now(UTC)
    series = gm.generation_time_series(
        ENDPOINT, "777", gm.GenerationSamples([40.0, 60.0], [200.0], []), now - timedelta(minutes=1), now
    )
    assert [
        (
            s.metric.type,
            s.resource.type,
            dict(s.metric.labels),
            s.resource.labels["job"],
            s.points[0].value.distribution_value.count,
        )
        for s in series
    ] == [
        (
            gm.TIME_TO_FIRST_TOKEN,
            "generic_task",
            {"endpoint_id": "4242", "deployed_model_id": "777"},
            "777",
            2,
        ),
        (gm.TOKENS_PER_SECOND, "generic_task", {"endpoint_id": "4242", "deployed_model_id": "777"}, "777", 1),
    ]


def test_a_model_that_does_not_generate_gets_no_generation_alerts() -> None:
    policies = build_alert_policies(ENDPOINT, MonitoringConfig(), ServingShape(), {}, [])
    with_generation = build_alert_policies(
        ENDPOINT, MonitoringConfig(), ServingShape(), {}, [], generation=True
    )
    assert (sorted(policies), sorted(set(with_generation) - set(policies))) == (
        ["error-rate", "p99-latency", "saturation"],
        ["time-to-first-token", "tokens-per-second"],
    )


# --------------------------------------------------------------------------------- cost
CPU_DEPLOYMENT = DeploymentConfig(
    machine_type="n1-standard-4", accelerator_type="", accelerator_count=0, max_replicas=10
)


def _points() -> list[GenerationPoint]:
    return [
        GenerationPoint(1, 5.0, 8.0, 20.0, 30.0, generations_per_s=45.0),
        GenerationPoint(4, 12.0, 20.0, 60.0, 120.0, generations_per_s=90.0),
        GenerationPoint(8, 150.0, 260.0, 300.0, 650.0, generations_per_s=110.0),
    ]


def test_replicas_and_cost_per_thousand_generations_come_from_the_fastest_point_within_targets() -> None:
    # Given 200 generations/s wanted, and points at 1, 4 and 8 streams (8 misses TTFT and p95)
    cfg = ServiceLevelConfig(requests_per_second=200)

    # When costed
    cost = generation_cost(
        _points(),
        name="generator",
        kind="onnxruntime_int8",
        measured_on="cpu:test",
        cfg=cfg,
        deployment=CPU_DEPLOYMENT,
    )

    # Then 4 streams is the operating point: ceil(200 / 90) replicas, and the cost per 1,000
    # generations is the hourly cost over the generations of an hour
    assert cost is not None
    price = load_price_table().machine("us-central1", "n1-standard-4")
    assert price is not None
    hourly = 3 * price.on_demand
    assert (
        cost.point.concurrency,
        cost.replicas,
        math.isclose(cost.cost_per_1000_generations or 0, hourly / (200 * 3600) * 1000, rel_tol=1e-9),
        cost.missed,
    ) == (4, 3, True, ())


def test_a_first_token_slower_than_its_target_at_every_point_is_reported_missed() -> None:
    cfg = ServiceLevelConfig(requests_per_second=10, ttft_p95_ms=5)
    cost = generation_cost(
        _points(),
        name="generator",
        kind="onnxruntime_fp32",
        measured_on="cpu:test",
        cfg=cfg,
        deployment=CPU_DEPLOYMENT,
    )
    assert cost is not None
    assert (cost.meets_targets, cost.missed[0].startswith("service_levels.ttft_p95_ms=5:")) == (False, True)


def test_serve_check_levels_become_generation_points() -> None:
    level = {
        "concurrency": 2,
        "generations": 8,
        "p50_ms": 3.0,
        "p95_ms": 5.0,
        "ttft_p50_ms": 1.0,
        "generations_per_s": 400.0,
    }
    point = GenerationPoint.from_level(level)
    assert (point.concurrency, point.ttft_p95_ms, point.p95_ms, point.generations_per_s) == (
        2,
        1.0,
        5.0,
        400.0,
    )
