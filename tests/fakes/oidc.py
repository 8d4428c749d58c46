"""A loopback stand-in for Google's OIDC token signer: RSA keys made in the test, certificates served
as ``https://www.googleapis.com/oauth2/v1/certs`` serves them, ID tokens signed as Pub/Sub push and
Eventarc sign theirs.

The certificates answer is Google's v1 format (``{key id: PEM X.509 certificate}``, with a
``Cache-Control: max-age``), which ``google.auth.jwt.decode`` reads; tokens are RS256 JWTs with a
``kid`` header and the claims Google puts in a push request's token (``iss``, ``aud``, ``azp``,
``sub``, ``email``, ``email_verified``, ``iat``, ``exp``). Fixture: import ``oidc_issuer_fixture``
(a fresh issuer per test, ``oidc_issuer``).
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from tests.fakes.loopback import LoopbackHTTPServer

GOOGLE_ISSUER = "https://accounts.google.com"
CERTS_PATH = "/oauth2/v1/certs"
#: What Cloud Run puts in place of the signature of a token it verified (and forwards).
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"


@dataclass(frozen=True)
class SigningKey:
    """One RSA key pair and the self-signed certificate Google would publish for it."""

    key_id: str
    private_pem: bytes
    certificate_pem: str

    @classmethod
    def generate(cls) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "federated-signon.system.gserviceaccount.com")]
        )
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=14))
            .sign(private, hashes.SHA256())
        )
        return cls(
            key_id=secrets.token_hex(20),
            private_pem=private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        )

    def sign(self, claims: dict[str, Any], key_id: str | None = None) -> str:
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=key_id or self.key_id)
        token: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
        return token.decode()


class FakeOidcIssuer(LoopbackHTTPServer):
    """Google's token-signing certificates on ``127.0.0.1``, and ID tokens signed with those keys.

    Args:
        max_age_s: The ``Cache-Control: max-age`` of the certificates answer.
    """

    def __init__(self, max_age_s: int = 3600) -> None:
        self.max_age_s = max_age_s
        self.keys: list[SigningKey] = [SigningKey.generate()]
        self.certs_requests = 0
        self.fail_certs = False
        self._lock = threading.Lock()

    @property
    def certs_url(self) -> str:
        """Where the certificates are: pass as the trigger's certificates URL."""
        return f"http://127.0.0.1:{self.port}{CERTS_PATH}"

    def start(self) -> FakeOidcIssuer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake._answer(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._serve(Handler, name="fake-oidc-issuer")
        return self

    def rotate(self) -> SigningKey:
        """Publish a new signing key beside the old ones (as Google does) and sign with it from now on."""
        key = SigningKey.generate()
        with self._lock:
            self.keys.append(key)
        return key

    def token(
        self,
        *,
        email: str | None,
        audience: str,
        issuer: str = GOOGLE_ISSUER,
        email_verified: bool = True,
        lifetime_s: int = 3600,
        issued_at: float | None = None,
        key: SigningKey | None = None,
        **extra_claims: Any,
    ) -> str:
        """An ID token as Pub/Sub push (or Eventarc) sends it for the service account ``email``."""
        now = int(time.time() if issued_at is None else issued_at)
        subject = str(int.from_bytes((email or "").encode()[:8], "big"))
        claims: dict[str, Any] = {
            "aud": audience,
            "azp": subject,
            "email": email,
            "email_verified": email_verified,
            "exp": now + lifetime_s,
            "iat": now,
            "iss": issuer,
            "sub": subject,
            **extra_claims,
        }
        return (key or self.keys[-1]).sign({k: v for k, v in claims.items() if v is not None})

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.certs_requests += 1
            certs = {key.key_id: key.certificate_pem for key in self.keys}
            failing = self.fail_certs
        headers: dict[str, str] = {}
        if handler.path.split("?", 1)[0] != CERTS_PATH:
            code, body = 404, b'{"error": "not found"}'
        elif failing:
            code, body = 503, b'{"error": "unavailable"}'
        else:
            code, body = 200, json.dumps(certs).encode()
            headers = {"Cache-Control": f"public, max-age={self.max_age_s}, must-revalidate, no-transform"}
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)


def strip_signature(token: str) -> str:
    """The token as Cloud Run forwards it to a service that requires authentication."""
    header, payload, _ = token.split(".")
    return f"{header}.{payload}.{SIGNATURE_REMOVED}"


def unsigned_token(claims: dict[str, Any], algorithm: str = "none") -> str:
    """A token that carries claims but no valid signature (``alg: none``)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': algorithm, 'typ': 'JWT'})}.{part(claims)}."


@pytest.fixture(name="oidc_issuer")
def oidc_issuer_fixture() -> Iterator[FakeOidcIssuer]:
    """A fresh issuer per test."""
    with FakeOidcIssuer() as issuer:
        yield issuer
