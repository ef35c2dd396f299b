"""Mean residual of each source layer over a run's own training examples (for centred injection).

A residual vector of a small LM is mostly a component every token shares (SmolLM2-135M:
channels 507 and 247 hold ~70% of the energy at 50% depth). Norm-matched injection keeps only
the direction, so what distinguishes one input from another arrives as a few percent of the
injected norm. With ``model.center_activations = true`` the trainer measures each source
layer's mean over the examples' own activation positions once, before training; the oracle
stores it (``OracleConfig.activation_means``) and subtracts it from every vector it injects,
in training and at inference alike. With ``model.standardize_activations = true`` it also
measures each channel's spread (``OracleConfig.activation_scales``) and divides by it, so the
few high-variance channels stop drowning the rest (on the cities truth task the class
difference grows from ~9% of the injected vector's norm, centred, to ~17%, standardised).

>>> import torch
>>> from activation_oracles.tiny import tiny_model
>>> from activation_oracles.training.example import TrainingExample
>>> from activation_oracles.training.centring import activation_means
>>> m = tiny_model()
>>> ex = TrainingExample((5, 6, 7, 8), (1, 2), 50.0, "q?", "a", "s")
>>> means = activation_means(m, [ex], n=1)
>>> sorted(means), tuple(means[m.n_layers // 2].shape) == (m.d_model,)
([2], True)
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

import torch

from ..errors import DataError
from ..hooks import capture_residuals
from ..models import as_model
from .example import TrainingExample

OUTLIER_RATIO = 5.0  # positions above this multiple of the median norm are attention sinks
SCALE_FLOOR = 0.1  # no channel's scale below this fraction of the median channel's: dividing by ~0 amplifies noise


def activation_means(model: Any, examples: Iterable[TrainingExample], *, n: int = 256,
                     progress: bool | None = None) -> dict[int, torch.Tensor]:
    """Mean vector of each source layer over the activation positions of the first ``n`` examples.

    Positions whose norm exceeds ``OUTLIER_RATIO`` (5) times the layer's median norm (attention
    sinks) are left out. Layers are ``int(n_layers * layer_percent / 100)``, as the trainer computes them. The
    caller decides the adapter state and autocast; this reads ``model`` under ``no_grad``.
    """
    return {layer: robust_mean(x) for layer, x in source_activations(model, examples, n=n, progress=progress).items()}


def activation_stats(model: Any, examples: Iterable[TrainingExample], *, n: int = 256,
                     progress: bool | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``(mean, scale)`` of each source layer over the same positions as :func:`activation_means`."""
    return {layer: (robust_mean(x), robust_scale(x))
            for layer, x in source_activations(model, examples, n=n, progress=progress).items()}


def source_activations(model: Any, examples: Iterable[TrainingExample], *, n: int = 256,
                       progress: bool | None = None) -> dict[int, torch.Tensor]:
    """Every activation vector the first ``n`` examples read, stacked per source layer (float32, CPU).

    One forward pass per example (~10-30 s for 256 on a CPU), hence ``progress``: a bar with an
    ETA (``None``: the ambient default of :mod:`activation_oracles.progress`, off in the library).
    """
    from activation_oracles.progress import progress as progress_bar

    m = as_model(model)
    rows: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for ex in progress_bar(islice(examples, n), "activation statistics", total=n, enabled=progress,
                               unit="example"):
            layer = int(m.n_layers * ex.layer_percent / 100)
            ids = torch.tensor([list(ex.context_ids)], device=m.device)
            with capture_residuals(m, [layer], positions=[list(ex.positions)]) as cache:
                m.hf(input_ids=ids, use_cache=False)
            rows.setdefault(layer, []).append(cache[layer][0].float().cpu())
    if not rows:
        raise DataError("no training examples to measure activation means on; the mixture yielded nothing.")
    return {layer: torch.cat(rows[layer]) for layer in sorted(rows)}


def robust_mean(x_ND: torch.Tensor, *, max_ratio: float = OUTLIER_RATIO) -> torch.Tensor:
    """Mean of the rows of ``x_ND`` whose norm is at most ``max_ratio`` times the median norm.

    Why: attention-sink positions (the first token, some special tokens) have norms ~100x
    the others on SmolLM2 (~25,000 vs 150-200 at 50% depth); a handful of them among thousands
    of ordinary positions would make the plain mean a copy of the sink vector.
    """
    return _ordinary_rows(x_ND, max_ratio).mean(0)


def robust_scale(x_ND: torch.Tensor, *, max_ratio: float = OUTLIER_RATIO, floor: float = SCALE_FLOOR) -> torch.Tensor:
    """Per-channel standard deviation of the same rows as :func:`robust_mean`, at least ``floor`` x the median.

    One row alone has no spread: every channel then gets scale 1 (centring only).
    """
    kept = _ordinary_rows(x_ND, max_ratio)
    if len(kept) < 2:
        return torch.ones(x_ND.shape[-1])
    sd = kept.std(0)
    # 1e-6: a layer whose channels never vary (median spread 0) still gets a positive scale
    return sd.clamp_min(max(floor * sd.median().item(), 1e-6))


def _ordinary_rows(x_ND: torch.Tensor, max_ratio: float) -> torch.Tensor:
    norms = x_ND.norm(dim=-1)
    return x_ND[norms <= max_ratio * norms.median()]
