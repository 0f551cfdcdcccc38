"""The report's metrics object ``M``: the distribution's, plus a 95 % Wilson score interval."""

from __future__ import annotations

import math
from typing import Any

from csatdist.distribution import Counts, metrics

#: The two-sided 95 % quantile of the standard normal distribution (EXTENSIONS.md section 7).
Z_95 = 1.959963984540054
ZERO_COUNTS: Counts = (0, 0, 0, 0, 0)


def wilson_interval(positive: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``positive / total``; ``(0.0, 0.0)`` when
    ``total`` is 0.

    With ``n = total``, ``p = positive / n``::

        centre = (p + z²/(2n)) / (1 + z²/n)
        half   = z / (1 + z²/n) * sqrt(p(1 - p)/n + z²/(4n²))
        low, high = centre - half, centre + half

    computed in the equivalent form ``(2np + z² ∓ z·sqrt(z² + 4np(1 - p))) / (2(n + z²))``.
    The ends are exactly 0.0 when ``positive == 0`` and 1.0 when ``positive == total`` (the
    formula gives them up to rounding), and always within [0, 1].
    """
    if total <= 0:
        return 0.0, 0.0
    z2 = z * z
    spread = z * math.sqrt(z2 + 4 * positive * (total - positive) / total)
    denominator = 2 * (total + z2)
    low = 0.0 if positive == 0 else (2 * positive + z2 - spread) / denominator
    high = 1.0 if positive == total else (2 * positive + z2 + spread) / denominator
    return min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)


def report_metrics(counts: Counts) -> dict[str, Any]:
    """``M`` of CONTRACT.md section 2 plus ``csat_score_low`` and ``csat_score_high``."""
    body = metrics(counts)
    body["csat_score_low"], body["csat_score_high"] = wilson_interval(
        body["positive_answers"], body["total_answers"]
    )
    return body
