"""The shipped price snapshot and price overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from vxdeploy.components.common.errors import ConfigError
from vxdeploy.components.cost import load_price_table


def test_shipped_snapshot_is_dated_and_names_its_source() -> None:
    table = load_price_table()

    assert table.taken == "2026-08-20"
    assert "Cloud Billing Catalog" in table.source and "cloud.google.com/vertex-ai/pricing" in table.source


@pytest.mark.parametrize(
    ("machine_type", "gpu"),
    [
        ("n1-standard-4", ""),
        ("n1-highmem-8", ""),
        ("e2-standard-4", ""),
        ("n2-standard-8", ""),
        ("g2-standard-8", "NVIDIA_L4"),
        ("a2-highgpu-1g", "NVIDIA_TESLA_A100"),
        ("a3-highgpu-1g", "NVIDIA_H100_80GB"),
    ],
)
def test_snapshot_prices_each_machine_family_on_demand_and_spot_in_us_central1(
    machine_type: str, gpu: str
) -> None:
    price = load_price_table().machine("us-central1", machine_type)

    assert price is not None
    assert price.accelerator_type == gpu
    assert price.spot is not None and 0 < price.spot < price.on_demand


def test_snapshot_n1_standard_4_matches_the_published_vertex_figure() -> None:
    price = load_price_table().machine("us-central1", "n1-standard-4")

    assert price is not None and price.on_demand == pytest.approx(0.21849885)


def test_gpus_billed_on_top_of_n1_have_on_demand_prices() -> None:
    table = load_price_table()

    assert {"NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100"} <= set(table.accelerators["us-central1"])


def test_machine_override_replaces_on_demand_and_keeps_the_bundled_gpu() -> None:
    table = load_price_table().with_overrides({"machine:g2-standard-8": 0.9}, "us-central1")

    price = table.machine("us-central1", "g2-standard-8")
    assert price is not None
    assert (price.on_demand, price.accelerator_type, price.source) == (0.9, "NVIDIA_L4", "override")


def test_overrides_add_a_machine_the_snapshot_lacks_in_another_region() -> None:
    table = load_price_table().with_overrides(
        {"machine:n1-standard-4:spot": 0.05, "machine:n1-standard-4": 0.25}, "europe-west4"
    )

    price = table.machine("europe-west4", "n1-standard-4")
    assert price is not None and (price.on_demand, price.spot) == (0.25, 0.05)


def test_spot_override_alone_for_an_unknown_machine_asks_for_its_on_demand_price() -> None:
    with pytest.raises(ConfigError, match="also give its on-demand price 'machine:c3-standard-4'"):
        load_price_table().with_overrides({"machine:c3-standard-4:spot": 0.1}, "us-central1")


def test_unknown_override_key_is_named_with_the_accepted_forms() -> None:
    with pytest.raises(ConfigError) as err:
        load_price_table().with_overrides({"gpu:NVIDIA_L4": 0.7}, "us-central1")

    assert "service_levels.price_overrides['gpu:NVIDIA_L4']" in str(err.value)
    assert "'accelerator:NAME'" in str(err.value)


def test_malformed_price_file_is_refused_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text(
        "snapshot: {taken: x, source: y}\nregions: {us-central1: {machines: {n1-standard-4: {}}}}\n"
    )

    with pytest.raises(ConfigError, match="not a valid price table"):
        load_price_table(bad)
