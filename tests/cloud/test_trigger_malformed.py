"""Malformed requests to the trigger: bad HTTP framing gets a quick 4xx; a poison message is acknowledged.

Framing is written byte by byte to the socket (``Content-Length: -1``, a short body, headers that never
end...): each gets its 4xx within about the read timeout, and the server keeps answering. A poison
message (well framed, from an allowed caller, but never a model event: a JSON array, a CloudEvent whose
data is a string, undecodable base64, wrong types) is answered 200 ``rejected`` with the reason, so
Pub/Sub does not redeliver it forever. Nothing is submitted in any case.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cloud.trigger_support import MODEL, TriggerUnderTest, exchange, post, push, trigger
from tests.fakes.oidc import FakeOidcIssuer
from tests.fakes.vertex_pipelines import FakeVertexPipelines, compiled_template_fixture  # noqa: F401

READ_TIMEOUT_S = 0.5
MAX_BODY = 64 * 1024
_PUBSUB = "google.cloud.pubsub.topic.v1.messagePublished"
_AUDIT = "google.cloud.audit.log.v1.written"
_MERGE = "google.cloud.aiplatform.v1.ModelService.MergeVersionAliases"


@pytest.fixture(scope="module", name="served")
def served_fixture(compiled_template: Path) -> Iterator[TriggerUnderTest]:
    """One trigger for the module (no case may submit anything), with a short read timeout."""
    with FakeVertexPipelines() as vertex, FakeOidcIssuer() as issuer:
        options = {"read_timeout_s": READ_TIMEOUT_S, "max_body_bytes": MAX_BODY}
        with trigger(vertex, compiled_template, issuer, **options) as served:
            yield served


# -- framing ---------------------------------------------------------------------------------

_VALID = json.dumps(push(MODEL)).encode()


def _request(
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    line: str = "POST / HTTP/1.1",
    end: bool = True,
) -> Any:
    """Raw request bytes (the token filled in at run time): ``line``, Host, Authorization, ``headers``."""

    def build(token: str) -> bytes:
        lines = [
            line,
            "Host: trigger",
            f"Authorization: Bearer {token}",
            *(f"{k}: {v}" for k, v in headers or []),
        ]
        return ("\r\n".join(lines) + ("\r\n\r\n" if end else "\r\n")).encode() + body

    return build


def _length(value: str, body: bytes = _VALID) -> Any:
    return _request([("Content-Type", "application/json"), ("Content-Length", value)], body)


# (raw request, status (None: closed without an answer), fragment of the answer)
FRAMING: dict[str, tuple[Any, int | None, str]] = {
    "content-length -1": (_length("-1"), 400, "is not a byte count"),
    "content-length abc": (_length("abc"), 400, "is not a byte count"),
    "content-length 1e3": (_length("1e3"), 400, "is not a byte count"),
    "content-length +12": (_length("+12"), 400, "is not a byte count"),
    "content-length 0x10": (_length("0x10"), 400, "is not a byte count"),
    "content-length 20 digits": (_length("9" * 20), 400, "is not a byte count"),
    "two content-lengths": (
        _request([("Content-Length", str(len(_VALID))), ("Content-Length", "3")], _VALID),
        400,
        "conflicting Content-Length",
    ),
    "no content-length": (
        _request([("Content-Type", "application/json")], _VALID),
        411,
        "needs a Content-Length",
    ),
    "chunked body": (
        _request([("Transfer-Encoding", "chunked")], b"%x\r\n%s\r\n0\r\n\r\n" % (len(_VALID), _VALID)),
        411,
        "chunked",
    ),
    "over the size limit, announced": (_length(str(2 * MAX_BODY), b""), 413, "over the trigger's limit"),
    "over the size limit by one": (_length(str(MAX_BODY + 1), b""), 413, "over the trigger's limit"),
    "short body": (_length("100", _VALID[:10]), 408, "did not arrive within"),
    "announced body never sent": (_length("50", b""), 408, "did not arrive within"),
    "body longer than announced": (_length("5"), 200, "not JSON"),
    "headers never end": (_request([("Content-Length", "5")], end=False), 408, "did not arrive within"),
    "request line never ends": (lambda token: b"POST / HT", 408, "did not arrive within"),
    "request line too long": (_request(line=f"POST /{'a' * 70000} HTTP/1.1"), 414, "URI Too Long"),
    "header line too long": (_request([("X-Padding", "a" * 70000)]), 431, "Line too long"),
    "too many headers": (_request([(f"X-H{i}", "1") for i in range(120)]), 431, "Too many headers"),
    "not http": (lambda token: b"hello there world\r\n\r\n", 400, "Bad request version"),
    "http/2 preface": (lambda token: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "Invalid HTTP version"),
    "get on another path": (_request(line="GET /submit HTTP/1.1"), 405, "POST an event"),
    "put": (_request([("Content-Length", "0")], line="PUT / HTTP/1.1"), 405, "POST an event"),
    "connection silent": (lambda token: b"", 408, "did not arrive within"),
    "connection closed at once": (None, None, ""),
}


@pytest.mark.parametrize(("request_bytes", "status", "fragment"), FRAMING.values(), ids=FRAMING.keys())
def test_bad_framing_gets_a_quick_4xx_and_the_server_keeps_answering(
    served: TriggerUnderTest, request_bytes: Any, status: int | None, fragment: str
) -> None:
    # given a request framed as `request_bytes`
    jobs_before = served.jobs()

    # when it is written to the socket and the connection is left open
    answer = exchange(
        served.port, None if request_bytes is None else request_bytes(served.token()), timeout_s=10
    )

    # then the server answers `status` within about the read timeout, submits nothing, and still serves
    with urllib.request.urlopen(f"{served.url}/healthz", timeout=5) as health:
        healthy = health.status == 200
    assert (answer.status, fragment in answer.text) == (status, True), answer.text[-300:]
    assert (answer.elapsed_s < READ_TIMEOUT_S + 5, served.jobs() - jobs_before, healthy) == (True, 0, True)


def test_slow_clients_do_not_hold_the_server(served: TriggerUnderTest) -> None:
    # given more stalled connections (short bodies) than the trigger has threads
    import socket

    stalled = []
    for _ in range(served.server.max_concurrency + 5):
        connection = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        connection.sendall(_length("100", b"{")(served.token()))
        stalled.append(connection)

    # when a valid request follows them
    started = time.monotonic()
    code, reply = post(served.url, push("retrain please"), token=served.token(), timeout_s=30)
    waited = time.monotonic() - started
    for connection in stalled:
        connection.close()

    # then it is answered once the stalled ones have timed out (a couple of read timeouts), not never
    assert (code, reply["status"], waited < 4 * READ_TIMEOUT_S + 8) == (200, "rejected", True)


# -- poison messages -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _envelope(message: Any) -> bytes:
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s"}).encode()


def _pushed(data: str) -> bytes:
    return json.dumps(push(data)).encode()


def _binary_ce(ce_type: str, body: Any) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw, {"ce-id": "e-1", "ce-type": ce_type, "ce-source": "//pubsub", "ce-specversion": "1.0"}


def _structured_ce(event: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(event).encode(), {"Content-Type": "application/cloudevents+json; charset=utf-8"}


def _audit(payload: Any) -> tuple[bytes, dict[str, str]]:
    return _binary_ce(_AUDIT, {"protoPayload": payload})


# (body, extra headers, fragment of the logged and answered reason)
POISON: dict[str, tuple[bytes, dict[str, str], str]] = {
    "json array": (b"[]", {}, "the Pub/Sub push body is an array, not a JSON object"),
    "array of envelopes": (json.dumps([push(MODEL)]).encode(), {}, "is an array"),
    "json string": (json.dumps(MODEL).encode(), {}, "is a string"),
    "json number": (b"42", {}, "is a number"),
    "json null": (b"null", {}, "is null"),
    "json true": (b"true", {}, "is a boolean"),
    "not json": (b"model please", {}, "is not JSON"),
    "empty body": (b"", {}, "is not JSON"),
    "not utf-8": (b"\x80\x81{}", {}, "is not UTF-8"),
    "nested too deeply": (b"[" * 50_000, {}, "nests too deeply"),
    "message a string": (_envelope("hello"), {}, "'message' is a string"),
    "no message": (json.dumps({"subscription": "s"}).encode(), {}, "'message' is null"),
    "data a number": (_envelope({"data": 5, "messageId": "1"}), {}, "'message.data' is a number"),
    "data an object": (_envelope({"data": {"model": MODEL}}), {}, "'message.data' is an object"),
    "data not base64": (_envelope({"data": "!!not base64!!"}), {}, "not base64"),
    "data not ascii": (_envelope({"data": "ümlaut"}), {}, "not base64"),
    "data base64 of binary": (_envelope({"data": _b64(b"\xff\xfe\x00")}), {}, "not base64-encoded UTF-8"),
    "attributes a list": (
        _envelope({"data": "", "attributes": ["model"]}),
        {},
        "'message.attributes' is an array",
    ),
    "model attribute a number": (_envelope({"attributes": {"model": 5}}), {}, "'model' is a number"),
    "data names no model": (_pushed("retrain please"), {}, "names no Model Registry model"),
    "data another resource": (
        _pushed("projects/p/locations/l/endpoints/1"),
        {},
        "names no Model Registry model",
    ),
    "data a json array": (_pushed("[1, 2]"), {}, "names no Model Registry model"),
    "data json, model a number": (_pushed('{"model": 5}'), {}, "'model' is a number"),
    "data json, model a list": (_pushed(json.dumps({"model": [MODEL]})), {}, "'model' is an array"),
    "data json, broken": (_pushed('{"model": '), {}, "the message data is not JSON"),
    "data json, no model key": (_pushed('{"version": 3}'), {}, "names no Model Registry model"),
    "cloudevent data a string": (*_binary_ce(_PUBSUB, "hello"), "the CloudEvent's data is a string"),
    "cloudevent data not json": (*_binary_ce(_PUBSUB, b"hello"), "the CloudEvent data is not JSON"),
    "cloudevent data an array": (*_binary_ce(_PUBSUB, [push(MODEL)]), "the CloudEvent's data is an array"),
    "cloudevent message a list": (*_binary_ce(_PUBSUB, {"message": []}), "'message' is an array"),
    "structured cloudevent data a string": (
        *_structured_ce({"type": _PUBSUB, "id": "1", "data": "hello"}),
        "the CloudEvent's data is a string",
    ),
    "structured cloudevent an array": (*_structured_ce([{"type": _PUBSUB}]), "the CloudEvent is an array"),
    "structured cloudevent type a number": (*_structured_ce({"type": 5, "data": {}}), "'type' is a number"),
    "audit log data a string": (*_binary_ce(_AUDIT, "x"), "the CloudEvent's data is a string"),
    "audit log payload a list": (*_audit([{"methodName": _MERGE}]), "'protoPayload' is an array"),
    "audit log method a number": (*_audit({"methodName": 7}), "'protoPayload.methodName' is a number"),
    "audit log aliases a string": (
        *_audit({"methodName": _MERGE, "request": {"name": f"{MODEL}@5", "versionAliases": "default"}}),
        "not a list of strings",
    ),
    "audit log aliases numbers": (
        *_audit({"methodName": _MERGE, "request": {"name": f"{MODEL}@5", "versionAliases": [1]}}),
        "not a list of strings",
    ),
    "audit log name a number": (
        *_audit({"methodName": _MERGE, "request": {"name": 5, "versionAliases": ["default"]}}),
        "the audited model name is a number",
    ),
    "audit log names an endpoint": (
        *_audit(
            {
                "methodName": _MERGE,
                "request": {"name": "projects/p/locations/l/endpoints/3", "versionAliases": ["default"]},
            }
        ),
        "names no model",
    ),
}


@pytest.mark.parametrize(("body", "headers", "fragment"), POISON.values(), ids=POISON.keys())
def test_a_poison_message_is_acknowledged_with_its_reason_and_runs_nothing(
    served: TriggerUnderTest,
    body: bytes,
    headers: dict[str, str],
    fragment: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # given an allowed caller's well-framed request that can never name a model
    jobs_before = served.jobs()

    # when it is posted
    code, reply = post(served.url, body, token=served.token(), headers=headers)

    # then it is acknowledged (Pub/Sub stops redelivering) with the reason, logged, and nothing runs
    logged = capfd.readouterr().err
    assert (code, reply.get("status"), fragment in str(reply.get("reason"))) == (200, "rejected", True), reply
    assert (f"rejected (acknowledged, not retried): {reply['reason']}"[:80] in logged, served.jobs()) == (
        True,
        jobs_before,
    )
