"""``vxdeploy rollback --endpoint ...``: repair an endpoint a rollout left stranded, from its lease.

Before the rollout's commit point (phase ``deploying`` or ``canary-<step>``) it restores the traffic
split that served, gives the aliases back and undeploys the canary; after it (``promoted``) it
finishes the cleanup and leaves the new version serving. It takes the lease over from whichever run
holds it, so the dead (or still running) rollout can no longer move traffic.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vxdeploy.components.cloud.endpoints import find_endpoint, serving_split
from vxdeploy.components.cloud.lease import RolloutLease, read_lease
from vxdeploy.components.cloud.recovery import recover_until_deadline
from vxdeploy.components.cloud.vertex import VertexApi, connect
from vxdeploy.components.common.config import DeploymentConfig
from vxdeploy.components.common.errors import UserError

DEFAULT_DEADLINE_S = 1800.0


@dataclass
class RollbackReport:
    """What ``vxdeploy rollback`` found and did."""

    endpoint: str
    lease: RolloutLease | None
    action: str  # "none", "rolled_back" or "finished"
    split_before: dict[str, int] = field(default_factory=dict)
    split_after: dict[str, int] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report, as printed."""
        if self.lease is None:
            return [f"{self.endpoint}: no rollout in progress (traffic {self.split_after}); nothing to do"]
        where = "after" if self.lease.committed else "before"
        head = (
            f"{self.endpoint}: rollout {self.lease.holder!r} was in phase {self.lease.phase!r} ({where} its "
            f"commit point), traffic {self.split_before}"
        )
        verb = "finished" if self.action == "finished" else "rolled back"
        return [head, *(f"  {a}" for a in self.actions), f"{verb}: traffic {self.split_after}"]


def deployment_for(
    endpoint: str, *, project: str = "", location: str = "", api_endpoint: str = "", config: Any = None
) -> DeploymentConfig:
    """The deployment section that names ``endpoint`` (a resource name, a numeric id or a display name).

    Project and location come from the resource name, else the flags, else the config file.

    Raises:
        UserError: no project is known.
    """
    base = config.deployment if config is not None else DeploymentConfig()
    parts = endpoint.split("/")
    if endpoint.startswith("projects/") and len(parts) == 6:
        project, location = project or parts[1], location or parts[3]
    project = project or base.project
    if not project:
        raise UserError(
            f"--endpoint {endpoint!r}: no project; give the endpoint's resource name "
            "(projects/P/locations/L/endpoints/ID), or --project"
        )
    return base.model_copy(
        update={
            "enabled": True,
            "project": project,
            "location": location or base.location,
            "endpoint": endpoint,
            "api_endpoint": api_endpoint or base.api_endpoint,
        }
    )


def rollback_endpoint(
    deployment: DeploymentConfig,
    *,
    api: VertexApi | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    run_id: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> RollbackReport:
    """Recover the rollout the endpoint's lease records (restore before its commit point, finish after).

    Raises:
        UserError: the endpoint does not exist.
        StrandedRolloutError: it could not be recovered before ``deadline_s``.
    """
    api = api or connect(deployment)
    found = find_endpoint(api, deployment)
    if found is None:
        raise UserError(f"--endpoint {deployment.endpoint!r}: no such endpoint in {api.parent}")
    name = str(found.name)
    lease = read_lease(found)
    before = serving_split(found)
    if lease is None:
        return RollbackReport(name, None, "none", before, before)
    outcome = recover_until_deadline(
        api,
        name,
        run_id or f"vxdeploy-rollback-{int(time.time())}",
        deadline_s=deadline_s,
        timeout_s=deployment.operation_timeout_s,
        take_over=True,
        sleep=sleep,
    )
    found = find_endpoint(api, deployment)
    after = serving_split(found) if found is not None else {}
    return RollbackReport(name, lease, outcome.action, before, after, outcome.actions)


def cmd_rollback(args: argparse.Namespace) -> int:
    from vxdeploy.components.common.config import load_config

    config = load_config(args.config, {}) if args.config else None
    deployment = deployment_for(
        args.endpoint,
        project=args.project or "",
        location=args.location or "",
        api_endpoint=args.api_endpoint or "",
        config=config,
    )
    report = rollback_endpoint(deployment, deadline_s=args.deadline_s)
    for line in report.lines():
        print(line)
    return 0


def add_rollback_arguments(sub: Any) -> None:
    """The ``rollback`` subcommand."""
    p = sub.add_parser(
        "rollback",
        help="repair an endpoint a failed rollout left: restore the serving version (or finish a promotion)",
    )
    p.add_argument(
        "--endpoint",
        required=True,
        help="the endpoint: projects/P/locations/L/endpoints/ID (as the exit handler prints it), an id or "
        "a display name",
    )
    p.add_argument("--project", help="project (default: from --endpoint or the config)")
    p.add_argument("--location", help="region (default: from --endpoint, the config or us-central1)")
    p.add_argument("--api-endpoint", help="Vertex AI API endpoint override (e.g. a local fake)")
    p.add_argument("--config", help="YAML run config whose deployment section to use")
    p.add_argument(
        "--deadline-s",
        type=float,
        default=DEFAULT_DEADLINE_S,
        help="keep retrying for this long before giving up (default %(default)s)",
    )
    p.set_defaults(func=cmd_rollback)
