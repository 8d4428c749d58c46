"""Figures as a person reads them: one formatting rule for the terminal, the reports and stage sentences."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["plain_numbers", "readable"]


def readable(value: Any) -> str:
    """A figure as a person reads it: thousands separators, three significant figures, no ``e+04``.

    Only magnitudes below 0.001 (e.g. a parity difference of ``5.7e-06``) keep scientific notation,
    the form in which such a figure is read.
    """
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        size = abs(value)
        if size == 0:
            return "0"
        if size >= 1000:
            return f"{value:,.0f}"
        if size >= 100:
            return f"{value:.1f}".removesuffix(".0")
        if size >= 0.001:
            return f"{value:.3g}"
        return f"{value:.2g}"
    if isinstance(value, list | tuple):
        return ", ".join(readable(v) for v in value) or "-"
    return str(value)


_SCIENTIFIC = re.compile(r"\b(\d+(?:\.\d+)?)e\+(\d+)\b")


def plain_numbers(text: str) -> str:
    """``1.466e+04 samples/s`` in a stage's sentence as ``14,660 samples/s``."""
    return _SCIENTIFIC.sub(lambda m: readable(float(m.group(0))), text)
