"""Deployment options are validated where they enter, naming the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from vxdeploy.components.common.config import DeploymentConfig, parse_section
from vxdeploy.components.common.errors import ConfigError


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"spot": True}, "accept_spot_preemption"),
        (
            {"network": "projects/1/global/networks/n", "private_service_connect_projects": ["p"]},
            "exclude each other",
        ),
        ({"network": "my-vpc"}, "projects/PROJECT_NUMBER/global/networks/NAME"),
        ({"smoke_test_route": "private"}, "needs network"),
        ({"staging_bucket": "/tmp/bucket"}, "gs:// prefix"),
        ({"min_replicas": 0, "scale_to_zero_idle_s": 60}, "deployment.scale_to_zero_idle_s"),
    ],
)
def test_inconsistent_deployment_options_are_refused(settings: dict[str, Any], message: str) -> None:
    # Given inconsistent settings / When the section is parsed / Then the error explains the fix
    with pytest.raises(ConfigError, match=message):
        parse_section(DeploymentConfig, settings, "deployment")


@pytest.mark.parametrize(
    ("settings", "route"),
    [
        ({}, "invoke"),
        ({"network": "projects/1/global/networks/n"}, "private"),
        ({"private_service_connect_projects": ["p"]}, "none"),
        ({"smoke_test_route": "none"}, "none"),
    ],
)
def test_auto_smoke_test_route_follows_the_endpoint_kind(settings: dict[str, Any], route: str) -> None:
    # Given endpoint options / When the route is resolved / Then it is the one that reaches one deployed model
    assert DeploymentConfig(**settings).resolved_smoke_test_route == route
