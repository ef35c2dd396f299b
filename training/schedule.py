"""Seeding and the learning-rate schedule a run uses (the trainer's and the organism fine-tune's).

>>> f = linear_schedule(warmup=2, total=10)
>>> [round(f(s), 3) for s in (0, 1, 2, 6, 10)]
[0.5, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """The lr factor of step ``step``: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor
