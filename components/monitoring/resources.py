"""What vxdeploy did to each Cloud Monitoring resource, and the labels that mark what it manages.

Cloud Monitoring user label keys may hold '-', but its list filters read ``user_labels.KEY``
where a '-' is not part of a name, so the keys here use '_' (``managed_by``, not Vertex AI's
``managed-by``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from vxdeploy.components.cloud.labels import label_value

MANAGED_BY_KEY = "managed_by"
MANAGED_BY_VALUE = "vxdeploy"
ENDPOINT_KEY = "vxdeploy_endpoint"
ROLE_KEY = "vxdeploy_alert"

Kind = Literal["alert_policy", "notification_channel", "dashboard"]
Action = Literal["created", "updated", "unchanged", "found", "deleted"]


@dataclass(frozen=True)
class ResourceOutcome:
    """One resource and what this run did to it.

    Attributes:
        kind: ``alert_policy``, ``notification_channel`` or ``dashboard``.
        name: Its resource name (``projects/P/alertPolicies/ID``, ...).
        display_name: Its display name.
        action: ``created``, ``updated`` (in place), ``unchanged``, ``found`` (a channel that
            already existed) or ``deleted`` (a duplicate left by an interrupted run).
        note: Why, when it is not obvious (e.g. "duplicate of ...").
    """

    kind: Kind
    name: str
    display_name: str
    action: Action
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def managed_labels(endpoint_id: str) -> dict[str, str]:
    """The user labels of every resource vxdeploy manages for one endpoint."""
    return {MANAGED_BY_KEY: MANAGED_BY_VALUE, ENDPOINT_KEY: label_value(endpoint_id)}


def is_managed_for(labels: Any, endpoint_id: str) -> bool:
    """Whether a resource with these user labels is vxdeploy's for this endpoint."""
    return bool(
        labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE
        and labels.get(ENDPOINT_KEY) == label_value(endpoint_id)
    )
