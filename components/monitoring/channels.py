"""Notification channels for the alert policies: existing ones by id, e-mail ones found or created.

An e-mail channel is looked up by address first (any channel of type ``email`` with that
``email_address``), so a re-run, a second endpoint or a channel someone made by hand is reused
rather than duplicated.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.api_core import exceptions as gexc
from google.cloud import monitoring_v3

from vxdeploy.components.cloud.retry import RetryPolicy
from vxdeploy.components.common.config import MonitoringConfig
from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.monitoring.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, ResourceOutcome
from vxdeploy.components.monitoring.retry import call_with_retry

Client = monitoring_v3.NotificationChannelServiceClient


def channel_resource_name(project: str, ref: str) -> str:
    """``projects/P/notificationChannels/ID`` for a full name or a bare channel id."""
    return ref if ref.startswith("projects/") else f"projects/{project}/notificationChannels/{ref}"


def resolve_notification_channels(
    client: Client, project: str, cfg: MonitoringConfig, retry: RetryPolicy
) -> list[ResourceOutcome]:
    """The channels the alert policies notify.

    The channels of ``cfg.notification_channels``, checked to exist, and one e-mail channel per
    address in ``cfg.notification_emails``, found or created.

    Raises:
        ConfigError: A channel given by id does not exist in the project.
        CloudOperationError: Cloud Monitoring failed (after retries).
    """
    outcomes: list[ResourceOutcome] = []
    for ref in cfg.notification_channels:
        name = channel_resource_name(project, ref)
        channel = call_with_retry(
            f"get notification channel {name}",
            lambda name=name: _get_or_none(client, name),  # type: ignore[misc]
            retry,
        )
        if channel is None:
            raise ConfigError(
                "monitoring.notification_channels",
                ref,
                f"no such notification channel in project {project}; list them with "
                f"`gcloud beta monitoring channels list --project {project}` or give an e-mail in "
                "monitoring.notification_emails instead",
            )
        outcomes.append(ResourceOutcome("notification_channel", channel.name, channel.display_name, "found"))
    for email in _unique(cfg.notification_emails):
        outcomes.append(ensure_email_channel(client, project, email, retry))
    return outcomes


def ensure_email_channel(client: Client, project: str, email: str, retry: RetryPolicy) -> ResourceOutcome:
    """The e-mail channel for ``email``: an existing one (vxdeploy's first), else a new one."""
    existing = call_with_retry(
        f"look up the e-mail channel of {email}", lambda: find_email_channel(client, project, email), retry
    )
    if existing is not None:
        note = "" if existing.enabled else "disabled: alerts will not reach this address until it is enabled"
        return ResourceOutcome("notification_channel", existing.name, existing.display_name, "found", note)
    wanted = monitoring_v3.NotificationChannel(
        type_="email",
        display_name=f"vxdeploy alerts: {email}",
        description="E-mail alerts of endpoints deployed by vxdeploy.",
        labels={"email_address": email},
        user_labels={MANAGED_BY_KEY: MANAGED_BY_VALUE},
        enabled=True,
    )
    try:
        made = call_with_retry(
            f"create the e-mail channel of {email}",
            lambda: client.create_notification_channel(
                name=f"projects/{project}", notification_channel=wanted
            ),
            retry,
            recover=lambda: find_email_channel(client, project, email),
            passthrough=(gexc.InvalidArgument,),
        )
    except gexc.InvalidArgument as exc:
        raise ConfigError(
            "monitoring.notification_emails", email, f"Cloud Monitoring refused it: {exc.message}"
        ) from exc
    return ResourceOutcome("notification_channel", made.name, made.display_name, "created")


def find_email_channel(client: Client, project: str, email: str) -> monitoring_v3.NotificationChannel | None:
    """An ``email`` channel for this address (case-insensitive), preferring one vxdeploy made."""
    request = monitoring_v3.ListNotificationChannelsRequest(
        name=f"projects/{project}", filter='type = "email"'
    )
    matches = [
        c
        for c in client.list_notification_channels(request=request)
        if c.labels.get("email_address", "").lower() == email.lower()
    ]
    matches.sort(key=lambda c: (c.user_labels.get(MANAGED_BY_KEY) != MANAGED_BY_VALUE, not c.enabled))
    return matches[0] if matches else None


def _get_or_none(client: Client, name: str) -> monitoring_v3.NotificationChannel | None:
    try:
        return client.get_notification_channel(name=name)
    except gexc.NotFound:
        return None


def _unique(emails: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for e in emails:
        if e.lower() not in seen:
            seen.add(e.lower())
            out.append(e)
    return out
