"""The cost model: replicas, cost per hour, month and million predictions, from measured figures.

Figures are priced only on the hardware they were measured on: GPU figures with the deployment's
machine and GPU when they were measured on that GPU, CPU figures with a CPU machine type. Where
nothing was measured on the deployment's GPU the report says so; nothing is extrapolated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vxdeploy.components.common.config import DeploymentConfig, ServiceLevelConfig
from vxdeploy.components.common.stage import markdown_table
from vxdeploy.components.cost.measured import MeasuredCandidate, group_by_candidate, is_cpu
from vxdeploy.components.cost.prices import PriceTable, load_price_table
from vxdeploy.components.cost.service_levels import operating_point

HOURS_PER_MONTH = 730.0
DEFAULT_CPU_MACHINE_TYPE = "n1-standard-4"


@dataclass(frozen=True)
class CandidateCost:
    """What one candidate costs at the target load, on the hardware its figures were measured on.

    Attributes:
        name: Candidate name.
        kind: Candidate kind.
        measured_on: Where its figures were measured.
        priced_as: The Vertex AI node it is priced as (e.g. ``"n1-standard-4"``,
            ``"g2-standard-8 (1 x NVIDIA_L4)"``); '' when it could not be priced.
        batch_size: The batch size its replicas run at (see
            :func:`vxdeploy.components.cost.service_levels.operating_point`).
        p50_ms: Measured p50 latency at that batch size.
        p95_ms: Measured p95 latency at that batch size.
        throughput_rps: Measured predictions per second of one replica at that batch size.
        replicas: Replicas needed for ``service_levels.requests_per_second`` (at least
            ``deployment.min_replicas`` and 1).
        node_price_per_hour: On-demand USD per node-hour of one replica; None when not priced.
        cost_per_hour: On-demand USD per hour for all replicas.
        cost_per_month: ``cost_per_hour`` x 730 hours.
        cost_per_million: On-demand USD per million predictions at the target load.
        spot_cost_per_hour: Spot USD per hour (only with ``deployment.spot`` and a spot price).
        spot_cost_per_month: Spot USD per 730-hour month.
        spot_cost_per_million: Spot USD per million predictions at the target load.
        missed: The service-level targets missed (latency, throughput, cost), each naming the
            target and the figure; empty when the candidate meets them all.
        notes: Why it is not costed, capped replicas, a missing spot price.
    """

    name: str
    kind: str
    measured_on: str
    priced_as: str
    batch_size: int
    p50_ms: float
    p95_ms: float
    throughput_rps: float
    replicas: int
    node_price_per_hour: float | None
    cost_per_hour: float | None
    cost_per_month: float | None
    cost_per_million: float | None
    spot_cost_per_hour: float | None
    spot_cost_per_month: float | None
    spot_cost_per_million: float | None
    missed: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def meets_targets(self) -> bool:
        return not self.missed

    @property
    def priced(self) -> bool:
        return self.cost_per_hour is not None

    @property
    def effective_cost_per_hour(self) -> float | None:
        """What the deployment pays per hour: spot when priced on spot, else on-demand."""
        return self.spot_cost_per_hour if self.spot_cost_per_hour is not None else self.cost_per_hour

    @property
    def effective_cost_per_million(self) -> float | None:
        return self.spot_cost_per_million if self.spot_cost_per_million is not None else self.cost_per_million

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(missed=list(self.missed), notes=list(self.notes), meets_targets=self.meets_targets)
        return data


@dataclass(frozen=True)
class CostReport:
    """Every candidate's cost at the target load, and the cheapest one meeting the targets.

    Attributes:
        rows: One per candidate, in the order first measured.
        cheapest: Name of the cheapest priced candidate meeting every target (by spot cost when
            ``deployment.spot``); None when none does.
        region: The region priced (``deployment.location``).
        spot: Whether spot prices were used.
        requests_per_second: The target load priced.
        prices_taken: Date of the price snapshot.
        prices_source: Where the prices come from.
        notes: What the reader must know to trust the table (hardware priced as, what was not
            costed and why, overrides).
    """

    rows: tuple[CandidateCost, ...]
    cheapest: str | None
    region: str
    spot: bool
    requests_per_second: float
    prices_taken: str
    prices_source: str
    notes: tuple[str, ...]

    def row(self, name: str) -> CandidateCost:
        """The row of candidate ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no candidate {name!r} in the cost report; have {[r.name for r in self.rows]}")

    def headline(self) -> dict[str, Any]:
        """Flat headline figures for a stage summary and KFP metrics."""
        best = self.row(self.cheapest) if self.cheapest else None
        return {
            "cheapest_candidate": self.cheapest or "",
            "cheapest_priced_as": best.priced_as if best else "",
            "cheapest_replicas": best.replicas if best else None,
            "cheapest_cost_per_hour": best.effective_cost_per_hour if best else None,
            "cheapest_cost_per_month": (
                (best.spot_cost_per_month if best.spot_cost_per_month is not None else best.cost_per_month)
                if best
                else None
            ),
            "cheapest_cost_per_million": best.effective_cost_per_million if best else None,
            "candidates_meeting_targets": sum(row.meets_targets for row in self.rows),
            "candidates_priced": sum(row.priced for row in self.rows),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [row.to_dict() for row in self.rows],
            "cheapest": self.cheapest,
            "region": self.region,
            "spot": self.spot,
            "requests_per_second": self.requests_per_second,
            "hours_per_month": HOURS_PER_MONTH,
            "prices_taken": self.prices_taken,
            "prices_source": self.prices_source,
            "notes": list(self.notes),
        }

    def to_markdown(self) -> str:
        """The cost table with the cheapest candidate named and the notes below it."""
        table_rows = []
        for row in self.rows:
            cells: dict[str, Any] = {
                "candidate": row.name,
                "measured on": row.measured_on,
                "priced as": row.priced_as or "not costed",
                "batch": row.batch_size,
                "p50 ms": row.p50_ms,
                "p95 ms": row.p95_ms,
                "pred/s per replica": _rate(row.throughput_rps),
                "replicas": row.replicas,
                "$/hour": _money(row.cost_per_hour),
                "$/month": _money(row.cost_per_month),
                "$ per 1M": _money(row.cost_per_million),
            }
            if self.spot:
                cells |= {
                    "spot $/hour": _money(row.spot_cost_per_hour),
                    "spot $/month": _money(row.spot_cost_per_month),
                    "spot $ per 1M": _money(row.spot_cost_per_million),
                }
            cells["meets targets"] = "yes" if row.meets_targets else "no"
            table_rows.append(cells)
        lines = [
            f"### Cost at {self.requests_per_second:g} predictions/s in {self.region}"
            + (" (spot)" if self.spot else ""),
            "",
            markdown_table(table_rows).rstrip("\n"),
            "",
        ]
        if self.cheapest:
            best = self.row(self.cheapest)
            lines.append(
                f"**Cheapest meeting the targets:** {best.name}: {best.replicas} x {best.priced_as} at batch "
                f"{best.batch_size}, {_money(best.effective_cost_per_hour)}/hour, "
                f"{_money(best.effective_cost_per_million)} per million predictions"
                + (" (spot)" if best.spot_cost_per_hour is not None else "")
                + "."
            )
        else:
            lines.append("**No priced candidate meets every target.**")
        missed = [f"- {row.name}: {'; '.join(row.missed)}" for row in self.rows if row.missed]
        if missed:
            lines += ["", "Missed targets:", *missed]
        row_notes = [f"- {row.name}: {'; '.join(row.notes)}" for row in self.rows if row.notes]
        if row_notes:
            lines += ["", "Per candidate:", *row_notes]
        lines += ["", "Notes:", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Node:
    priced_as: str
    on_demand: float
    spot: float | None


def estimate_costs(
    candidates: Sequence[MeasuredCandidate],
    cfg: ServiceLevelConfig,
    deployment: DeploymentConfig,
    prices: PriceTable | None = None,
) -> CostReport:
    """Price every measured candidate at the target load.

    For each candidate: the batch size its replicas run at (the fastest one within the latency
    targets), the replicas that carry ``cfg.requests_per_second`` at that batch size's measured
    throughput (rounded up), and their cost per hour, per 730-hour month and per million
    predictions at the target load, on demand and, with ``deployment.spot``, on Spot VMs.

    Figures measured on a GPU are priced only as ``deployment.machine_type`` with its GPU, and
    only when measured on ``deployment.accelerator_type``; figures measured on a CPU are priced
    as ``cfg.cpu_machine_type`` (default: ``deployment.machine_type`` for CPU deployments, else
    n1-standard-4). A candidate that cannot be priced keeps its row, with the reason.

    Args:
        candidates: Measured points, one per candidate per batch size.
        cfg: Targets, target load, CPU machine type and price overrides.
        deployment: Where the model will be served (region, machine, GPU, spot, replicas).
        prices: The price table; None loads the shipped snapshot. ``cfg.price_overrides`` are
            applied on top for ``deployment.location``.

    Returns:
        The cost report; ``report.cheapest`` names the cheapest candidate meeting every target.
    """
    table = (prices if prices is not None else load_price_table()).with_overrides(
        cfg.price_overrides, deployment.location
    )
    cpu_machine, cpu_machine_why = _cpu_machine_type(cfg, deployment)
    rows = []
    for points in group_by_candidate(candidates).values():
        first = points[0]
        op = operating_point(points, cfg)
        node = _price_node(first, cpu_machine, deployment, table)
        replicas = _replicas(cfg, deployment, op.point.throughput_rps)
        missed = list(op.missed)
        notes: list[str] = []
        costs: dict[str, float | None] = {
            f"{prefix}{figure}": None
            for prefix in ("", "spot_")
            for figure in ("cost_per_hour", "cost_per_month", "cost_per_million")
        }
        if isinstance(node, str):
            notes.append(f"not costed: {node}")
            if cfg.max_cost_per_hour is not None:
                missed.append(
                    f"service_levels.max_cost_per_hour={cfg.max_cost_per_hour:g}: "
                    "cannot be checked, not costed"
                )
        else:
            costs |= _costs(node.on_demand, replicas, cfg.requests_per_second, "")
            if deployment.spot and node.spot is not None:
                costs |= _costs(node.spot, replicas, cfg.requests_per_second, "spot_")
            elif deployment.spot:
                notes.append(f"no spot price for {node.priced_as} in {deployment.location}: on-demand shown")
            effective = costs["spot_cost_per_hour"] or costs["cost_per_hour"]
            if (
                cfg.max_cost_per_hour is not None
                and effective is not None
                and effective > cfg.max_cost_per_hour
            ):
                missed.append(
                    f"service_levels.max_cost_per_hour={cfg.max_cost_per_hour:g}: costs ${effective:.4f}/h "
                    f"({replicas} x {node.priced_as})"
                )
        if replicas > deployment.max_replicas:
            notes.append(
                f"needs {replicas} replicas for {cfg.requests_per_second:g} predictions/s but "
                f"deployment.max_replicas={deployment.max_replicas} caps autoscaling below the target load"
            )
        rows.append(
            CandidateCost(
                name=first.name,
                kind=first.kind,
                measured_on=first.measured_on,
                priced_as="" if isinstance(node, str) else node.priced_as,
                batch_size=op.point.batch_size,
                p50_ms=op.point.p50_ms,
                p95_ms=op.point.p95_ms,
                throughput_rps=op.point.throughput_rps,
                replicas=replicas,
                node_price_per_hour=None if isinstance(node, str) else node.on_demand,
                missed=tuple(missed),
                notes=tuple(notes),
                **costs,
            )
        )
    return CostReport(
        rows=tuple(rows),
        cheapest=_cheapest(rows),
        region=deployment.location,
        spot=deployment.spot,
        requests_per_second=cfg.requests_per_second,
        prices_taken=table.taken,
        prices_source=table.source,
        notes=tuple(_report_notes(rows, cfg, deployment, table, cpu_machine, cpu_machine_why)),
    )


def _cpu_machine_type(cfg: ServiceLevelConfig, deployment: DeploymentConfig) -> tuple[str, str]:
    """The machine type CPU-measured figures are priced as, and why that one."""
    if cfg.cpu_machine_type:
        return cfg.cpu_machine_type, "service_levels.cpu_machine_type"
    if not deployment.accelerator_type:
        return deployment.machine_type, "deployment.machine_type of this CPU deployment"
    return DEFAULT_CPU_MACHINE_TYPE, (
        "the default CPU machine type; the deployment has a GPU and service_levels.cpu_machine_type is unset"
    )


def _price_node(
    point: MeasuredCandidate, cpu_machine: str, deployment: DeploymentConfig, table: PriceTable
) -> _Node | str:
    """One replica's node and its prices, or why it cannot be priced."""
    region = deployment.location
    if point.on_cpu:
        machine = table.machine(region, cpu_machine)
        if machine is None:
            return _no_machine_price(cpu_machine, region, table)
        if machine.accelerator_type:
            return (
                f"{cpu_machine} comes with {machine.accelerator_count} x {machine.accelerator_type}; "
                "figures measured on a CPU are priced only as a CPU machine type "
                "(set service_levels.cpu_machine_type)"
            )
        return _Node(cpu_machine, machine.on_demand, machine.spot)
    gpu = deployment.accelerator_type
    if not gpu:
        return (
            f"measured on {point.measured_on}, but the deployment serves on CPU "
            "(deployment.accelerator_type='') and no CPU figure was measured for this candidate"
        )
    if point.measured_on != gpu:
        return (
            f"measured on {point.measured_on}, the deployment serves on {gpu}: no figure measured on {gpu} "
            "(the build-and-benchmark stage must run on the serving GPU; nothing is extrapolated)"
        )
    count = deployment.accelerator_count
    machine = table.machine(region, deployment.machine_type)
    if machine is None:
        return _no_machine_price(deployment.machine_type, region, table)
    if machine.accelerator_type:
        if (machine.accelerator_type, machine.accelerator_count) != (gpu, count):
            return (
                f"{deployment.machine_type} comes with {machine.accelerator_count} x "
                f"{machine.accelerator_type}, the deployment asks for {count} x {gpu}"
            )
        return _Node(f"{deployment.machine_type} ({count} x {gpu})", machine.on_demand, machine.spot)
    accelerator = table.accelerator(region, gpu)
    if accelerator is None:
        return (
            f"no price for {gpu} in {region} in the price table: set "
            f"service_levels.price_overrides['accelerator:{gpu}'] (USD per GPU-hour)"
        )
    spot = None
    if machine.spot is not None and accelerator.spot is not None:
        spot = machine.spot + count * accelerator.spot
    return _Node(
        f"{deployment.machine_type} + {count} x {gpu}",
        machine.on_demand + count * accelerator.on_demand,
        spot,
    )


def _no_machine_price(machine_type: str, region: str, table: PriceTable) -> str:
    return (
        f"no price for {machine_type} in {region} (the price table covers "
        f"{', '.join(table.regions) or 'nothing'}): set "
        f"service_levels.price_overrides['machine:{machine_type}'] (USD per node-hour)"
    )


def _replicas(cfg: ServiceLevelConfig, deployment: DeploymentConfig, throughput_rps: float) -> int:
    """Replicas that carry the target load, each at most at its measured throughput."""
    per_replica = throughput_rps
    if cfg.replica_requests_per_second is not None:
        per_replica = min(per_replica, cfg.replica_requests_per_second)
    # A hair below the ratio so that 100/50 stays 2 despite float rounding.
    needed = math.ceil(cfg.requests_per_second / per_replica - 1e-9)
    return max(needed, deployment.min_replicas, 1)


def _costs(
    node_per_hour: float, replicas: int, requests_per_second: float, prefix: str
) -> dict[str, float | None]:
    per_hour = node_per_hour * replicas
    return {
        f"{prefix}cost_per_hour": per_hour,
        f"{prefix}cost_per_month": per_hour * HOURS_PER_MONTH,
        f"{prefix}cost_per_million": per_hour / (requests_per_second * 3600.0) * 1e6,
    }


def _cheapest(rows: Sequence[CandidateCost]) -> str | None:
    eligible = [row for row in rows if row.meets_targets and row.effective_cost_per_hour is not None]
    if not eligible:
        return None
    # Equal cost (same machine, same replica count): the lower p95 latency wins.
    return min(eligible, key=lambda row: (row.effective_cost_per_hour or 0.0, row.p95_ms)).name


def _report_notes(
    rows: Sequence[CandidateCost],
    cfg: ServiceLevelConfig,
    deployment: DeploymentConfig,
    table: PriceTable,
    cpu_machine: str,
    cpu_machine_why: str,
) -> list[str]:
    notes = []
    cpu_devices = sorted({row.measured_on for row in rows if is_cpu(row.measured_on)})
    if cpu_devices:
        notes.append(
            f"Figures measured on {', '.join(cpu_devices)} are priced as Vertex AI {cpu_machine} "
            f"replicas ({cpu_machine_why}); a replica of that type may serve faster or slower than the "
            "machine measured."
        )
    gpu = deployment.accelerator_type
    if gpu and not any(row.measured_on == gpu for row in rows):
        notes.append(
            f"No candidate was measured on {gpu}: the configured deployment ({deployment.machine_type} "
            f"with {deployment.accelerator_count} x {gpu}) is not costed, and no figure is extrapolated "
            "to it from other hardware. Run the build-and-benchmark stage on that GPU to cost it."
        )
    notes.append(
        f"Replicas = ceil({cfg.requests_per_second:g} predictions/s / measured predictions/s per "
        "replica at the batch size shown), at least deployment.min_replicas and 1; a month is 730 "
        "hours; cost per million predictions is at the target load."
    )
    notes.append(
        "Latencies are of one inference call at the batch size shown, measured back to back after warm-up; "
        "queueing under load is not included."
    )
    source = (
        f"Prices: Vertex AI node-hour snapshot taken {table.taken}, a snapshot to be overridden "
        f"({table.source})."
    )
    if table.overrides:
        source += " Overridden by service_levels.price_overrides: " + ", ".join(
            f"{key}=${value:g}/h" for key, value in sorted(table.overrides.items())
        )
        source += "."
    notes.append(source)
    return notes


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _money(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"${value:,.4f}" if value < 10 else f"${value:,.2f}"
