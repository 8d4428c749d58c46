"""The trigger under load: 200 concurrent requests on loopback, none lost, none submitted twice.

The requests (valid tokens) carry 20 distinct messages, 10 copies each, as Pub/Sub delivers when
acknowledgements are late: 14 with a message id, 6 without one (told apart by their content). They
go to two trigger instances (Cloud Run scaled out) sharing the Vertex AI fake, all released at once.
The figures (wall time, p50/p99 latency) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.cloud.trigger_support import AUDIENCE, MODEL, PUSH_ACCOUNT, post, push, trigger
from tests.fakes.oidc import FakeOidcIssuer, oidc_issuer_fixture  # noqa: F401
from tests.fakes.vertex_pipelines import (  # noqa: F401
    FakeVertexPipelines,
    compiled_template_fixture,
    vertex_pipelines_fixture,
)
from vxdeploy.pipelines.submit import SubmittedRun
from vxdeploy.pipelines.trigger import TriggerSettings, serve

REQUESTS = 200
COPIES = 10
WITH_ID, WITHOUT_ID = 14, 6
#: Generous: the bound is that every request is answered, not a speed (benchmarks/ measures speed).
WALL_LIMIT_S = 180.0


def _messages() -> list[tuple[str, dict[str, Any]]]:
    """(the model URI the message names, its push envelope) for each distinct message."""
    messages = [(f"{MODEL}@{n}", push(f"{MODEL}@{n}", message_id=f"m-{n}")) for n in range(WITH_ID)]
    messages += [
        (f"{MODEL}@{n}", push(json.dumps({"model": f"{MODEL}@{n}"}), message_id=None))
        for n in range(WITH_ID, WITH_ID + WITHOUT_ID)
    ]
    return messages


def _fire(urls: list[str], token: str, plan: list[int], messages: list[Any]) -> tuple[list[Any], float]:
    """Send ``plan`` (message indexes) at once, alternating over ``urls``; the results and the wall time."""
    start = threading.Barrier(len(plan))

    def send(number: int) -> tuple[int, int, dict[str, Any], float]:
        index = plan[number]
        start.wait()
        began = time.monotonic()
        code, reply = post(urls[number % len(urls)], messages[index][1], token=token, timeout_s=WALL_LIMIT_S)
        return index, code, reply, time.monotonic() - began

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        results = list(pool.map(send, range(len(plan))))
    return results, time.monotonic() - began


def _figures(label: str, results: list[Any], wall_s: float) -> str:
    latencies = sorted(r[3] for r in results)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
    return (
        f"trigger load ({label}): {len(results)} concurrent requests: wall {wall_s:.2f} s, "
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )


def _plan(messages: list[Any]) -> list[int]:
    plan = [index for index in range(len(messages)) for _ in range(COPIES)]
    random.Random(12).shuffle(plan)
    assert len(plan) == REQUESTS
    return plan


def test_the_trigger_alone_answers_200_concurrent_requests_and_submits_each_message_once(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, oidc_issuer: FakeOidcIssuer
) -> None:
    # given one instance whose submissions are recorded (50 ms each, as a quick Vertex answer)
    # instead of sent, so the figures are the trigger's own: framing, token check, parsing, dedupe
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def record(config: Any, **options: Any) -> SubmittedRun:
        time.sleep(0.05)
        with lock:
            calls[options["job_id"]] += 1
        name = f"projects/424242424242/locations/us-central1/pipelineJobs/{options['job_id']}"
        return SubmittedRun(
            resource_name=name, job_id=options["job_id"], console_url="https://console", state="PENDING"
        )

    messages = _messages()
    server = serve(
        TriggerSettings(
            project="vx-project",
            location="us-central1",
            pipeline_root="gs://vx-bucket/runs",
            template_path=str(compiled_template),
            audiences=(AUDIENCE,),
            invokers=(PUSH_ACCOUNT,),
            certs_url=oidc_issuer.certs_url,
        ),
        "127.0.0.1",
        0,
        submit=record,
        check_bucket=None,
    )
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        token = oidc_issuer.token(email=PUSH_ACCOUNT, audience=AUDIENCE)

        # when 200 requests are released at once
        results, wall_s = _fire([url], token, _plan(messages), messages)
    finally:
        server.shutdown()
        server.server_close()
    print("\n" + _figures("recorded submissions, 1 instance", results, wall_s))

    # then all were answered 200, and each distinct message was submitted exactly once
    assert (Counter(code for _, code, _, _ in results), wall_s < WALL_LIMIT_S) == (
        Counter({200: REQUESTS}),
        True,
    )
    assert (len(calls), set(calls.values())) == (len(messages), {1})


def test_200_concurrent_requests_submit_each_distinct_message_exactly_once(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, oidc_issuer: FakeOidcIssuer
) -> None:
    # given two trigger instances and 200 requests: 20 distinct messages, 10 copies each, shuffled
    messages = _messages()
    with (
        trigger(vertex_pipelines, compiled_template, oidc_issuer) as first,
        trigger(vertex_pipelines, compiled_template, oidc_issuer) as second,
    ):
        # when all are released at once, alternating between the instances
        results, wall_s = _fire([first.url, second.url], first.token(), _plan(messages), messages)
    print(
        f"\n{_figures('submit_pipeline to the Vertex fake, 2 instances', results, wall_s)}, "
        f"{len(vertex_pipelines.pipeline_jobs)} jobs"
    )

    # then every request was answered 200, within the bound
    assert (Counter(code for _, code, _, _ in results), wall_s < WALL_LIMIT_S) == (
        Counter({200: REQUESTS}),
        True,
    )
    # and each distinct message got exactly one job, which all its copies name, on the model it named
    jobs_by_message: dict[int, set[str]] = defaultdict(set)
    submitted_by_message: Counter[int] = Counter()
    for index, _, reply, _ in results:
        jobs_by_message[index].add(reply["pipeline_job"])
        submitted_by_message[index] += reply["status"] == "submitted"
    job_models = {
        name.rsplit("/", 1)[-1]: vertex_pipelines.job_json(name.rsplit("/", 1)[-1])["runtimeConfig"][
            "parameterValues"
        ]["model_uri"]
        for name in vertex_pipelines.pipeline_jobs
    }
    assert len(vertex_pipelines.pipeline_jobs) == len(messages)
    assert all(len(jobs) == 1 for jobs in jobs_by_message.values()), jobs_by_message
    assert all(count == 1 for count in submitted_by_message.values()), submitted_by_message
    assert {
        index: job_models[next(iter(jobs)).rsplit("/", 1)[-1]] for index, jobs in jobs_by_message.items()
    } == {index: uri for index, (uri, _) in enumerate(messages)}
