"""docs/configuration.md is generated from the config model and kept up to date."""

from __future__ import annotations

from vxdeploy.components.common.config import SECTIONS, RunConfig
from vxdeploy.pipelines.config_reference import REFERENCE_PATH, render_configuration_reference


def test_committed_configuration_reference_is_up_to_date() -> None:
    # given the reference the code generates now
    generated = render_configuration_reference()

    # when / then the committed file is the same (else: python -m vxdeploy.pipelines.config_reference --write)
    assert REFERENCE_PATH.read_text() == generated


def test_reference_lists_every_field_of_every_section() -> None:
    # given every dotted field name of the run config
    names = [
        f"`{section}.{field}`"
        for section in SECTIONS
        for field in type(getattr(RunConfig(), section)).model_fields
    ]

    # when the reference is rendered
    text = render_configuration_reference()

    # then each has its row
    assert [n for n in names if n not in text] == []
