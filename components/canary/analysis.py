"""One canary analysis: error rate and p99 latency against absolute limits and against the baseline.

A generation model's canary is also checked on what it generates: the agreement of its captions with
the reference captions on eval images (what the serving model generates for them), its p95 time to
first token, and its TTFT and decode speed relative to the baseline.

The Flagger / Argo Rollouts rule holds: a window without data is a failed check, never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vxdeploy.components.canary.metrics import WindowStats
from vxdeploy.components.common.config import CanaryConfig


@dataclass(frozen=True)
class Check:
    """One comparison: the measured value, the limit and the verdict."""

    name: str
    value: float | None
    limit: float | None
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Analysis:
    """All checks of one analysis window."""

    canary: WindowStats
    baseline: WindowStats | None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [c.detail for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "canary": self.canary.to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "checks": [c.to_dict() for c in self.checks],
        }


def analyse(
    canary: WindowStats,
    baseline: WindowStats | None,
    cfg: CanaryConfig,
    *,
    baseline_label: str = "baseline",
) -> Analysis:
    """Check one window of the canary against the configured limits and the baseline.

    Args:
        canary: The canary's figures.
        baseline: The baseline's figures to compare with (its current window, or its last one
            when it takes no traffic any more); None skips the relative checks.
        cfg: Limits: ``max_error_rate``, ``max_p99_latency_ms``, ``max_error_rate_increase``,
            ``max_latency_ratio``, ``min_requests``.
        baseline_label: How the report names the baseline window.
    """
    need = max(1, cfg.min_requests)
    checks: list[Check] = []
    has_data = canary.requests >= need
    checks.append(
        Check(
            "canary_requests",
            float(canary.requests),
            float(need),
            has_data,
            f"canary served {canary.requests} requests (need >= {need})"
            + ("" if has_data else ": no data is not a pass" + (f" ({canary.note})" if canary.note else "")),
        )
    )
    rate = canary.error_rate
    if has_data and rate is not None:
        ok = rate <= cfg.max_error_rate
        checks.append(
            Check(
                "canary_error_rate",
                rate,
                cfg.max_error_rate,
                ok,
                f"canary error rate {rate:.4f} {'<=' if ok else '>'} limit {cfg.max_error_rate:.4f}",
            )
        )
    p99 = canary.p99_latency_ms
    if has_data:
        if p99 is None:
            checks.append(
                Check(
                    "canary_p99_latency_ms",
                    None,
                    cfg.max_p99_latency_ms,
                    False,
                    "canary has no latency data: no data is not a pass",
                )
            )
        else:
            ok = p99 <= cfg.max_p99_latency_ms
            checks.append(
                Check(
                    "canary_p99_latency_ms",
                    p99,
                    cfg.max_p99_latency_ms,
                    ok,
                    f"canary p99 {p99:.1f} ms {'<=' if ok else '>'} limit {cfg.max_p99_latency_ms:.1f} ms",
                )
            )
    if has_data and canary.generation:
        checks += _generation_checks(canary, cfg)
    if baseline is None or not has_data:
        return Analysis(canary, baseline, checks)
    base_ok = baseline.requests >= need
    if not base_ok:
        checks.append(
            Check(
                "baseline_requests",
                float(baseline.requests),
                float(need),
                False,
                f"{baseline_label} served {baseline.requests} requests (need >= {need}): "
                "cannot compare, and no data is not a pass",
            )
        )
        return Analysis(canary, baseline, checks)
    base_rate = baseline.error_rate or 0.0
    if rate is not None:
        increase = rate - base_rate
        ok = increase <= cfg.max_error_rate_increase
        checks.append(
            Check(
                "error_rate_increase",
                increase,
                cfg.max_error_rate_increase,
                ok,
                f"canary error rate {rate:.4f} vs {baseline_label} {base_rate:.4f}: increase "
                f"{increase:+.4f} {'<=' if ok else '>'} {cfg.max_error_rate_increase:.4f}",
            )
        )
    base_p99 = baseline.p99_latency_ms
    if p99 is not None:
        if base_p99 is None:
            checks.append(
                Check(
                    "latency_ratio",
                    None,
                    cfg.max_latency_ratio,
                    False,
                    f"{baseline_label} has no latency data: cannot compare, and no data is not a pass",
                )
            )
        else:
            ratio = p99 / base_p99 if base_p99 > 0 else (1.0 if p99 <= 0 else float("inf"))
            ok = ratio <= cfg.max_latency_ratio
            checks.append(
                Check(
                    "latency_ratio",
                    ratio,
                    cfg.max_latency_ratio,
                    ok,
                    f"canary p99 {p99:.1f} ms vs {baseline_label} {base_p99:.1f} ms: ratio {ratio:.2f} "
                    f"{'<=' if ok else '>'} {cfg.max_latency_ratio:.2f}",
                )
            )
    if canary.generation and baseline.generation:
        checks += _generation_relative_checks(canary, baseline, cfg, baseline_label)
    return Analysis(canary, baseline, checks)


def _generation_checks(canary: WindowStats, cfg: CanaryConfig) -> list[Check]:
    """What a generation model's canary generates: caption agreement and time to first token."""
    checks: list[Check] = []
    agreement = canary.output_agreement
    if canary.agreement_expected or agreement is not None:
        if agreement is None:
            checks.append(
                Check(
                    "output_agreement",
                    None,
                    cfg.min_output_agreement,
                    False,
                    "canary generated no captions to compare with the reference: no data is not a pass"
                    + (f" ({canary.note})" if canary.note else ""),
                )
            )
        else:
            ok = agreement >= cfg.min_output_agreement
            checks.append(
                Check(
                    "output_agreement",
                    agreement,
                    cfg.min_output_agreement,
                    ok,
                    f"canary captions agree with the reference on {agreement:.1%} of eval images "
                    f"{'>=' if ok else '<'} {cfg.min_output_agreement:.1%}",
                )
            )
    ttft = canary.ttft_p95_ms
    if ttft is None:
        checks.append(
            Check(
                "canary_ttft_p95_ms",
                None,
                cfg.max_ttft_ms,
                False,
                "canary has no time-to-first-token data: no data is not a pass",
            )
        )
    else:
        ok = ttft <= cfg.max_ttft_ms
        checks.append(
            Check(
                "canary_ttft_p95_ms",
                ttft,
                cfg.max_ttft_ms,
                ok,
                f"canary p95 time to first token {ttft:.1f} ms {'<=' if ok else '>'} limit "
                f"{cfg.max_ttft_ms:.1f} ms ({canary.generation_source or 'unknown source'})",
            )
        )
    return checks


def _generation_relative_checks(
    canary: WindowStats, baseline: WindowStats, cfg: CanaryConfig, baseline_label: str
) -> list[Check]:
    """TTFT and decode speed against the baseline's, within ``max_latency_ratio`` (when both measured)."""
    checks: list[Check] = []
    if canary.ttft_p95_ms is not None and baseline.ttft_p95_ms:
        ratio = canary.ttft_p95_ms / baseline.ttft_p95_ms
        ok = ratio <= cfg.max_latency_ratio
        checks.append(
            Check(
                "ttft_ratio",
                ratio,
                cfg.max_latency_ratio,
                ok,
                f"canary p95 TTFT {canary.ttft_p95_ms:.1f} ms vs {baseline_label} {baseline.ttft_p95_ms:.1f} "
                f"ms: ratio {ratio:.2f} {'<=' if ok else '>'} {cfg.max_latency_ratio:.2f}",
            )
        )
    if canary.tokens_per_s is not None and baseline.tokens_per_s:
        # Slower decoding is the latency ratio seen per token.
        ratio = baseline.tokens_per_s / canary.tokens_per_s if canary.tokens_per_s > 0 else float("inf")
        ok = ratio <= cfg.max_latency_ratio
        checks.append(
            Check(
                "tokens_per_s_ratio",
                ratio,
                cfg.max_latency_ratio,
                ok,
                f"canary decodes {canary.tokens_per_s:.1f} tokens/s vs {baseline_label} "
                f"{baseline.tokens_per_s:.1f}: slowdown {ratio:.2f} {'<=' if ok else '>'} "
                f"{cfg.max_latency_ratio:.2f}",
            )
        )
    return checks
