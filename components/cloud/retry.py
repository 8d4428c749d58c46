"""The one retry policy for Google Cloud calls: which errors are transient, how long to keep trying.

Idempotent reads and etag-guarded writes are retried on 500, 502, 503, 504, 429 and dropped
connections, through ``google.api_core.retry`` with a deadline. A non-idempotent create is never
sent twice blindly: :func:`call_with_retry` first looks for what a lost create made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from vxdeploy.components.common.errors import CloudOperationError, UserError

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    gexc.InternalServerError,  # 500 / INTERNAL
    gexc.BadGateway,  # 502
    gexc.ServiceUnavailable,  # 503 / UNAVAILABLE
    gexc.GatewayTimeout,  # 504
    gexc.DeadlineExceeded,  # DEADLINE_EXCEEDED over gRPC
    gexc.TooManyRequests,  # 429
    gexc.ResourceExhausted,  # RESOURCE_EXHAUSTED over gRPC
    requests.ConnectionError,  # a connection dropped before or after the server acted
    requests.Timeout,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a passing failure worth another try (see :data:`TRANSIENT_ERRORS`)."""
    return isinstance(exc, TRANSIENT_ERRORS)


def describe(exc: BaseException) -> str:
    """``CODE: message`` of an API error, else its repr."""
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.grpc_status_code.name if exc.grpc_status_code is not None else exc.code
        return f"{code}: {exc.message}"
    if isinstance(exc, gexc.RetryError) and exc.cause is not None:
        return f"{describe(exc.cause)} (retried until the deadline)"
    return repr(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how patiently a failed call is tried again.

    Attributes:
        deadline_s: Give up once this long has passed since the first try.
        initial_delay_s: Pause after the first failure; each later pause is ``multiplier`` times longer.
        max_delay_s: Longest pause.
        multiplier: Growth of the pause.
        attempts: At most this many tries in all (0: as many as the deadline allows).
    """

    deadline_s: float = 60.0
    initial_delay_s: float = 0.2
    max_delay_s: float = 5.0
    multiplier: float = 2.0
    attempts: int = 0

    def api_core(self) -> gretry.Retry:
        """The ``google.api_core.retry.Retry`` for a GAPIC call (an idempotent read or guarded write)."""
        return gretry.Retry(
            predicate=is_transient,
            initial=self.initial_delay_s,
            maximum=self.max_delay_s,
            multiplier=self.multiplier,
            timeout=self.deadline_s,
        )

    def delays(self) -> list[float]:
        """The pauses between tries when ``attempts`` is set (the deadline may end them earlier)."""
        out, delay = [], self.initial_delay_s
        for _ in range(max(self.attempts, 1) - 1):
            out.append(min(delay, self.max_delay_s))
            delay *= self.multiplier
        return out


def call_with_retry(
    what: str,
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    recover: Callable[[], T | None] | None = None,
    passthrough: tuple[type[Exception], ...] = (),
    sleep: Callable[[float], None] = time.sleep,
    service: str = "Google Cloud",
    permission_role: str = "",
) -> T:
    """Run ``call``, trying again after a transient error until the policy's deadline or attempts.

    Args:
        what: What the call does, for the error message (e.g. "create alert policy 'p99 latency'").
        call: The call (sent without retries of its own).
        policy: Deadline, attempts and pauses.
        recover: Before each retry, looks for the result of an earlier attempt whose answer was
            lost (e.g. what a create made); when it returns something, that is the result.
        passthrough: Errors the caller handles itself (e.g. ``NotFound``), raised unchanged.
        sleep: The pause function (tests pass a fast one).
        service: The service named in error messages.
        permission_role: The IAM role a refused call needs, named in the error.

    Raises:
        CloudOperationError: Transient errors until the deadline, or a failure of another kind.
        UserError: The caller lacks permission (the message names the role to grant).
    """
    start = time.monotonic()
    delay = policy.initial_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except passthrough:
            raise
        except TRANSIENT_ERRORS as exc:
            elapsed = time.monotonic() - start
            out_of_attempts = policy.attempts > 0 and attempt >= policy.attempts
            if out_of_attempts or elapsed + delay > policy.deadline_s:
                raise CloudOperationError(
                    f"{service}: {what} failed {attempt} times in a row over {elapsed:.1f} s, the last with "
                    f"{describe(exc)}; the service may be down or overloaded, run again later"
                ) from exc
            log.warning("%s failed with %s; retrying in %.2f s", what, describe(exc), delay)
            sleep(delay)
            delay = min(delay * policy.multiplier, policy.max_delay_s)
            if recover is not None:
                try:
                    found = recover()
                except TRANSIENT_ERRORS:
                    found = None  # the look-up itself failed for a passing reason: try again later
                if found is not None:
                    return found
        except (gexc.PermissionDenied, gexc.Forbidden) as exc:
            hint = f"; grant the pipeline's service account {permission_role}" if permission_role else ""
            raise UserError(f"{service}: {what} was refused ({describe(exc)}){hint}") from exc
        except gexc.GoogleAPICallError as exc:
            raise CloudOperationError(f"{service}: {what} failed with {describe(exc)}") from exc
