"""Service levels and cost of a generation model: replicas and cost per 1,000 generations.

A generation model's unit of work is one generation (a caption streamed token by token), so its
targets are on the time to first token (``service_levels.ttft_p95_ms``) and on the whole generation
(``generation_p50_ms`` / ``generation_p95_ms``, default P50 < 200 ms, P95 < 500 ms), and
``service_levels.requests_per_second`` is read as generations per second. Each measured point is
one concurrency level (clients streaming at once, e.g. the serve check's 1/2/4): its whole-generation
p50/p95 and the generations per second one replica completed. The same cost model as every other
candidate (:func:`vxdeploy.components.cost.estimate.estimate_costs`) then picks the
highest-throughput point within the targets and the replicas that carry the target load; points whose
TTFT misses its target are not operating points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vxdeploy.components.common.config import DeploymentConfig, ServiceLevelConfig
from vxdeploy.components.common.errors import InternalError
from vxdeploy.components.cost.estimate import CandidateCost, CostReport, estimate_costs
from vxdeploy.components.cost.measured import MeasuredCandidate
from vxdeploy.components.cost.prices import PriceTable


@dataclass(frozen=True)
class GenerationPoint:
    """Whole generations measured at one concurrency level on one replica.

    Attributes:
        concurrency: Clients streaming at once.
        ttft_p50_ms: Median time to first token.
        ttft_p95_ms: 95th percentile of time to first token.
        p50_ms: Median time of a whole generation.
        p95_ms: 95th percentile of a whole generation.
        p99_ms: 99th percentile of a whole generation (p95 when not measured).
        generations_per_s: Generations the replica completed per second.
        tokens_per_s: Median decode speed per stream, for the report (None: not measured).
    """

    concurrency: int
    ttft_p50_ms: float
    ttft_p95_ms: float
    p50_ms: float
    p95_ms: float
    generations_per_s: float
    p99_ms: float | None = None
    tokens_per_s: float | None = None

    @classmethod
    def from_level(cls, level: Mapping[str, Any]) -> GenerationPoint:
        """One concurrency level of the generation serve check (its ``details.levels`` entries).

        Reads ``concurrency``, ``p50_ms``, ``p95_ms``, ``generations_per_s`` and ``ttft_p95_ms``
        (``ttft_p50_ms`` when the level has no p95: then the TTFT target is checked on the median).
        """
        ttft_p50 = float(level["ttft_p50_ms"])
        return cls(
            concurrency=int(level["concurrency"]),
            ttft_p50_ms=ttft_p50,
            ttft_p95_ms=float(level.get("ttft_p95_ms", ttft_p50)),
            p50_ms=float(level["p50_ms"]),
            p95_ms=float(level["p95_ms"]),
            generations_per_s=float(level["generations_per_s"]),
            p99_ms=float(level["p99_ms"]) if "p99_ms" in level else None,
            tokens_per_s=float(level["tokens_per_s"]) if "tokens_per_s" in level else None,
        )

    def __post_init__(self) -> None:
        figures = (self.ttft_p50_ms, self.ttft_p95_ms, self.p50_ms, self.p95_ms)
        if self.concurrency < 1 or not all(math.isfinite(v) and v >= 0 for v in figures):
            raise InternalError(f"generation point needs concurrency >= 1 and finite latencies, got {self!r}")


@dataclass(frozen=True)
class GenerationCost:
    """What serving the generation model costs at the target load of generations per second.

    Attributes:
        row: The cost model's row (replicas, cost per hour and month; its ``cost_per_million`` is per
            million generations).
        report: The whole cost report (price snapshot, notes).
        point: The operating point (the concurrency its replicas run at).
        missed: Every target missed (TTFT, whole generation, throughput, cost); empty when all are met.
    """

    row: CandidateCost
    report: CostReport
    point: GenerationPoint
    missed: tuple[str, ...]

    @property
    def meets_targets(self) -> bool:
        return not self.missed

    @property
    def replicas(self) -> int:
        return self.row.replicas

    @property
    def cost_per_1000_generations(self) -> float | None:
        """USD per 1,000 generations at the target load (spot when priced on spot); None if not priced."""
        per_million = self.row.effective_cost_per_million
        return per_million / 1000 if per_million is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.point.concurrency,
            "ttft_p95_ms": self.point.ttft_p95_ms,
            "p50_ms": self.point.p50_ms,
            "p95_ms": self.point.p95_ms,
            "generations_per_s": self.point.generations_per_s,
            "tokens_per_s": self.point.tokens_per_s,
            "replicas": self.replicas,
            "priced_as": self.row.priced_as,
            "cost_per_hour": self.row.effective_cost_per_hour,
            "cost_per_1000_generations": self.cost_per_1000_generations,
            "meets_targets": self.meets_targets,
            "missed": list(self.missed),
            "notes": [*self.row.notes, *self.report.notes],
        }

    def to_markdown(self) -> str:
        """A short table for the report."""
        cost = self.cost_per_1000_generations
        hourly = self.row.effective_cost_per_hour
        lines = [
            "| concurrency | TTFT p95 ms | generation p50 ms | p95 ms | generations/s per replica | replicas "
            "| priced as | USD/h | USD per 1,000 generations |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {self.point.concurrency} | {self.point.ttft_p95_ms:.1f} | {self.point.p50_ms:.1f} | "
            f"{self.point.p95_ms:.1f} | {self.point.generations_per_s:.1f} | {self.replicas} | "
            f"{self.row.priced_as or 'not priced'} | {'-' if hourly is None else f'{hourly:.4f}'} | "
            f"{'-' if cost is None else f'{cost:.6f}'} |",
        ]
        if self.missed:
            lines += ["", "Targets missed: " + "; ".join(self.missed)]
        return "\n".join(lines)


def generation_cost(
    points: Sequence[GenerationPoint],
    *,
    name: str,
    kind: str,
    measured_on: str,
    cfg: ServiceLevelConfig,
    deployment: DeploymentConfig,
    prices: PriceTable | None = None,
) -> GenerationCost | None:
    """Replicas and cost per 1,000 generations from measured generation figures.

    Args:
        points: One per concurrency level (e.g. the serve check's), on one replica.
        name: The row's name (e.g. ``"generator via Triton"``).
        kind: The served candidate kind of the encoder (what decides the hardware priced).
        measured_on: Where the figures were measured (``cpu:...`` or a Vertex AI accelerator name).
        cfg: The service-level section (TTFT and whole-generation targets; target generations/s).
        deployment: Where the model will be served.
        prices: The price table; None loads the shipped snapshot.

    Returns:
        The cost at the operating point, or None when no point completed a generation.
    """
    usable = [p for p in points if p.generations_per_s > 0]
    if not usable:
        return None
    ttft_target = cfg.ttft_p95_ms
    within_ttft = [p for p in usable if ttft_target is None or p.ttft_p95_ms <= ttft_target]
    candidates = within_ttft or usable
    # The generation targets take the place of the per-call ones in the shared cost model.
    generation_cfg = cfg.model_copy(
        update={"p50_latency_ms": cfg.generation_p50_ms, "p95_latency_ms": cfg.generation_p95_ms}
    )
    measured = [
        MeasuredCandidate(
            name=name,
            kind=kind,
            measured_on=measured_on,
            batch_size=p.concurrency,
            p50_ms=p.p50_ms,
            p95_ms=p.p95_ms,
            p99_ms=p.p99_ms if p.p99_ms is not None else p.p95_ms,
            throughput_rps=p.generations_per_s,
        )
        for p in candidates
    ]
    report = estimate_costs(measured, generation_cfg, deployment, prices)
    row = report.rows[0]
    point = next(p for p in candidates if p.concurrency == row.batch_size)
    missed = [
        m.replace("service_levels.p50_latency_ms", "service_levels.generation_p50_ms") for m in row.missed
    ]
    missed = [m.replace("service_levels.p95_latency_ms", "service_levels.generation_p95_ms") for m in missed]
    if not within_ttft and ttft_target is not None:
        best = min(usable, key=lambda p: p.ttft_p95_ms)
        missed.insert(
            0,
            f"service_levels.ttft_p95_ms={ttft_target:g}: the fastest first token measured is "
            f"{best.ttft_p95_ms:.1f} ms (p95, {best.concurrency} concurrent streams)",
        )
    return GenerationCost(row=row, report=report, point=point, missed=tuple(missed))


__all__ = ["GenerationCost", "GenerationPoint", "generation_cost"]
