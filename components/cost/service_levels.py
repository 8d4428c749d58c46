"""Service-level checks: which candidates meet the latency targets on their measured figures.

A candidate meets the latency targets when one of its measured batch sizes has p50 and p95
within the targets (and, with ``replica_requests_per_second``, carries that load per replica).
Its replicas run at that batch size: of those that qualify, the one serving the most
predictions per second, so the fewest replicas carry the target load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vxdeploy.components.common.config import ServiceLevelConfig
from vxdeploy.components.common.errors import ServiceLevelError
from vxdeploy.components.cost.measured import MeasuredCandidate, group_by_candidate

if TYPE_CHECKING:
    from vxdeploy.components.cost.estimate import CostReport


@dataclass(frozen=True)
class OperatingPoint:
    """The batch size a candidate's replicas run at, and the targets missed there.

    Attributes:
        point: The measured figures at that batch size. For a candidate that misses a latency
            target it is the batch size closest to the targets (lowest p95), for the record.
        missed: One message per missed target, naming the target and the measured figure;
            empty when the candidate meets every latency and throughput target.
    """

    point: MeasuredCandidate
    missed: tuple[str, ...]


def operating_point(points: Sequence[MeasuredCandidate], cfg: ServiceLevelConfig) -> OperatingPoint:
    """Choose the batch size one candidate's replicas run at under the latency targets.

    Args:
        points: One candidate's measured points (one per batch size), at least one.
        cfg: The service-level targets.

    Returns:
        The fastest batch size meeting every latency target, or, when none does, the one
        closest to them with the targets it misses.
    """
    if not points:
        raise ValueError("operating_point needs at least one measured point")
    rate = cfg.replica_requests_per_second
    carrying = [p for p in points if rate is None or p.throughput_rps >= rate]
    if not carrying:
        fastest = max(points, key=lambda p: p.throughput_rps)
        return OperatingPoint(
            fastest,
            (
                f"service_levels.replica_requests_per_second={_num(rate)}: highest throughput measured "
                f"{_num(fastest.throughput_rps)} predictions/s per replica (batch {fastest.batch_size})",
            ),
        )
    within = [p for p in carrying if _within_latency(p, cfg)]
    if within:
        # Ties go to the smaller batch: same cost, lower latency.
        return OperatingPoint(max(within, key=lambda p: (p.throughput_rps, -p.batch_size)), ())
    closest = min(carrying, key=lambda p: (p.p95_ms, p.p50_ms, p.batch_size))
    scope = "" if rate is None else f" among batch sizes carrying {_num(rate)} predictions/s per replica"
    missed = []
    for target, figure in (("p50", cfg.p50_latency_ms), ("p95", cfg.p95_latency_ms)):
        if figure is None:
            continue
        best = _lowest_latency(carrying, target)
        if _latency(best, target) > figure:
            missed.append(
                f"service_levels.{target}_latency_ms={_num(figure)}: best {target} measured "
                f"{_ms(_latency(best, target))} (batch {best.batch_size}){scope}"
            )
    if not missed:
        # Each target is met at some batch size, but never both at the same one.
        figures = ", ".join(
            f"batch {p.batch_size}: p50 {_ms(p.p50_ms)} / p95 {_ms(p.p95_ms)}" for p in carrying
        )
        missed.append(
            f"service_levels.p50_latency_ms={_num(cfg.p50_latency_ms)} and "
            f"p95_latency_ms={_num(cfg.p95_latency_ms)} are not met at the same batch size ({figures})"
        )
    return OperatingPoint(closest, tuple(missed))


def check_service_levels(
    candidates: Sequence[MeasuredCandidate], cfg: ServiceLevelConfig
) -> dict[str, list[str]]:
    """Which latency and throughput targets each candidate misses on its measured figures.

    Args:
        candidates: Measured points, one per candidate per batch size.
        cfg: The service-level targets (``p50_latency_ms``, ``p95_latency_ms``,
            ``replica_requests_per_second``; the cost ceiling is checked by
            :func:`vxdeploy.components.cost.estimate.estimate_costs`, which knows prices).

    Returns:
        ``{candidate name: [missed target messages]}`` in first-seen order; an empty list means
        the candidate meets every latency target. Each message names the target and the best
        figure the candidate measured, e.g. ``"service_levels.p95_latency_ms=5: best p95
        measured 7.31 ms (batch 1)"``.
    """
    return {
        name: list(operating_point(points, cfg).missed)
        for name, points in group_by_candidate(candidates).items()
    }


def require_feasible(
    candidates: Sequence[MeasuredCandidate],
    cfg: ServiceLevelConfig,
    report: CostReport | None = None,
) -> list[str]:
    """Stop the run when no candidate meets the service-level targets.

    Args:
        candidates: Measured points, one per candidate per batch size.
        cfg: The service-level targets.
        report: The cost report of the same candidates; with it the cost ceiling
            (``max_cost_per_hour``) is enforced too.

    Returns:
        The names of the candidates meeting every target, in first-seen order.

    Raises:
        ServiceLevelError: No candidate meets every target. The message names each target no
            candidate meets with the best figure measured across all candidates, or, when each
            target is met by some candidate but none meets all, what each candidate misses.
    """
    groups = group_by_candidate(candidates)
    if report is not None:
        missed = {row.name: list(row.missed) for row in report.rows}
    else:
        missed = {name: list(operating_point(points, cfg).missed) for name, points in groups.items()}
    feasible = [name for name in groups if not missed.get(name)]
    if feasible:
        return feasible
    if not _has_targets(cfg):
        return list(groups)
    if not groups:
        raise ServiceLevelError(
            "no candidate was measured, so no service-level target can be met; check the selection stage's "
            "benchmark (every candidate failed or was skipped)"
        )
    parts = _targets_missed_by_all(groups, cfg, report)
    if not parts:
        parts = [f"{name}: {'; '.join(msgs)}" for name, msgs in missed.items() if msgs]
        head = "no candidate meets every service-level target at once"
    else:
        head = "no candidate meets the service-level targets"
    raise ServiceLevelError(
        f"{head}: " + "; ".join(parts) + ". Relax the target in service_levels or serve on faster hardware; "
        "the run stops before deployment."
    )


def _targets_missed_by_all(
    groups: dict[str, list[MeasuredCandidate]], cfg: ServiceLevelConfig, report: CostReport | None
) -> list[str]:
    """For each target no candidate meets, the best figure measured across all candidates."""
    everything = [p for points in groups.values() for p in points]
    rate = cfg.replica_requests_per_second
    carrying = [p for p in everything if rate is None or p.throughput_rps >= rate]
    parts: list[str] = []
    if rate is not None and not carrying:
        best = max(everything, key=lambda p: p.throughput_rps)
        parts.append(
            f"service_levels.replica_requests_per_second={_num(rate)}: the highest throughput measured is "
            f"{_num(best.throughput_rps)} predictions/s per replica ({_where(best)})"
        )
    for target, figure in (("p50", cfg.p50_latency_ms), ("p95", cfg.p95_latency_ms)):
        if figure is None or not carrying:
            continue
        best = _lowest_latency(carrying, target)
        if _latency(best, target) > figure:
            parts.append(
                f"service_levels.{target}_latency_ms={_num(figure)}: the lowest {target} measured is "
                f"{_ms(_latency(best, target))} ({_where(best)})"
            )
    if report is not None and cfg.max_cost_per_hour is not None:
        priced = [row for row in report.rows if row.effective_cost_per_hour is not None]
        if not priced:
            reasons = "; ".join(sorted({n for row in report.rows for n in row.notes if "not costed" in n}))
            parts.append(
                f"service_levels.max_cost_per_hour={_num(cfg.max_cost_per_hour)}: "
                "no candidate could be priced" + (f" ({reasons})" if reasons else "")
            )
        else:
            cheapest = min(priced, key=lambda row: row.effective_cost_per_hour or 0.0)
            if (cheapest.effective_cost_per_hour or 0.0) > cfg.max_cost_per_hour:
                parts.append(
                    f"service_levels.max_cost_per_hour={_num(cfg.max_cost_per_hour)}: the cheapest measured "
                    f"configuration costs ${cheapest.effective_cost_per_hour:.4f}/h ({cheapest.name}: "
                    f"{cheapest.replicas} x {cheapest.priced_as})"
                )
    return parts


def _has_targets(cfg: ServiceLevelConfig) -> bool:
    return any(
        v is not None
        for v in (
            cfg.p50_latency_ms,
            cfg.p95_latency_ms,
            cfg.replica_requests_per_second,
            cfg.max_cost_per_hour,
        )
    )


def _within_latency(point: MeasuredCandidate, cfg: ServiceLevelConfig) -> bool:
    return (cfg.p50_latency_ms is None or point.p50_ms <= cfg.p50_latency_ms) and (
        cfg.p95_latency_ms is None or point.p95_ms <= cfg.p95_latency_ms
    )


def _latency(point: MeasuredCandidate, target: str) -> float:
    return point.p50_ms if target == "p50" else point.p95_ms


def _lowest_latency(points: Sequence[MeasuredCandidate], target: str) -> MeasuredCandidate:
    return min(points, key=lambda p: (_latency(p, target), p.batch_size))


def _where(point: MeasuredCandidate) -> str:
    return f"{point.name}, batch {point.batch_size}, on {point.measured_on}"


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def _num(value: float | None) -> str:
    return "None" if value is None else f"{value:g}"
