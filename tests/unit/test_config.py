from pathlib import Path

import pytest

from vxdeploy.components.common.config import (
    RunConfig,
    SelectionConfig,
    load_config,
    parse_config,
    parse_section,
)
from vxdeploy.components.common.errors import ConfigError


def test_defaults_run_offline_without_any_field_set() -> None:
    config = RunConfig()

    assert config.model.uri == "builtin://digits-cnn"
    assert config.deployment.enabled is False


def test_unknown_field_is_named_with_its_value() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"selection": {"polcy": "min_latency"}})

    assert "selection.polcy='min_latency'" in str(err.value)
    assert "unknown field" in str(err.value)


def test_bad_literal_lists_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"quantization": {"method": "kl"}})

    message = str(err.value)
    assert "quantization.method='kl'" in message
    assert "'entropy'" in message and "'percentile'" in message


def test_out_of_range_number_names_the_range() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"export": {"opset": 11}})

    assert "export.opset=11" in str(err.value)
    assert "17" in str(err.value)


def test_canary_steps_must_end_at_100() -> None:
    with pytest.raises(ConfigError, match="canary.steps"):
        parse_config({"canary": {"steps": [10, 50]}})


def test_pipeline_parameters_round_trip_through_the_sections() -> None:
    config = parse_config({"selection": {"policy": "min_latency", "batch_sizes": [4, 1]}})

    params = config.to_pipeline_parameters()
    again = parse_section(SelectionConfig, params["selection"], "selection")

    assert again.policy == "min_latency"
    assert again.batch_sizes == [1, 4]


def test_build_and_serve_check_tasks_get_the_serving_machines_gpu_type_and_count() -> None:
    config = parse_config(
        {
            "deployment": {
                "machine_type": "a3-highgpu-2g",
                "accelerator_type": "NVIDIA_H100_80GB",
                "accelerator_count": 2,
            }
        }
    )

    params = config.to_pipeline_parameters()

    # One accelerator parameter: the build, measurement and serve-check tasks are placed on it too.
    assert (params["accelerator_type"], params["accelerator_count"]) == ("NVIDIA_H100_80GB", 2)
    assert params["build_on_accelerator"] is True


def test_ints_that_kfp_turned_into_floats_are_accepted() -> None:
    section = parse_section(SelectionConfig, {"batch_sizes": [1.0, 8.0], "min_iterations": 5.0}, "selection")

    assert section.batch_sizes == [1, 8]


def test_yaml_file_and_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("selection:\n  policy: min_latency\nmodel:\n  name: digits\n")

    config = load_config(path, {"model.name": "other"})

    assert config.selection.policy == "min_latency"
    assert config.model.name == "other"


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("- just\n- a list\n")

    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
