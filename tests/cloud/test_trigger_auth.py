"""The trigger's caller check: who may start runs, with tokens signed as Google signs Pub/Sub push tokens.

Each case posts a valid push message naming a model; only the ``Authorization`` header differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cloud.trigger_support import (
    AUDIENCE,
    EVENTARC_ACCOUNT,
    MODEL,
    PUSH_ACCOUNT,
    TriggerUnderTest,
    post,
    push,
    trigger,
)
from tests.fakes.oidc import FakeOidcIssuer, SigningKey, oidc_issuer_fixture, strip_signature, unsigned_token  # noqa: F401
from tests.fakes.vertex_pipelines import (  # noqa: F401
    FakeVertexPipelines,
    compiled_template_fixture,
    vertex_pipelines_fixture,
)

Header = Callable[[TriggerUnderTest], str | None]
_OUTSIDER = SigningKey.generate()  # a key Google never published


def _bearer(age_s: float = 0, **claims: object) -> Header:
    """A header with a fresh token (issued ``age_s`` ago when the request is made)."""
    return lambda t: f"Bearer {t.token(issued_at=time.time() - age_s, **claims)}"  # type: ignore[arg-type]


def _tampered(t: TriggerUnderTest) -> str:
    # A real token for another account, with its payload swapped for one naming an allowed account.
    header, _, signature = t.token(email="intruder@evil.iam.gserviceaccount.com").split(".")
    _, payload, _ = t.token().split(".")
    return f"Bearer {header}.{payload}.{signature}"


def _claims(t: TriggerUnderTest, **changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "aud": AUDIENCE,
        "email": PUSH_ACCOUNT,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        "iss": "https://accounts.google.com",
    }
    return {k: v for k, v in {**claims, **changes}.items() if v is not None}


# (Authorization header, status, fragment of the answer's error)
OIDC_CASES: dict[str, tuple[Header, int, str]] = {
    "no header": (lambda t: None, 401, "no Authorization header"),
    "empty header": (lambda t: "", 401, "no Authorization header"),
    "basic scheme": (lambda t: "Basic dXNlcjpwYXNz", 401, "not 'Bearer <token>'"),
    "bearer without token": (lambda t: "Bearer ", 401, "not 'Bearer <token>'"),
    "not a jwt": (lambda t: "Bearer not-a-jwt", 401, "not valid"),
    "four segments": (lambda t: f"Bearer {t.token()}.x", 401, "not valid"),
    "garbage segments": (lambda t: "Bearer a.b.c", 401, "not valid"),
    "alg none": (lambda t: f"Bearer {unsigned_token(_claims(t))}", 401, "Unsupported signature algorithm"),
    "alg hs256": (
        lambda t: f"Bearer {unsigned_token(_claims(t), 'HS256')}",
        401,
        "Unsupported signature algorithm",
    ),
    "unpublished key": (lambda t: f"Bearer {t.token(key=_OUTSIDER)}", 401, "not found"),
    "unpublished key, published kid": (
        lambda t: f"Bearer {_OUTSIDER.sign(_claims(t), key_id=t.issuer.keys[0].key_id)}",
        401,
        "Could not verify token signature",
    ),
    "payload swapped": (_tampered, 401, "Could not verify token signature"),
    "expired": (_bearer(age_s=7200), 401, "expired"),
    "issued in the future": (_bearer(age_s=-3600), 401, "too early"),
    "no exp claim": (lambda t: f"Bearer {t.issuer.keys[0].sign(_claims(t, exp=None))}", 401, "exp"),
    "wrong audience": (_bearer(audience="https://other-service.a.run.app"), 401, "wrong audience"),
    "audience of another path": (_bearer(audience=f"{AUDIENCE}/other"), 401, "wrong audience"),
    "not google's issuer": (_bearer(issuer="https://evil.example.com"), 401, "is not Google"),
    "signature removed": (
        lambda t: f"Bearer {strip_signature(t.token())}",
        401,
        "VXDEPLOY_TRIGGER_AUTH=cloud-run-iam",
    ),
    "another account": (_bearer(email="someone@other.iam.gserviceaccount.com"), 403, "is not allowed"),
    "a person": (_bearer(email="alice@example.com"), 403, "is not allowed"),
    "e-mail not verified": (_bearer(email_verified=False), 403, "not verified"),
    "no e-mail": (_bearer(email=None), 403, "no 'email' claim"),
}

ACCEPTED: dict[str, Header] = {
    "push subscription's account": _bearer(),
    "eventarc trigger's account": _bearer(email=EVENTARC_ACCOUNT),
    "lower-case scheme": lambda t: f"bearer {t.token()}",
    "within the clock skew": _bearer(age_s=3600 + 5),
    "after a key rotation": lambda t: f"Bearer {t.token(key=t.issuer.rotate())}",
}


@pytest.fixture(name="served")
def served_fixture(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, oidc_issuer: FakeOidcIssuer
) -> Iterator[TriggerUnderTest]:
    with trigger(vertex_pipelines, compiled_template, oidc_issuer) as served:
        yield served


def _send(served: TriggerUnderTest, authorization: str | None) -> tuple[int, dict[str, object]]:
    headers = {} if authorization is None else {"Authorization": authorization}
    return post(served.url, push(MODEL), headers=headers)


@pytest.mark.parametrize(("authorization", "status", "fragment"), OIDC_CASES.values(), ids=OIDC_CASES.keys())
def test_a_caller_without_a_valid_token_of_an_allowed_account_submits_nothing(
    served: TriggerUnderTest, authorization: Header, status: int, fragment: str
) -> None:
    # given a request whose Authorization header is `authorization`; when it is posted
    code, reply = _send(served, authorization(served))

    # then it is refused with the reason, and no run was submitted
    assert (code, fragment in str(reply.get("error")), served.jobs()) == (status, True, 0), reply


@pytest.mark.parametrize("authorization", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_an_allowed_caller_submits_a_run(served: TriggerUnderTest, authorization: Header) -> None:
    # given / when
    code, reply = _send(served, authorization(served))

    # then
    assert (code, reply.get("status"), served.jobs()) == (200, "submitted", 1), reply


# Cloud Run, on a service that requires authentication, checks the token and forwards it unsigned.
CLOUD_RUN_IAM_CASES: dict[str, tuple[Header, int, str]] = {
    "stripped, allowed account": (lambda t: f"Bearer {strip_signature(t.token())}", 200, "submitted"),
    "signed, allowed account": (_bearer(), 200, "submitted"),
    "stripped, another account": (
        lambda t: f"Bearer {strip_signature(t.token(email='x@other.iam.gserviceaccount.com'))}",
        403,
        "is not allowed",
    ),
    "stripped, expired": (
        lambda t: f"Bearer {strip_signature(t.token(issued_at=time.time() - 7200))}",
        401,
        "expired",
    ),
    "stripped, wrong audience": (
        lambda t: f"Bearer {strip_signature(t.token(audience='https://x.a.run.app'))}",
        401,
        "wrong audience",
    ),
    "stripped, not google's issuer": (
        lambda t: f"Bearer {strip_signature(t.token(issuer='https://evil.example.com'))}",
        401,
        "is not Google",
    ),
    "stripped, no claims": (lambda t: "Bearer e30.e30.SIGNATURE_REMOVED_BY_GOOGLE", 401, "'exp'"),
    "no header": (lambda t: None, 401, "no Authorization header"),
    "signed by an outsider": (lambda t: f"Bearer {t.token(key=_OUTSIDER)}", 401, "not found"),
}


@pytest.mark.parametrize(
    ("authorization", "status", "fragment"), CLOUD_RUN_IAM_CASES.values(), ids=CLOUD_RUN_IAM_CASES.keys()
)
def test_behind_cloud_run_iam_a_stripped_token_counts_by_its_claims(
    vertex_pipelines: FakeVertexPipelines,
    compiled_template: Path,
    oidc_issuer: FakeOidcIssuer,
    authorization: Header,
    status: int,
    fragment: str,
) -> None:
    # given a trigger that trusts Cloud Run's signature check
    with trigger(vertex_pipelines, compiled_template, oidc_issuer, auth="cloud-run-iam") as served:
        # when a request with `authorization` arrives
        code, reply = _send(served, authorization(served))

    # then only the allowed account's unexpired token for this service submits a run
    assert (code, fragment in str(reply.get("error") or reply.get("status"))) == (status, True), reply
    assert len(vertex_pipelines.pipeline_jobs) == (1 if status == 200 else 0)


def test_without_a_caller_check_anyone_on_loopback_submits(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, oidc_issuer: FakeOidcIssuer
) -> None:
    # given a local trigger with the check turned off
    with trigger(
        vertex_pipelines, compiled_template, oidc_issuer, auth="none", audiences=(), invokers=()
    ) as served:
        # when a request without a token arrives
        code, reply = _send(served, None)

    # then it submits
    assert (code, reply["status"]) == (200, "submitted")


def test_certificates_are_fetched_once_for_many_requests(served: TriggerUnderTest) -> None:
    # given / when ten deliveries with valid tokens, each token new, and five with tokens of an unknown key
    answers = [post(served.url, push(MODEL), token=served.token())[0] for _ in range(10)]
    answers += [post(served.url, push(MODEL), token=served.token(key=_OUTSIDER))[0] for _ in range(5)]

    # then Google's certificates were read once (unknown key ids refetch at most every 30 s)
    assert (answers, served.issuer.certs_requests) == ([200] * 10 + [401] * 5, 1)


def test_certificates_unreachable_answers_503_so_pubsub_redelivers(
    vertex_pipelines: FakeVertexPipelines, compiled_template: Path, oidc_issuer: FakeOidcIssuer
) -> None:
    # given Google's certificates cannot be read
    oidc_issuer.fail_certs = True
    with trigger(vertex_pipelines, compiled_template, oidc_issuer) as served:
        # when a request with a valid token arrives
        code, reply = _send(served, f"Bearer {served.token()}")

    # then it is neither refused (the caller may be right) nor run
    assert (code, "signing certificates" in str(reply["error"]), len(vertex_pipelines.pipeline_jobs)) == (
        503,
        True,
        0,
    )


def test_a_refused_caller_is_not_told_who_is_allowed_but_the_log_says(
    served: TriggerUnderTest, capfd: pytest.CaptureFixture[str]
) -> None:
    # given any Google service account can get a token for any audience
    authorization = f"Bearer {served.token(email='stranger@elsewhere.iam.gserviceaccount.com')}"

    # when one that is not allowed calls
    code, reply = _send(served, authorization)

    # then the answer names no allowed account; the log names them and the variable
    logged = capfd.readouterr().err
    assert (code, PUSH_ACCOUNT in str(reply), f"allowed: {PUSH_ACCOUNT}" in logged) == (403, False, True)
