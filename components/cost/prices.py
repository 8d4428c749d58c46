"""The price table: Vertex AI node-hour prices per region, shipped as a dated snapshot, with overrides."""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vxdeploy.components.common.config import GPU_ACCELERATORS, ServiceLevelConfig
from vxdeploy.components.common.errors import ConfigError

SHIPPED_PRICES = "prices.yaml"


@dataclass(frozen=True)
class MachinePrice:
    """One machine type's price per node-hour in one region.

    Attributes:
        machine_type: Vertex AI machine type, e.g. ``"g2-standard-8"``.
        on_demand: USD per node-hour.
        spot: USD per node-hour on Spot VMs; None when the table has no spot figure.
        accelerator_type: The GPU included in ``on_demand`` (g2, a2, a3), '' for none.
        accelerator_count: How many of ``accelerator_type`` come with the machine.
        source: Where the figure came from: ``"snapshot"`` or ``"override"``.
    """

    machine_type: str
    on_demand: float
    spot: float | None = None
    accelerator_type: str = ""
    accelerator_count: int = 0
    source: str = "snapshot"


@dataclass(frozen=True)
class AcceleratorPrice:
    """One GPU's price per hour in one region, billed on top of the machine (N1 + T4, V100)."""

    accelerator_type: str
    on_demand: float
    spot: float | None = None
    source: str = "snapshot"


@dataclass(frozen=True)
class PriceTable:
    """Vertex AI prediction prices by region.

    Attributes:
        taken: The date the snapshot was taken (ISO).
        source: Where the snapshot's figures come from and how they were derived.
        machines: ``{region: {machine_type: MachinePrice}}``.
        accelerators: ``{region: {accelerator_type: AcceleratorPrice}}``.
        overrides: The ``service_levels.price_overrides`` applied, key to USD per node-hour.
    """

    taken: str
    source: str
    machines: Mapping[str, Mapping[str, MachinePrice]]
    accelerators: Mapping[str, Mapping[str, AcceleratorPrice]]
    overrides: Mapping[str, float] = field(default_factory=dict)

    @property
    def regions(self) -> list[str]:
        return sorted(set(self.machines) | set(self.accelerators))

    def machine(self, region: str, machine_type: str) -> MachinePrice | None:
        """The price of ``machine_type`` in ``region``, or None when the table has none."""
        return self.machines.get(region, {}).get(machine_type)

    def accelerator(self, region: str, accelerator_type: str) -> AcceleratorPrice | None:
        """The per-GPU price of ``accelerator_type`` in ``region``, or None when the table has none."""
        return self.accelerators.get(region, {}).get(accelerator_type)

    def with_overrides(self, overrides: Mapping[str, float], region: str) -> PriceTable:
        """A copy with ``service_levels.price_overrides`` applied to ``region``.

        A machine override replaces the on-demand (or, with ``:spot``, the spot) price of that
        machine type, keeping the GPU it comes with; a machine the snapshot lacks is added as a
        machine without a GPU. Accelerator overrides work the same way per GPU.

        Raises:
            ConfigError: A key does not read ``machine:TYPE[:spot]`` or ``accelerator:NAME[:spot]``,
                a price is not > 0, or a spot price is given for a machine or GPU that has no
                on-demand price in the table or the overrides.
        """
        machines = {r: dict(m) for r, m in self.machines.items()}
        accelerators = {r: dict(a) for r, a in self.accelerators.items()}
        region_machines = machines.setdefault(region, {})
        region_accelerators = accelerators.setdefault(region, {})
        parsed = []
        for key, price in overrides.items():
            try:
                kind, name, spot = ServiceLevelConfig.parse_price_override_key(key)
            except ValueError as exc:
                raise ConfigError(f"service_levels.price_overrides[{key!r}]", price, str(exc)) from None
            if not price > 0:
                raise ConfigError(
                    f"service_levels.price_overrides[{key!r}]", price, "give a price > 0 USD/hour"
                )
            parsed.append((spot, kind, name, key, float(price)))
        # On-demand first, so 'machine:X:spot' may refine a machine that 'machine:X' just added.
        for spot, kind, name, key, price in sorted(parsed, key=lambda item: item[0]):
            table: dict[str, Any] = region_machines if kind == "machine" else region_accelerators
            old = table.get(name)
            if old is None and spot:
                raise ConfigError(
                    f"service_levels.price_overrides[{key!r}]",
                    price,
                    f"the price table has no {name} in {region}: also give its on-demand price "
                    f"'{key.removesuffix(':spot')}'",
                )
            if old is None:
                old = MachinePrice(name, price) if kind == "machine" else AcceleratorPrice(name, price)
            table[name] = dataclasses.replace(
                old, source="override", **{"spot" if spot else "on_demand": price}
            )
        return dataclasses.replace(
            self,
            machines=machines,
            accelerators=accelerators,
            overrides={**self.overrides, **overrides},
        )


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """Load a price table: the snapshot shipped in this package, or a file of the same shape.

    Args:
        path: A YAML price table; None loads the shipped ``components/cost/prices.yaml``.

    Raises:
        ConfigError: The file is missing or does not have the shape of the shipped table.
    """
    if path is None:
        text = importlib.resources.files("vxdeploy.components.cost").joinpath(SHIPPED_PRICES).read_text()
        where = f"components/cost/{SHIPPED_PRICES}"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                "price table", str(path), "no such file; give a YAML file shaped like prices.yaml"
            )
        text, where = p.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
        return _parse_table(data)
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            "price table", where, f"not a valid price table ({exc}); compare with prices.yaml"
        ) from None


def _parse_table(data: Any) -> PriceTable:
    snapshot = data["snapshot"]
    machines: dict[str, dict[str, MachinePrice]] = {}
    accelerators: dict[str, dict[str, AcceleratorPrice]] = {}
    for region, rows in data["regions"].items():
        machines[region] = {
            name: MachinePrice(
                machine_type=name,
                on_demand=_price(row["on_demand"], f"{region} {name} on_demand"),
                spot=_optional_price(row.get("spot"), f"{region} {name} spot"),
                accelerator_type=_accelerator_name(row.get("accelerator", "")),
                accelerator_count=int(row.get("accelerator_count", 1 if row.get("accelerator") else 0)),
            )
            for name, row in (rows.get("machines") or {}).items()
        }
        accelerators[region] = {
            name: AcceleratorPrice(
                accelerator_type=_accelerator_name(name),
                on_demand=_price(row["on_demand"], f"{region} {name} on_demand"),
                spot=_optional_price(row.get("spot"), f"{region} {name} spot"),
            )
            for name, row in (rows.get("accelerators") or {}).items()
        }
    return PriceTable(
        taken=str(snapshot["taken"]),
        source=" ".join(str(snapshot["source"]).split()),
        machines=machines,
        accelerators=accelerators,
    )


def _price(value: Any, what: str) -> float:
    price = float(value)
    if not price > 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")
    return price


def _optional_price(value: Any, what: str) -> float | None:
    return None if value is None else _price(value, what)


def _accelerator_name(name: Any) -> str:
    if name and name not in GPU_ACCELERATORS:
        raise ValueError(f"accelerator {name!r} is not one of {', '.join(GPU_ACCELERATORS)}")
    return str(name or "")
