"""The service_levels config section: price override keys and the CPU machine type."""

from __future__ import annotations

import pytest

from vxdeploy.components.common.config import ServiceLevelConfig, parse_config, parse_section
from vxdeploy.components.common.errors import ConfigError


def test_override_keys_for_machines_and_gpus_on_demand_and_spot_are_accepted() -> None:
    overrides = {
        "machine:g2-standard-8": 0.9,
        "machine:g2-standard-8:spot": 0.4,
        "accelerator:NVIDIA_TESLA_T4": 0.4,
        "accelerator:NVIDIA_TESLA_T4:spot": 0.15,
    }

    cfg = parse_section(ServiceLevelConfig, {"price_overrides": overrides}, "service_levels")

    assert cfg.price_overrides == overrides


def test_override_key_of_unknown_kind_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"service_levels": {"price_overrides": {"gpu:NVIDIA_L4": 0.7}}})

    assert "price_overrides key 'gpu:NVIDIA_L4'" in str(err.value)
    assert "'machine:TYPE'" in str(err.value)


def test_override_of_an_accelerator_vertex_does_not_have_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"service_levels": {"price_overrides": {"accelerator:NVIDIA_T4": 0.4}}})

    assert "accelerator 'NVIDIA_T4' is not one of NVIDIA_TESLA_T4" in str(err.value)


def test_non_positive_override_price_is_refused() -> None:
    with pytest.raises(ConfigError, match="give a price > 0"):
        parse_config({"service_levels": {"price_overrides": {"machine:n1-standard-4": 0}}})


def test_cpu_machine_type_must_look_like_a_machine_type() -> None:
    with pytest.raises(ConfigError, match="is not a machine type"):
        parse_config({"service_levels": {"cpu_machine_type": "N1 Standard 4"}})


def test_defaults_set_no_target_and_a_load_of_50_per_second() -> None:
    cfg = ServiceLevelConfig()

    assert (cfg.p50_latency_ms, cfg.p95_latency_ms, cfg.max_cost_per_hour) == (None, None, None)
    assert cfg.requests_per_second == 50
    assert cfg.replica_requests_per_second is None
