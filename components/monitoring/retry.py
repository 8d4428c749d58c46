"""Retries of Cloud Monitoring calls that failed for a passing reason (503, 429, a dropped connection).

The generated clients retry reads on UNAVAILABLE, but not creates or updates: those are not
idempotent on the wire. Here a create is retried only after looking again for what it would have
made, so an answer lost after the server acted never leaves a duplicate behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from google.api_core import exceptions as gexc

from components.common.errors import CloudOperationError, UserError

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.TooManyRequests,
    gexc.ResourceExhausted,
    gexc.InternalServerError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed call is tried again.

    Attributes:
        attempts: Tries in all (the first one included).
        initial_delay_s: Pause after the first failure; each later pause is ``multiplier`` times longer.
        max_delay_s: Longest pause.
        multiplier: Growth of the pause.
    """

    attempts: int = 5
    initial_delay_s: float = 1.0
    max_delay_s: float = 16.0
    multiplier: float = 2.0

    def delays(self) -> list[float]:
        """The pauses between tries."""
        out, delay = [], self.initial_delay_s
        for _ in range(self.attempts - 1):
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
) -> T:
    """Run ``call``, trying again after a transient error.

    Args:
        what: What the call does, for the error message (e.g. "create alert policy 'p99 latency'").
        call: The call.
        policy: Attempts and pauses.
        recover: Before each retry, looks for the result of an earlier attempt whose answer was
            lost (e.g. the policy a create made); when it returns something, that is the result.
        passthrough: Errors the caller handles itself (e.g. ``NotFound``), raised unchanged.
        sleep: The pause function (tests pass a fast one).

    Raises:
        CloudOperationError: Every attempt failed with a transient error, or one failed otherwise.
        UserError: The caller lacks permission (the message names the role to grant).
    """
    delays = policy.delays()
    for attempt in range(policy.attempts):
        try:
            return call()
        except passthrough:
            raise
        except TRANSIENT_ERRORS as exc:
            if attempt == policy.attempts - 1:
                raise CloudOperationError(
                    f"Cloud Monitoring: {what} failed {policy.attempts} times in a row, the last with "
                    f"{_describe(exc)}; the service may be down or overloaded, run again later"
                ) from exc
            log.warning("%s failed with %s; retrying in %.1f s", what, _describe(exc), delays[attempt])
            sleep(delays[attempt])
            if recover is not None:
                found = recover()
                if found is not None:
                    return found
        except gexc.PermissionDenied as exc:
            raise UserError(
                f"Cloud Monitoring: {what} was refused ({_describe(exc)}); grant the pipeline's service "
                "account roles/monitoring.editor on the project"
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise CloudOperationError(f"Cloud Monitoring: {what} failed with {_describe(exc)}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _describe(exc: Exception) -> str:
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.grpc_status_code.name if exc.grpc_status_code is not None else exc.code
        return f"{code}: {exc.message}"
    return repr(exc)
