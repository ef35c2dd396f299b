"""Confidence intervals for accuracies.

The Wilson score interval behaves well at small n and at 0% or 100%, where the
normal ("Wald") interval collapses to a point.

>>> lo, hi = wilson_interval(5, 10)
>>> round(lo, 4), round(hi, 4)
(0.2366, 0.7634)
>>> wilson_interval(0, 0)
(0.0, 1.0)
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for ``correct`` successes out of ``n`` (95% by default).

    ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    if n < 0 or correct < 0 or correct > n:
        raise ValueError(f"wilson_interval(correct={correct}, n={n}); expected 0 <= correct <= n.")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_row(correct: int, n: int) -> dict[str, float | int]:
    """``{correct, n, accuracy, ci_low, ci_high}`` (accuracy 0 when n is 0)."""
    lo, hi = wilson_interval(correct, n)
    return {"correct": int(correct), "n": int(n), "accuracy": correct / n if n else 0.0, "ci_low": lo, "ci_high": hi}
