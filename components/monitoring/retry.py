"""Retries of Cloud Monitoring calls: the shared policy (:mod:`vxdeploy.components.cloud.retry`) for it.

A create is retried only after looking again for what it would have made, so an answer lost after
the server acted never leaves a duplicate behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from vxdeploy.components.cloud import retry as shared
from vxdeploy.components.cloud.retry import RetryPolicy

T = TypeVar("T")

__all__ = ["call_with_retry"]


def call_with_retry(
    what: str,
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    recover: Callable[[], T | None] | None = None,
    passthrough: tuple[type[Exception], ...] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """:func:`vxdeploy.components.cloud.retry.call_with_retry` for a Cloud Monitoring call."""
    return shared.call_with_retry(
        what,
        call,
        policy,
        recover=recover,
        passthrough=passthrough,
        sleep=sleep,
        service="Cloud Monitoring",
        permission_role="roles/monitoring.editor on the project",
    )
