"""The Cloud Monitoring metrics Vertex AI writes for online prediction, and filters that select them.

Vertex AI writes them on the ``aiplatform.googleapis.com/Endpoint`` monitored resource (labels
``resource_container``, ``location``, ``endpoint_id``), each labelled with the
``deployed_model_id`` that served: counts are DELTA INT64, latencies a DELTA DISTRIBUTION in
milliseconds split by ``latency_type`` (``model``, ``overhead``, ``total``), duty cycle and CPU
utilization GAUGE DOUBLE fractions (unit ``10^2.%``: 0.9 is 90%), replicas a GAUGE INT64.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vxdeploy.components.common.errors import UserError

ENDPOINT_RESOURCE_TYPE = "aiplatform.googleapis.com/Endpoint"
_PREFIX = "aiplatform.googleapis.com/prediction/online/"
RESPONSE_COUNT = _PREFIX + "response_count"
ERROR_COUNT = _PREFIX + "error_count"
PREDICTION_COUNT = _PREFIX + "prediction_count"
PREDICTION_LATENCIES = _PREFIX + "prediction_latencies"
REPLICAS = _PREFIX + "replicas"
TARGET_REPLICAS = _PREFIX + "target_replicas"
ACCELERATOR_DUTY_CYCLE = _PREFIX + "accelerator/duty_cycle"
ACCELERATOR_MEMORY_USED = _PREFIX + "accelerator/memory/bytes_used"
CPU_UTILIZATION = _PREFIX + "cpu/utilization"

DEPLOYED_MODEL_LABEL = "metric.label.deployed_model_id"
"""``group_by_fields`` entry that keeps one series per deployed model."""

_ENDPOINT_NAME_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)/endpoints/([^/]+)$")


@dataclass(frozen=True)
class EndpointRef:
    """A Vertex AI endpoint, from its resource name ``projects/P/locations/L/endpoints/ID``."""

    project: str
    location: str
    endpoint_id: str

    @property
    def resource_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/endpoints/{self.endpoint_id}"

    @classmethod
    def parse(cls, resource_name: str, field: str = "vertex_endpoint.metadata.resourceName") -> EndpointRef:
        """Split an endpoint resource name.

        Raises:
            UserError: ``resource_name`` is not ``projects/P/locations/L/endpoints/ID``.
        """
        m = _ENDPOINT_NAME_RE.match(resource_name or "")
        if m is None:
            raise UserError(
                f"{field}={resource_name!r}: not a Vertex AI endpoint resource name; expected "
                "projects/PROJECT/locations/LOCATION/endpoints/ENDPOINT_ID (what the deploy step writes)"
            )
        return cls(*m.groups())


def endpoint_filter(
    metric_type: str, endpoint: EndpointRef, deployed_model_id: str = "", extra: str = ""
) -> str:
    """A Cloud Monitoring filter for one Vertex AI metric of one endpoint (one deployed model when given)."""
    clauses = [
        f'metric.type = "{metric_type}"',
        f'resource.type = "{ENDPOINT_RESOURCE_TYPE}"',
        f'resource.labels.endpoint_id = "{endpoint.endpoint_id}"',
        f'resource.labels.location = "{endpoint.location}"',
    ]
    if deployed_model_id:
        clauses.append(f'metric.labels.deployed_model_id = "{deployed_model_id}"')
    if extra:
        clauses.append(extra)
    return " AND ".join(clauses)


TOTAL_LATENCY = 'metric.labels.latency_type = "total"'
"""Clause keeping end-to-end latency (Vertex AI also writes ``model`` and ``overhead`` parts)."""
