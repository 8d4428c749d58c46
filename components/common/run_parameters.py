"""The pipeline's root parameters: flat, typed knobs for what changes per run, plus section overrides.

A console user sets a dozen scalars (``model_uri``, ``calibration_data_uri``, ``deploy``, ...); every
other field of :class:`~vxdeploy.components.common.config.RunConfig` stays reachable through one optional JSON
object per section (``export``, ``deployment``, ...), merged over the defaults. This module is the one
mapping between a :class:`RunConfig` and those parameters, both ways: the CLI, ``submit``, schedules and
local runs go through :func:`to_pipeline_parameters`, the pipeline's first task through
:func:`config_from_parameters`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from vxdeploy.components.common.config import SECTIONS, RunConfig, parse_config
from vxdeploy.components.common.errors import ConfigError

# What Vertex AI Pipelines substitutes with the run's own project and region (the placeholders
# google_cloud_pipeline_components/_placeholders.py defines and its components default to).
PROJECT_PLACEHOLDER = "{{$.pipeline_google_cloud_project_id}}"
LOCATION_PLACEHOLDER = "{{$.pipeline_google_cloud_location}}"
_RUN_PLACEHOLDERS = {"project": PROJECT_PLACEHOLDER, "location": LOCATION_PLACEHOLDER}

BUILD_ON_ACCELERATOR = "build_on_accelerator"


@dataclass(frozen=True)
class FlatParameter:
    """One root parameter that sets one config field."""

    name: str
    section: str
    field: str

    @property
    def path(self) -> str:
        return f"{self.section}.{self.field}"


FLAT_PARAMETERS: tuple[FlatParameter, ...] = (
    FlatParameter("model_uri", "model", "uri"),
    FlatParameter("model_name", "model", "name"),
    FlatParameter("calibration_data_uri", "data", "calibration_uri"),
    FlatParameter("eval_data_uri", "data", "eval_uri"),
    FlatParameter("project", "deployment", "project"),
    FlatParameter("location", "deployment", "location"),
    FlatParameter("deploy", "deployment", "enabled"),
    FlatParameter("endpoint", "deployment", "endpoint"),
    FlatParameter("machine_type", "deployment", "machine_type"),
    FlatParameter("accelerator_type", "deployment", "accelerator_type"),
    FlatParameter("accelerator_count", "deployment", "accelerator_count"),
    FlatParameter("min_replicas", "deployment", "min_replicas"),
    FlatParameter("max_replicas", "deployment", "max_replicas"),
    FlatParameter("canary_steps", "canary", "steps"),
    FlatParameter("accuracy_budget", "selection", "accuracy_budget"),
)
FLAT_NAMES: tuple[str, ...] = tuple(p.name for p in FLAT_PARAMETERS)
# Every root parameter of the pipeline, in the order the console shows them.
PARAMETER_NAMES: tuple[str, ...] = (*FLAT_NAMES, BUILD_ON_ACCELERATOR, *SECTIONS)
_BY_PATH = {p.path: p for p in FLAT_PARAMETERS}


def to_pipeline_parameters(config: RunConfig, *, build_on_accelerator: bool = True) -> dict[str, Any]:
    """The root parameter values of one run of ``config``: the flat knobs, then each section's changes.

    Args:
        config: The validated run config.
        build_on_accelerator: Compile, measure and serve-check on ``deployment.accelerator_type`` (an
            engine only serves on the GPU type it was built on); False builds on the CPU the task
            lands on, as a local run does.
    """
    dumped = config.model_dump(mode="json")
    defaults = RunConfig().model_dump(mode="json")
    params: dict[str, Any] = {p.name: dumped[p.section][p.field] for p in FLAT_PARAMETERS}
    params[BUILD_ON_ACCELERATOR] = build_on_accelerator
    for section in SECTIONS:
        params[section] = _override(getattr(config, section), dumped[section], defaults[section], section)
    return params


def _override(
    model: BaseModel, values: dict[str, Any], defaults: dict[str, Any], section: str
) -> dict[str, Any]:
    """The fields of one section a run sets: those it chose, as it chose them, and any off its default.

    A nested section keeps only the fields it names, so merging the override over the defaults
    rebuilds the same config, with the same fields counted as chosen.
    """
    chosen = model.model_dump(mode="json", exclude_unset=True)
    out = {}
    for key, value in values.items():
        if f"{section}.{key}" in _BY_PATH:
            continue
        if key in chosen:
            out[key] = chosen[key]
        elif value != defaults.get(key):
            out[key] = value
    return out


def root_parameter_defaults() -> dict[str, Any]:
    """The compiled pipeline's defaults: the config's, project and location those of the run itself."""
    params = to_pipeline_parameters(RunConfig())
    params.update(_RUN_PLACEHOLDERS)
    return params


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _flat_value(param: FlatParameter, value: Any) -> Any:
    """``value`` as the config field takes it; an unresolved run placeholder means "not given"."""
    if param.name in _RUN_PLACEHOLDERS and (value in ("", _RUN_PLACEHOLDERS[param.name])):
        return None  # outside Vertex AI (a local run) nothing fills in the run's project or region
    return value


def section_data(section: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """One section's mapping from the root parameters: its override with its flat parameters set.

    Raises:
        ConfigError: the override is not a mapping, or sets a field that has its own root parameter.
    """
    override = parameters.get(section) or {}
    if not isinstance(override, Mapping):
        raise ConfigError(
            section, override, "give a JSON object of this section's fields (docs/configuration.md), or {}"
        )
    data = _merge({}, override)
    for param in FLAT_PARAMETERS:
        if param.section != section or param.name not in parameters:
            continue
        if param.field in override:
            raise ConfigError(
                param.path,
                override[param.field],
                f"is the pipeline parameter `{param.name}`; set it there and remove "
                f"{param.field!r} from `{section}`",
            )
        value = _flat_value(param, parameters[param.name])
        if value is not None:
            data[param.field] = value
    return data


def config_from_parameters(parameters: Mapping[str, Any]) -> RunConfig:
    """The validated run config that the pipeline's root parameter values describe.

    Raises:
        ConfigError: a field is invalid, unknown, or set both flat and in its section's override.
    """
    return parse_config({section: section_data(section, parameters) for section in SECTIONS})


def build_accelerator(config: RunConfig, build_on_accelerator: bool) -> tuple[str, int]:
    """The accelerator type and count the build, measurement and serve-check tasks check they run on."""
    gpu = config.deployment.accelerator_type if build_on_accelerator else ""
    return gpu, config.deployment.accelerator_count if gpu else 0
