"""Confidence intervals for accuracies, and AUROC with a bootstrap interval.

The Wilson score interval behaves well at small n and at 0% or 100%, where the
normal ("Wald") interval collapses to a point.

>>> lo, hi = wilson_interval(5, 10)
>>> round(lo, 4), round(hi, 4)
(0.2366, 0.7634)
>>> wilson_interval(0, 0)
(0.0, 1.0)

AUROC is the chance that a positive example scores above a negative one (ties count
half); its interval comes from a seeded percentile bootstrap, so it is reproducible:

>>> auroc([0.9, 0.8], [0.1, 0.2]), auroc([0.5], [0.5])
(1.0, 0.5)
>>> row = auroc_row([0.9, 0.6, 0.4, 0.8], [0.7, 0.4, 0.1, 0.2], n_boot=200, seed=0)
>>> row["ci_low"] <= row["auroc"] <= row["ci_high"], row["n_pos"], row["n_neg"]
(True, 4, 4)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

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
    # exact ends at 0% and 100% (the formula leaves float noise there)
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return lo, hi


def accuracy_row(correct: int, n: int) -> dict[str, float | int]:
    """``{correct, n, accuracy, ci_low, ci_high}`` (accuracy 0 when n is 0)."""
    lo, hi = wilson_interval(correct, n)
    return {"correct": int(correct), "n": int(n), "accuracy": correct / n if n else 0.0, "ci_low": lo, "ci_high": hi}


def auroc(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counting 1/2.

    This is the Mann-Whitney U statistic divided by ``len(pos) * len(neg)``, computed
    from average ranks in O(n log n) so that bootstrapping it stays cheap.
    """
    if not scores_pos or not scores_neg:
        raise ValueError(f"auroc needs at least one positive and one negative score; got {len(scores_pos)} "
                         f"positive and {len(scores_neg)} negative.")
    labelled = sorted([(float(s), 1) for s in scores_pos] + [(float(s), 0) for s in scores_neg])
    rank_sum_pos = 0.0
    i = 0
    while i < len(labelled):
        # A run of tied scores shares the mean of the ranks it spans (ranks are 1-based).
        j = i
        while j < len(labelled) and labelled[j][0] == labelled[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum_pos += mean_rank * sum(label for _, label in labelled[i:j])
        i = j
    n_pos, n_neg = len(scores_pos), len(scores_neg)
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def bootstrap_interval(statistic: Callable[..., float], *samples: Sequence[Any], n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of ``statistic(*samples)``.

    Each sample is resampled with replacement independently of the others (so the
    positives and negatives of an AUROC keep their sizes), from one ``random.Random(seed)``:
    the same call always gives the same interval.
    """
    if not samples or any(len(s) == 0 for s in samples):
        raise ValueError(f"bootstrap_interval needs one or more non-empty samples; got sizes "
                         f"{[len(s) for s in samples]}.")
    if n_boot < 1:
        raise ValueError(f"bootstrap_interval(n_boot={n_boot}); expected n_boot >= 1.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_interval(level={level}); expected 0 < level < 1.")
    rng = random.Random(seed)
    pools = [list(s) for s in samples]
    values = sorted(statistic(*(rng.choices(p, k=len(p)) for p in pools)) for _ in range(n_boot))
    tail = (1.0 - level) / 2
    return _quantile(values, tail), _quantile(values, 1.0 - tail)


def auroc_row(pos: Sequence[float], neg: Sequence[float], *, n_boot: int = 1000,
              seed: int = 0) -> dict[str, float | int]:
    """``{auroc, ci_low, ci_high, n_pos, n_neg}`` with a 95% percentile bootstrap interval."""
    lo, hi = bootstrap_interval(auroc, pos, neg, n_boot=n_boot, seed=seed)
    return {"auroc": auroc(pos, neg), "ci_low": lo, "ci_high": hi, "n_pos": len(pos), "n_neg": len(neg)}
