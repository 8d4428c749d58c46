"""The cost table from served figures: replicas from Triton's throughput at the latency target.

The selection stage prices candidates from back-to-back in-process calls; the serve check
measures the packaged model through Triton under concurrent load (see
:mod:`vxdeploy.components.package.serve_sweep`). This prices those served figures with the same cost
model: each sweep point is one operating point whose "batch size" is the number of clients in
flight, its p50/p95 the latency a client sees (queueing included) and its throughput what one
Triton replica served. :func:`vxdeploy.components.cost.service_levels.operating_point` picks the
highest-throughput point within the p50/p95 targets, and the replicas carry
``service_levels.requests_per_second`` at that throughput.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from vxdeploy.components.common.config import DeploymentConfig, ServiceLevelConfig
from vxdeploy.components.cost.estimate import CostReport, estimate_costs
from vxdeploy.components.cost.measured import MeasuredCandidate
from vxdeploy.components.cost.prices import PriceTable


class ServedPoint(Protocol):
    """What the cost model reads from one sweep point."""

    @property
    def batching(self) -> str: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def measured(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p95_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...
    @property
    def throughput_rps(self) -> float: ...


def served_candidate_name(kind: str, batching: str) -> str:
    """The cost-table row name of one batching mode of the served model."""
    return f"{kind} via Triton (dynamic batching {batching})"


def served_points(points: Sequence[ServedPoint], kind: str, measured_on: str) -> list[MeasuredCandidate]:
    """The sweep's points as cost-model points: one candidate per batching mode, clients as batch."""
    return [
        MeasuredCandidate(
            name=served_candidate_name(kind, p.batching),
            kind=kind,
            measured_on=measured_on,
            batch_size=p.concurrency,
            p50_ms=p.p50_ms,
            p95_ms=p.p95_ms,
            p99_ms=p.p99_ms,
            throughput_rps=p.throughput_rps,
        )
        for p in points
        if p.measured and not p.errors and p.throughput_rps > 0
    ]


def served_cost(
    points: Sequence[ServedPoint],
    *,
    kind: str,
    measured_on: str,
    cfg: ServiceLevelConfig,
    deployment: DeploymentConfig,
    prices: PriceTable | None = None,
) -> CostReport | None:
    """The cost report of the served model, batching off and on; None when no point was measured.

    Args:
        points: The serve check's sweep points.
        kind: The served candidate's kind.
        measured_on: Where Triton ran (``cpu:...`` or a Vertex AI accelerator name).
        cfg: The service-level targets and target load.
        deployment: Where the model will be served.
        prices: The price table; None loads the shipped snapshot.
    """
    measured = served_points(points, kind, measured_on)
    if not measured:
        return None
    report = estimate_costs(measured, cfg, deployment, prices)
    note = (
        "Served figures: measured through Triton with concurrent one-sample requests; the batch column "
        "is the number of clients in flight, latencies include Triton's queueing, and replicas carry "
        "the target load at the served throughput of the highest-throughput point within the latency "
        "targets."
    )
    # The in-process figures' caveat (no queueing) is what served figures do not have.
    kept = tuple(n for n in report.notes if not n.startswith("Latencies are of one inference call"))
    return dataclasses.replace(report, notes=(note, *kept))
