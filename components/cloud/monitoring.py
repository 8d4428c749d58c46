"""The Cloud Monitoring clients vxdeploy uses, for Google's endpoints or an override (a loopback fake).

``google-cloud-monitoring`` speaks gRPC only; the dashboards API is reached over REST. A loopback
override (``127.0.0.1:PORT``, ``localhost:PORT`` or any ``http://`` address) gets an insecure
channel and anonymous credentials, so tests talk to a fake through the real client code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
from google.auth.credentials import AnonymousCredentials
from google.cloud import monitoring_dashboard_v1, monitoring_v3
from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
    AlertPolicyServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport
from google.cloud.monitoring_v3.services.notification_channel_service.transports import (
    NotificationChannelServiceGrpcTransport,
)

from vxdeploy.components.common.errors import ConfigError

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class MonitoringClients:
    """One client per Cloud Monitoring service vxdeploy calls.

    Attributes:
        alert_policies: ``AlertPolicyServiceClient``.
        notification_channels: ``NotificationChannelServiceClient``.
        metrics: ``MetricServiceClient`` (time series, for canary analysis).
        dashboards: ``DashboardsServiceClient`` over REST; None when the gRPC endpoint is a loopback
            override and no dashboards endpoint was given (so a test never reaches Google by mistake).
    """

    alert_policies: monitoring_v3.AlertPolicyServiceClient
    notification_channels: monitoring_v3.NotificationChannelServiceClient
    metrics: monitoring_v3.MetricServiceClient
    dashboards: monitoring_dashboard_v1.DashboardsServiceClient | None
    _channels: list[grpc.Channel] = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Close the gRPC channels and the REST session."""
        for channel in self._channels:
            channel.close()
        if self.dashboards is not None:
            self.dashboards.transport.close()

    def __enter__(self) -> MonitoringClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_insecure_endpoint(api_endpoint: str) -> bool:
    """Whether an endpoint override is reached without TLS: ``http://`` or a loopback host."""
    if api_endpoint.startswith("http://"):
        return True
    host = _split_host_port(api_endpoint)[0]
    return host in _LOOPBACK_HOSTS


def _split_host_port(api_endpoint: str) -> tuple[str, int | None]:
    parts = urlsplit(api_endpoint if "://" in api_endpoint else f"//{api_endpoint}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            "monitoring.monitoring_endpoint", api_endpoint, "give host:port, e.g. 127.0.0.1:8085"
        ) from None
    return (parts.hostname or ""), port


def grpc_target(api_endpoint: str) -> str:
    """The ``host:port`` gRPC target of an endpoint override (scheme and path dropped)."""
    host, port = _split_host_port(api_endpoint)
    if not host or port is None:
        raise ConfigError(
            "monitoring.monitoring_endpoint", api_endpoint, "give host:port, e.g. 127.0.0.1:8085"
        )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def metric_client(api_endpoint: str = "") -> monitoring_v3.MetricServiceClient:
    """A ``MetricServiceClient`` for Google's endpoint, or for ``api_endpoint`` when given."""
    if not api_endpoint:
        return monitoring_v3.MetricServiceClient()
    if is_insecure_endpoint(api_endpoint):
        channel = grpc.insecure_channel(grpc_target(api_endpoint))
        return monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
    return monitoring_v3.MetricServiceClient(client_options={"api_endpoint": grpc_target(api_endpoint)})


def monitoring_clients(api_endpoint: str = "", *, dashboards_endpoint: str = "") -> MonitoringClients:
    """Clients for Cloud Monitoring: Google's endpoints by default, or the overrides given.

    Args:
        api_endpoint: gRPC endpoint of the alert policy, notification channel and metric services:
            '' for Google's, ``127.0.0.1:PORT`` (or ``http://127.0.0.1:PORT``) for a loopback fake
            reached without TLS, any other ``host:port`` for a private endpoint with TLS.
        dashboards_endpoint: REST endpoint of the dashboards API: '' for Google's (unless
            ``api_endpoint`` is a loopback override, which then leaves ``dashboards`` None),
            ``http://127.0.0.1:PORT`` for a loopback fake.

    Returns:
        The clients; close them (or use ``with``) to release their channels.

    Raises:
        ConfigError: An endpoint is not ``host:port``.
    """
    channels: list[grpc.Channel] = []
    if api_endpoint and is_insecure_endpoint(api_endpoint):
        # One insecure channel serves all three services: they share the fake's port.
        channel = grpc.insecure_channel(grpc_target(api_endpoint))
        channels.append(channel)
        alert_policies = monitoring_v3.AlertPolicyServiceClient(
            transport=AlertPolicyServiceGrpcTransport(channel=channel)
        )
        notification_channels = monitoring_v3.NotificationChannelServiceClient(
            transport=NotificationChannelServiceGrpcTransport(channel=channel)
        )
        metrics = monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
    else:
        options: dict[str, Any] = {"api_endpoint": grpc_target(api_endpoint)} if api_endpoint else {}
        alert_policies = monitoring_v3.AlertPolicyServiceClient(client_options=options)
        notification_channels = monitoring_v3.NotificationChannelServiceClient(client_options=options)
        metrics = monitoring_v3.MetricServiceClient(client_options=options)
    return MonitoringClients(
        alert_policies=alert_policies,
        notification_channels=notification_channels,
        metrics=metrics,
        dashboards=dashboards_client(dashboards_endpoint, loopback_monitoring=bool(channels)),
        _channels=channels,
    )


def dashboards_client(
    dashboards_endpoint: str = "", *, loopback_monitoring: bool = False
) -> monitoring_dashboard_v1.DashboardsServiceClient | None:
    """A REST ``DashboardsServiceClient`` for Google's endpoint or ``dashboards_endpoint``.

    Returns None when ``dashboards_endpoint`` is empty but the other services point at a loopback
    fake: defaulting to Google's endpoint there would send a test's dashboard to a real project.
    """
    if not dashboards_endpoint:
        if loopback_monitoring:
            return None
        return monitoring_dashboard_v1.DashboardsServiceClient(transport="rest")
    if is_insecure_endpoint(dashboards_endpoint):
        endpoint = dashboards_endpoint if "://" in dashboards_endpoint else f"http://{dashboards_endpoint}"
        return monitoring_dashboard_v1.DashboardsServiceClient(
            transport="rest",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": endpoint.rstrip("/")},
        )
    return monitoring_dashboard_v1.DashboardsServiceClient(
        transport="rest", client_options={"api_endpoint": dashboards_endpoint.rstrip("/")}
    )
