"""Who may call the retraining trigger: Google-signed OIDC ID tokens, as Pub/Sub push and Eventarc send them.

A push subscription (and an Eventarc trigger, which delivers through one) sends
``Authorization: Bearer <ID token>``: a JWT signed by Google for the subscription's (or the trigger's)
service account, with the audience the subscription names (by default its push endpoint URL; Eventarc
uses the Cloud Run service URL). :class:`CallerCheck` verifies the signature against Google's
published certificates with ``google-auth``, then the issuer, the expiry, the audience and the
service account. Cloud Run, on a service that requires authentication, verifies the token itself and
forwards it with the signature replaced by ``SIGNATURE_REMOVED_BY_GOOGLE``; the ``cloud-run-iam`` mode
accepts such a token and checks its claims, trusting Cloud Run for the signature.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from google.auth import exceptions as auth_exceptions
from google.auth import jwt
from google.auth import transport as auth_transport

from vxdeploy.components.common.errors import CloudOperationError, VxdeployError

#: Google's token-signing certificates, in the ``{key id: PEM certificate}`` form ``jwt.decode`` reads.
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"
AUTH_MODES = ("oidc", "cloud-run-iam", "none")
AuthMode = Literal["oidc", "cloud-run-iam", "none"]

_MAX_AGE = re.compile(r"max-age=(\d+)")


class CallerRefused(VxdeployError):
    """The request's caller is not one the trigger accepts: 401 (no valid token) or 403 (not allowed)."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.status = status
        self.reason = reason  # told to the caller
        self.detail = detail  # logged only: what the trigger expected


class CertificatesUnavailable(CloudOperationError):
    """Google's signing certificates could not be read (answered 503, so Pub/Sub redelivers)."""


def _urllib3_request() -> auth_transport.Request:
    import urllib3
    from google.auth.transport.urllib3 import Request

    # urllib3's pool manager is thread-safe, so one serves every request thread.
    return Request(urllib3.PoolManager())  # type: ignore[no-untyped-call]


@dataclass
class GoogleCertificates:
    """Google's signing certificates, fetched when first needed and kept as long as Google's answer allows.

    A token whose key id is not in the cached set (Google rotated its keys) refetches them, at most
    once per ``refetch_floor_s``, so tokens with made-up key ids cannot make the trigger hammer Google.

    Args:
        url: The certificates URL (Google's by default; a loopback issuer in tests).
        timeout_s: Timeout of one fetch.
        refetch_floor_s: Shortest time between two fetches for unknown key ids.
    """

    url: str = GOOGLE_CERTS_URL
    timeout_s: float = 5.0
    refetch_floor_s: float = 30.0
    _request: auth_transport.Request | None = field(default=None, init=False, repr=False)
    _certs: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _expires_at: float = field(default=0.0, init=False, repr=False)
    _fetched_at: float = field(default=float("-inf"), init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def for_key(self, key_id: str | None) -> dict[str, str]:
        """The certificates to check a token signed with ``key_id`` against (refetched when stale)."""
        with self._lock:
            now = time.monotonic()
            stale = now >= self._expires_at
            unknown = (
                bool(key_id) and key_id not in self._certs and now - self._fetched_at >= self.refetch_floor_s
            )
            if stale or unknown:
                self._fetch(now)
            return dict(self._certs)

    def _fetch(self, now: float) -> None:
        if self._request is None:
            self._request = _urllib3_request()
        try:
            response = self._request(self.url, method="GET", timeout=self.timeout_s)
        except auth_exceptions.TransportError as exc:
            raise CertificatesUnavailable(
                f"cannot read Google's signing certificates at {self.url}: {exc}"
            ) from exc
        if response.status != 200:
            raise CertificatesUnavailable(
                f"Google's signing certificates at {self.url} answered HTTP {response.status}"
            )
        try:
            certs = json.loads(response.data)
        except ValueError:
            certs = None
        if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
            raise CertificatesUnavailable(f"{self.url} did not answer a {{key id: certificate}} object")
        found = _MAX_AGE.search(str(response.headers.get("cache-control", "")))
        self._certs = certs
        self._fetched_at = now
        self._expires_at = now + (int(found.group(1)) if found else 300)


@dataclass(frozen=True)
class CallerCheck:
    """Verifies the ``Authorization`` header of a request to the trigger.

    Args:
        mode: ``oidc`` (verify the token's signature), ``cloud-run-iam`` (also accept a token whose
            signature Cloud Run removed after verifying it), or ``none`` (accept any caller; only
            for a trigger served on loopback).
        audiences: Accepted ``aud`` claims: the Cloud Run service URL, or the push subscription's
            audience.
        invokers: Accepted service-account e-mails: the push subscription's and the Eventarc
            trigger's.
        certificates: Google's signing certificates.
        clock_skew_s: Leeway for ``iat`` and ``exp``.
    """

    mode: AuthMode
    audiences: tuple[str, ...]
    invokers: tuple[str, ...]
    certificates: GoogleCertificates = field(default_factory=GoogleCertificates)
    clock_skew_s: int = 10

    def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """The verified token's claims.

        Raises:
            CallerRefused: no valid token (401), or a valid one for a caller not allowed (403).
            CertificatesUnavailable: Google's certificates could not be read.
        """
        if self.mode == "none":
            return {}
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if not authorization:
            raise CallerRefused(
                401, "no Authorization header: send 'Authorization: Bearer <Google ID token>'"
            )
        if scheme.lower() != "bearer" or not token:
            raise CallerRefused(
                401, f"the Authorization header is not 'Bearer <token>' (scheme {scheme[:20]!r})"
            )
        if token.endswith("." + SIGNATURE_REMOVED):
            if self.mode != "cloud-run-iam":
                raise CallerRefused(
                    401,
                    "the token's signature was removed by Cloud Run (the service requires authentication): "
                    "set VXDEPLOY_TRIGGER_AUTH=cloud-run-iam to trust Cloud Run's check",
                )
            claims = self._claims_checked_by_cloud_run(token)
        else:
            claims = self._verified_claims(token)
        self._check_identity(claims)
        return claims

    def _verified_claims(self, token: str) -> Mapping[str, Any]:
        try:
            key_id = jwt.decode_header(token).get("kid")  # type: ignore[no-untyped-call]
            certs = self.certificates.for_key(key_id if isinstance(key_id, str) else None)
            claims = jwt.decode(token, certs=certs, clock_skew_in_seconds=self.clock_skew_s)  # type: ignore[no-untyped-call]
        except CertificatesUnavailable:
            raise
        except (ValueError, TypeError, auth_exceptions.GoogleAuthError) as exc:
            raise CallerRefused(401, f"the ID token is not valid: {_short(exc)}") from None
        self._check_audience_and_issuer(claims)
        return dict(claims)

    def _claims_checked_by_cloud_run(self, token: str) -> Mapping[str, Any]:
        try:
            claims = jwt.decode(token, verify=False)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, auth_exceptions.GoogleAuthError) as exc:
            raise CallerRefused(401, f"the ID token is not valid: {_short(exc)}") from None
        now = time.time()
        expires, issued = claims.get("exp"), claims.get("iat")
        if not isinstance(expires, int | float) or not isinstance(issued, int | float):
            raise CallerRefused(401, "the ID token has no numeric 'exp' and 'iat' claims")
        if expires + self.clock_skew_s < now:
            raise CallerRefused(401, f"the ID token expired {int(now - expires)} s ago")
        if issued - self.clock_skew_s > now:
            raise CallerRefused(401, "the ID token was issued in the future")
        self._check_audience_and_issuer(claims)
        return dict(claims)

    def _check_audience_and_issuer(self, claims: Mapping[str, Any]) -> None:
        if claims.get("aud") not in self.audiences:
            raise CallerRefused(
                401,
                f"the ID token has wrong audience {_short(claims.get('aud'))}",
                f"expected one of {', '.join(self.audiences)} (VXDEPLOY_TRIGGER_AUDIENCE)",
            )
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise CallerRefused(401, f"the ID token's issuer {_short(claims.get('iss'))} is not Google")

    def _check_identity(self, claims: Mapping[str, Any]) -> None:
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise CallerRefused(403, "the ID token names no service account (no 'email' claim)")
        if claims.get("email_verified") is not True:
            raise CallerRefused(403, f"the ID token's e-mail {email} is not verified")
        if email not in self.invokers:
            raise CallerRefused(
                403,
                f"{email} is not allowed to trigger runs",
                f"allowed: {', '.join(self.invokers)} (VXDEPLOY_TRIGGER_INVOKERS)",
            )


def _short(value: object, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"
