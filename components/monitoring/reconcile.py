"""Set up Cloud Monitoring for a Vertex AI endpoint: bring alert policies, channels and dashboard in line.

Every resource vxdeploy manages carries the labels ``managed_by=vxdeploy`` and
``vxdeploy_endpoint=<endpoint id>`` (policies also ``vxdeploy_alert=<role>``); a run finds them by
those labels and updates them in place, creates what is missing, and deletes duplicates (left by
a run that crashed mid-way). Running it twice
changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import monitoring_dashboard_v1, monitoring_v3
from google.protobuf import field_mask_pb2

from vxdeploy.components.cloud.monitoring import MonitoringClients, monitoring_clients
from vxdeploy.components.cloud.retry import RetryPolicy
from vxdeploy.components.common.config import MonitoringConfig
from vxdeploy.components.common.errors import CloudOperationError, ConfigError
from vxdeploy.components.monitoring.channels import resolve_notification_channels
from vxdeploy.components.monitoring.dashboard import build_dashboard
from vxdeploy.components.monitoring.policies import ServingShape, build_alert_policies
from vxdeploy.components.monitoring.resources import (
    ENDPOINT_KEY,
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    ROLE_KEY,
    ResourceOutcome,
    is_managed_for,
    managed_labels,
)
from vxdeploy.components.monitoring.retry import call_with_retry
from vxdeploy.components.monitoring.vertex_metrics import EndpointRef

log = logging.getLogger(__name__)

# The policy fields vxdeploy owns; an update sends only these, so fields set in the console that
# vxdeploy does not manage (e.g. a runbook link in documentation.links) survive.
_POLICY_FIELDS = (
    "display_name",
    "documentation.content",
    "documentation.mime_type",
    "documentation.subject",
    "user_labels",
    "conditions",
    "combiner",
    "enabled",
    "notification_channels",
    "alert_strategy",
    "severity",
)
_DASHBOARD_ETAG_RETRIES = 3


@dataclass
class MonitoringResult:
    """What :func:`setup_monitoring` found, created, updated and deleted.

    Attributes:
        project: The Cloud Monitoring project.
        endpoint: The endpoint's resource name.
        channels: Notification channels the policies notify.
        policies: Alert policies, with deleted duplicates as ``deleted``.
        dashboards: The dashboard (and deleted duplicates); empty when dashboards are off.
    """

    project: str
    endpoint: str
    channels: list[ResourceOutcome] = field(default_factory=list)
    policies: list[ResourceOutcome] = field(default_factory=list)
    dashboards: list[ResourceOutcome] = field(default_factory=list)

    @property
    def resources(self) -> list[ResourceOutcome]:
        return [*self.channels, *self.policies, *self.dashboards]

    @property
    def dashboard(self) -> ResourceOutcome | None:
        """The live dashboard, if any."""
        return next((d for d in self.dashboards if d.action != "deleted"), None)

    def counts(self) -> dict[str, int]:
        """How many resources each action touched (created, updated, unchanged, found, deleted)."""
        out = {a: 0 for a in ("created", "updated", "unchanged", "found", "deleted")}
        for r in self.resources:
            out[r.action] += 1
        return out

    def summary(self) -> dict[str, Any]:
        live = [p for p in self.policies if p.action != "deleted"]
        return {
            "project": self.project,
            "endpoint": self.endpoint,
            "alert_policies": len(live),
            "notification_channels": len(self.channels),
            "dashboard": self.dashboard.name if self.dashboard else "",
            **{f"resources_{k}": v for k, v in self.counts().items()},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "endpoint": self.endpoint,
            "channels": [c.to_dict() for c in self.channels],
            "policies": [p.to_dict() for p in self.policies],
            "dashboards": [d.to_dict() for d in self.dashboards],
        }


def setup_monitoring(
    endpoint_resource_name: str,
    cfg: MonitoringConfig,
    project: str = "",
    *,
    shape: ServingShape | None = None,
    deployed_model_ids: Sequence[str] = (),
    endpoint_display_name: str = "",
    clients: MonitoringClients | None = None,
    retry: RetryPolicy | None = None,
    generation: bool = False,
) -> MonitoringResult:
    """Create or update the endpoint's alert policies, notification channels and dashboard.

    Args:
        endpoint_resource_name: ``projects/P/locations/L/endpoints/ID`` (the VertexEndpoint
            artifact's ``resourceName``).
        cfg: The monitoring section.
        project: Cloud Monitoring project (the deployment's project); '' for the endpoint's own.
        shape: Accelerator and replica ceiling of the deployment (GPU or CPU saturation alerts).
        deployed_model_ids: Deployed models that get their own row on the dashboard.
        endpoint_display_name: For the dashboard's title.
        clients: Cloud Monitoring clients; default: made from ``cfg.monitoring_endpoint`` and
            ``cfg.dashboards_endpoint`` and closed at the end.
        retry: Retries after transient errors (default :class:`RetryPolicy`).
        generation: The endpoint serves a generation model: TTFT and tokens/s alerts and charts.

    Returns:
        Every resource touched and what was done to it.

    Raises:
        UserError: The endpoint name is malformed, a channel id does not exist, an e-mail is
            refused, or permission is missing (ConfigError names the field).
        CloudOperationError: Cloud Monitoring kept failing.
    """
    endpoint = EndpointRef.parse(endpoint_resource_name)
    project = project or endpoint.project
    shape = shape or ServingShape()
    retry = retry or RetryPolicy()
    own_clients = clients is None
    clients = clients or monitoring_clients(
        cfg.monitoring_endpoint, dashboards_endpoint=cfg.dashboards_endpoint
    )
    try:
        if cfg.dashboard and clients.dashboards is None:
            raise ConfigError(
                "monitoring.dashboards_endpoint",
                "",
                f"monitoring_endpoint {cfg.monitoring_endpoint!r} is a loopback override, so the dashboards "
                "API needs one too (e.g. http://127.0.0.1:PORT), or set monitoring.dashboard=false",
            )
        result = MonitoringResult(project=project, endpoint=endpoint.resource_name)
        labels = managed_labels(endpoint.endpoint_id)
        result.channels = resolve_notification_channels(clients.notification_channels, project, cfg, retry)
        desired = build_alert_policies(
            endpoint, cfg, shape, labels, [c.name for c in result.channels], generation=generation
        )
        result.policies = reconcile_alert_policies(clients.alert_policies, project, endpoint, desired, retry)
        if cfg.dashboard and clients.dashboards is not None:
            wanted = build_dashboard(
                endpoint,
                cfg,
                shape,
                labels,
                deployed_model_ids=deployed_model_ids,
                alert_policy_names=[p.name for p in result.policies if p.action != "deleted"],
                endpoint_display_name=endpoint_display_name,
                generation=generation,
            )
            result.dashboards = reconcile_dashboard(clients.dashboards, project, endpoint, wanted, retry)
        log.info("monitoring of %s: %s", endpoint.resource_name, result.counts())
        return result
    finally:
        if own_clients:
            clients.close()


# ------------------------------------------------------------------------------------ alert policies
def list_managed_policies(
    client: monitoring_v3.AlertPolicyServiceClient, project: str, endpoint: EndpointRef
) -> list[monitoring_v3.AlertPolicy]:
    """The alert policies vxdeploy manages for this endpoint, oldest first."""
    labels = managed_labels(endpoint.endpoint_id)
    request = monitoring_v3.ListAlertPoliciesRequest(
        name=f"projects/{project}",
        filter=(
            f'user_labels.{MANAGED_BY_KEY} = "{MANAGED_BY_VALUE}" AND '
            f'user_labels.{ENDPOINT_KEY} = "{labels[ENDPOINT_KEY]}"'
        ),
    )
    found = [
        p
        for p in client.list_alert_policies(request=request)
        if is_managed_for(p.user_labels, endpoint.endpoint_id)
    ]
    return sorted(
        found,
        key=lambda p: (
            p.creation_record.mutate_time.timestamp() if p.creation_record.mutate_time else 0,
            p.name,
        ),
    )


def _role_of(policy: monitoring_v3.AlertPolicy, desired: dict[str, monitoring_v3.AlertPolicy]) -> str:
    role = policy.user_labels.get(ROLE_KEY, "")
    if role:
        return role
    # A policy labelled for the endpoint but not its role: match it by display name.
    return next((r for r, want in desired.items() if want.display_name == policy.display_name), "")


def reconcile_alert_policies(
    client: monitoring_v3.AlertPolicyServiceClient,
    project: str,
    endpoint: EndpointRef,
    desired: dict[str, monitoring_v3.AlertPolicy],
    retry: RetryPolicy,
) -> list[ResourceOutcome]:
    """Make the endpoint's managed policies ``desired`` (by role), in place where they exist.

    Duplicates of a role (left by a run that crashed between a create and its answer) are deleted;
    managed policies of a role vxdeploy does not know (a newer version's) are left alone.
    """
    existing = call_with_retry(
        f"list the alert policies of endpoint {endpoint.endpoint_id}",
        lambda: list_managed_policies(client, project, endpoint),
        retry,
    )
    by_role: dict[str, list[monitoring_v3.AlertPolicy]] = {}
    for policy in existing:
        by_role.setdefault(_role_of(policy, desired), []).append(policy)
    outcomes: list[ResourceOutcome] = []
    for role, want in desired.items():
        have = by_role.pop(role, [])
        if have:
            outcomes.append(_update_policy(client, have[0], want, retry))
            outcomes.extend(
                _delete_policy(client, extra, f"duplicate of {have[0].name}", retry) for extra in have[1:]
            )
        else:
            outcomes.append(_create_policy(client, project, endpoint, role, want, retry))
    return outcomes


def _create_policy(
    client: monitoring_v3.AlertPolicyServiceClient,
    project: str,
    endpoint: EndpointRef,
    role: str,
    want: monitoring_v3.AlertPolicy,
    retry: RetryPolicy,
) -> ResourceOutcome:
    def made_earlier() -> monitoring_v3.AlertPolicy | None:
        # A create whose answer was lost may still have happened: look before trying again.
        return next(
            (
                p
                for p in list_managed_policies(client, project, endpoint)
                if _role_of(p, {role: want}) == role
            ),
            None,
        )

    made = call_with_retry(
        f"create alert policy {want.display_name!r}",
        lambda: client.create_alert_policy(name=f"projects/{project}", alert_policy=want),
        retry,
        recover=made_earlier,
    )
    if not _same_policy(made, want):
        # The recovered policy was made by an earlier attempt with these same settings, or by an
        # older run: bring it in line like any existing one.
        return _update_policy(client, made, want, retry, created=True)
    return ResourceOutcome("alert_policy", made.name, made.display_name, "created")


def _update_policy(
    client: monitoring_v3.AlertPolicyServiceClient,
    have: monitoring_v3.AlertPolicy,
    want: monitoring_v3.AlertPolicy,
    retry: RetryPolicy,
    *,
    created: bool = False,
) -> ResourceOutcome:
    if _same_policy(have, want):
        return ResourceOutcome(
            "alert_policy", have.name, have.display_name, "created" if created else "unchanged"
        )
    update = monitoring_v3.AlertPolicy(want)
    update.name = have.name
    # Updating is idempotent (the same fields set to the same values), so a plain retry is safe.
    updated = call_with_retry(
        f"update alert policy {have.name}",
        lambda: client.update_alert_policy(
            alert_policy=update, update_mask=field_mask_pb2.FieldMask(paths=list(_POLICY_FIELDS))
        ),
        retry,
    )
    return ResourceOutcome(
        "alert_policy", updated.name, updated.display_name, "created" if created else "updated"
    )


def _delete_policy(
    client: monitoring_v3.AlertPolicyServiceClient,
    policy: monitoring_v3.AlertPolicy,
    why: str,
    retry: RetryPolicy,
) -> ResourceOutcome:
    call_with_retry(
        f"delete alert policy {policy.name}",
        lambda: _ignore_not_found(lambda: client.delete_alert_policy(name=policy.name)),
        retry,
    )
    return ResourceOutcome("alert_policy", policy.name, policy.display_name, "deleted", why)


def _same_policy(have: monitoring_v3.AlertPolicy, want: monitoring_v3.AlertPolicy) -> bool:
    """Whether ``have`` already holds every field vxdeploy manages as in ``want``."""
    a, b = monitoring_v3.AlertPolicy.pb(have), monitoring_v3.AlertPolicy.pb(want)
    a_cmp, b_cmp = type(a)(), type(b)()
    mask = field_mask_pb2.FieldMask(paths=list(_POLICY_FIELDS))
    mask.MergeMessage(a, a_cmp)
    mask.MergeMessage(b, b_cmp)
    for condition in a_cmp.conditions:
        condition.name = ""  # the service names conditions; the desired ones have no names yet
    return bool(a_cmp == b_cmp)


# ------------------------------------------------------------------------------------------ dashboard
def list_managed_dashboards(
    client: monitoring_dashboard_v1.DashboardsServiceClient, project: str, endpoint: EndpointRef
) -> list[monitoring_dashboard_v1.Dashboard]:
    """The dashboards vxdeploy manages for this endpoint (checked by label: the list API has no filter)."""
    request = monitoring_dashboard_v1.ListDashboardsRequest(parent=f"projects/{project}")
    return [
        d for d in client.list_dashboards(request=request) if is_managed_for(d.labels, endpoint.endpoint_id)
    ]


def reconcile_dashboard(
    client: monitoring_dashboard_v1.DashboardsServiceClient,
    project: str,
    endpoint: EndpointRef,
    wanted: monitoring_dashboard_v1.Dashboard,
    retry: RetryPolicy,
) -> list[ResourceOutcome]:
    """Make the endpoint's one managed dashboard ``wanted``, in place where it exists."""
    existing = call_with_retry(
        f"list the dashboards of project {project}",
        lambda: list_managed_dashboards(client, project, endpoint),
        retry,
    )
    if not existing:
        made = call_with_retry(
            f"create dashboard {wanted.display_name!r}",
            lambda: client.create_dashboard(request={"parent": f"projects/{project}", "dashboard": wanted}),
            retry,
            recover=lambda: next(iter(list_managed_dashboards(client, project, endpoint)), None),
        )
        return [ResourceOutcome("dashboard", made.name, made.display_name, "created")]
    keep, extras = existing[0], existing[1:]
    outcomes = [_update_dashboard(client, keep, wanted, retry)]
    for extra in extras:
        call_with_retry(
            f"delete dashboard {extra.name}",
            lambda extra=extra: _ignore_not_found(lambda: client.delete_dashboard(name=extra.name)),  # type: ignore[misc]
            retry,
        )
        outcomes.append(
            ResourceOutcome(
                "dashboard", extra.name, extra.display_name, "deleted", f"duplicate of {keep.name}"
            )
        )
    return outcomes


def _update_dashboard(
    client: monitoring_dashboard_v1.DashboardsServiceClient,
    have: monitoring_dashboard_v1.Dashboard,
    wanted: monitoring_dashboard_v1.Dashboard,
    retry: RetryPolicy,
) -> ResourceOutcome:
    for _ in range(_DASHBOARD_ETAG_RETRIES):
        if _same_dashboard(have, wanted):
            return ResourceOutcome("dashboard", have.name, have.display_name, "unchanged")
        update = monitoring_dashboard_v1.Dashboard(wanted)
        update.name, update.etag = have.name, have.etag
        try:
            updated = call_with_retry(
                f"update dashboard {have.name}",
                lambda update=update: client.update_dashboard(request={"dashboard": update}),  # type: ignore[misc]
                retry,
                passthrough=(gexc.Conflict,),
            )
        except gexc.Conflict:
            # Changed since it was read (someone edited it, or an earlier attempt of this update
            # went through): read it again and compare.
            have = call_with_retry(
                f"get dashboard {have.name}",
                lambda name=have.name: client.get_dashboard(name=name),  # type: ignore[misc]
                retry,
            )
            if _same_dashboard(have, wanted):
                return ResourceOutcome("dashboard", have.name, have.display_name, "updated")
            continue
        return ResourceOutcome("dashboard", updated.name, updated.display_name, "updated")
    raise CloudOperationError(
        f"Cloud Monitoring: dashboard {have.name} changed under each of {_DASHBOARD_ETAG_RETRIES} "
        "updates; someone is editing it: run again when they are done"
    )


def _same_dashboard(
    have: monitoring_dashboard_v1.Dashboard, wanted: monitoring_dashboard_v1.Dashboard
) -> bool:
    a = monitoring_dashboard_v1.Dashboard.pb(monitoring_dashboard_v1.Dashboard(have))
    b = monitoring_dashboard_v1.Dashboard.pb(monitoring_dashboard_v1.Dashboard(wanted))
    for d in (a, b):
        d.name, d.etag = "", ""
    return bool(a == b)


def _ignore_not_found(call: Any) -> None:
    # Deleting what is already gone (a retry after a lost answer) is done, not an error.
    try:
        call()
    except gexc.NotFound:
        pass
