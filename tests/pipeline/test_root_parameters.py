"""The compiled pipeline's run form: flat typed parameters with defaults and help, plus section overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vxdeploy.components.common.config import SECTIONS, RunConfig, load_config
from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.common.run_parameters import (
    FLAT_PARAMETERS,
    LOCATION_PLACEHOLDER,
    PROJECT_PLACEHOLDER,
    config_from_parameters,
    root_parameter_defaults,
    section_data,
    to_pipeline_parameters,
)
from vxdeploy.pipelines.compile import compile_pipeline

KFP_TYPES = {str: "STRING", bool: "BOOLEAN", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", list: "LIST"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    text = compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml").read_text()
    return text, dict(yaml.safe_load(text))


def _root(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(spec["root"]["inputDefinitions"]["parameters"])


def test_flat_parameters_are_typed_scalars_with_the_configs_defaults_and_a_description(
    compiled: tuple[str, dict[str, Any]],
) -> None:
    _, spec = compiled
    params = _root(spec)
    defaults = RunConfig().model_dump(mode="json")

    for flat in FLAT_PARAMETERS:
        p = params[flat.name]
        default = p["defaultValue"]
        assert p["parameterType"] == KFP_TYPES[type(default)], flat.name
        assert len(p.get("description", "")) > 20, f"{flat.name} has no real description"
        if flat.name not in ("project", "location"):
            assert default == defaults[flat.section][flat.field], flat.name
            # an int stays an int in the YAML (not 19.0), so the console shows it as one
            assert type(default) is type(defaults[flat.section][flat.field]), flat.name


def test_numbers_keep_their_types_in_the_compiled_yaml(compiled: tuple[str, dict[str, Any]]) -> None:
    text, spec = compiled
    params = _root(spec)

    assert params["accelerator_count"]["defaultValue"] == 1
    assert params["canary_steps"]["defaultValue"] == [10, 25, 50, 100]
    assert all(type(s) is int for s in params["canary_steps"]["defaultValue"])
    assert "#    accelerator_count: int [Default: 1]" in text
    assert "#    canary_steps: list [Default: [10, 25, 50, 100]]" in text


def test_project_and_location_default_to_the_runs_own(compiled: tuple[str, dict[str, Any]]) -> None:
    params = _root(compiled[1])

    assert params["project"]["defaultValue"] == "{{$.pipeline_google_cloud_project_id}}"
    assert params["location"]["defaultValue"] == "{{$.pipeline_google_cloud_location}}"


def test_section_overrides_are_optional_empty_objects_with_a_description(
    compiled: tuple[str, dict[str, Any]],
) -> None:
    params = _root(compiled[1])

    for section in SECTIONS:
        assert params[section]["parameterType"] == "STRUCT"
        assert params[section]["defaultValue"] == {}
        assert params[section]["description"].startswith(f"Overrides of the {section} section")


def test_build_and_serve_check_tasks_are_placed_on_the_one_accelerator_parameter(
    compiled: tuple[str, dict[str, Any]],
) -> None:
    executors = compiled[1]["deploymentSpec"]["executors"]

    for name in ("exec-compile-candidates", "exec-select-candidate", "exec-serve-check"):
        accelerator = executors[name]["container"]["resources"]["accelerator"]
        assert accelerator["resourceType"] == "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}"
        assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"


def test_a_config_round_trips_through_the_parameters() -> None:
    config = load_config(
        None,
        {
            "model.uri": "gs://models/resnet/model.pt2",
            "model.name": "resnet50",
            "export.opset": 18,
            "triton.dynamic_batching.enabled": False,
            "deployment.enabled": True,
            "deployment.project": "my-project-1",
            "deployment.location": "europe-west4",
            "deployment.spot": True,
            "deployment.accept_spot_preemption": True,
            "canary.steps": [50, 100],
            "selection.accuracy_budget": 1.5,
        },
    )

    params = to_pipeline_parameters(config)

    assert params["model_uri"] == "gs://models/resnet/model.pt2" and params["deploy"] is True
    assert params["export"] == {"opset": 18} and params["deployment"] == {
        "spot": True,
        "accept_spot_preemption": True,
    }
    assert params["triton"] == {"dynamic_batching": {"enabled": False}}
    assert config_from_parameters(params) == config


def test_kfp_floats_in_overrides_and_lists_are_read_as_the_ints_they_were() -> None:
    params = {**root_parameter_defaults(), "canary_steps": [50.0, 100.0], "export": {"opset": 18.0}}

    config = config_from_parameters(params)

    assert config.canary.steps == [50, 100] and config.export.opset == 18


def test_unresolved_run_placeholders_leave_the_configs_defaults() -> None:
    # outside Vertex AI (kfp.local) nobody substitutes the run's project and region
    params = {**root_parameter_defaults(), "project": PROJECT_PLACEHOLDER, "location": LOCATION_PLACEHOLDER}

    config = config_from_parameters(params)

    assert (config.deployment.project, config.deployment.location) == ("", "us-central1")


def test_a_field_set_both_flat_and_in_its_override_is_refused_naming_both() -> None:
    params = {**root_parameter_defaults(), "deployment": {"endpoint": "other"}}

    with pytest.raises(ConfigError, match=r"deployment\.endpoint.*pipeline parameter `endpoint`"):
        section_data("deployment", params)


def test_a_bad_override_field_fails_naming_it() -> None:
    params = {**root_parameter_defaults(), "export": {"opset": 12}}

    with pytest.raises(ConfigError, match=r"export\.opset"):
        config_from_parameters(params)


def test_the_console_steps_of_the_user_guide_name_real_parameters() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "user-guide.md").read_text()
    console = guide.split("## 2. Run from the console", 1)[1].split("\n## ", 1)[0]

    for name in ("model_uri", "calibration_data_uri", "eval_data_uri", "deploy", "accelerator_type"):
        assert f"`{name}`" in console
    assert "build_accelerator" not in console
