"""The one label rule: what vxdeploy writes into Google Cloud labels, and the keys it uses."""

from __future__ import annotations

import hashlib
import re

MANAGED_BY_KEY = "managed-by"
MANAGED_BY_VALUE = "vxdeploy"
RUN_ID_KEY = "vxdeploy-run-id"
CHECKSUM_KEY = "vxdeploy-artifact-sha256"


def label_value(text: str) -> str:
    """``text`` as a valid label value (lowercase letters, digits, ``_``, ``-``; at most 63).

    Long values keep a readable head and a hash of the whole, so two different run ids never
    collide after truncation.
    """
    value = re.sub(r"[^a-z0-9_-]", "-", text.lower())
    if len(value) <= 63:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{value[:50]}-{digest}"
