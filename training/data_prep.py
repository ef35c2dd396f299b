"""What the training data needs before the first step: on-policy rollouts, activation statistics, and a
look that at least one example fits the limits.

Each is a function of what it reads (the stream, the target, a context that switches the oracle's
adapter off), so the trainer's constructor stays cheap and calls none of them: :meth:`~.trainer.Trainer.start` does.

>>> from activation_oracles.tiny import tiny_model
>>> from activation_oracles.training.config import apply_overrides
>>> from activation_oracles.training.presets import preset
>>> from activation_oracles.training.source_registry import make_example_stream
>>> cfg = preset("tiny")
>>> target = tiny_model()
>>> factory = make_example_stream(cfg.data.sources, target.tokenizer, cfg.data.layer_percents, 0, model=target)
>>> means, scales = activation_statistics(target, factory, standardize=True, n=8)
>>> sorted(means) == sorted({target.layer_at(p) for p in cfg.data.layer_percents}), len(means[1]) == target.d_model
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

from ..errors import DataError
from ..models import Model
from .batching import BatchStream

ContextFactory = Callable[[], AbstractContextManager[Any]]

STATS_EPOCH = 2 * 10 ** 6
"""The stream's epoch the statistics are measured on: one of its own (training reads epochs 0, 1, ...;
the held-out set 1e6 + epoch)."""


def generate_rollouts(factory: Any, *, adapters_off: ContextFactory | None = None, progress: bool = False,
                      info: Callable[[str], None] = lambda msg: None) -> None:
    """Generate (and cache) every on-policy source's rollouts in ``factory``'s mixture, inside ``adapters_off()``
    when the target is the oracle's own base, so they never see the adapter."""
    for builder in getattr(factory, "builders", ()):
        source = getattr(builder, "source", None)
        if source is not None and hasattr(source, "rollouts"):
            info(f"generating {getattr(source, 'n_rollouts', '?')} on-policy rollouts from the target...")
            with adapters_off() if adapters_off is not None else nullcontext():
                for _ in source.rollouts(progress=progress):
                    pass


def activation_statistics(target: Model, factory: Any, *, standardize: bool, n: int = 256,
                          adapters_off: ContextFactory | None = None, autocast: ContextFactory = nullcontext,
                          progress: bool = False, info: Callable[[str], None] = lambda msg: None
                          ) -> tuple[dict[int, list[float]], dict[int, list[float]] | None]:
    """``(means, scales)`` of each source layer over ``n`` examples of the mixture (``scales`` only when
    ``standardize``), read as the target pass reads them: adapter off, same precision."""
    from .centring import activation_stats

    info(f"measuring each source layer's mean activation ({n} examples of the mixture)...")
    with ExitStack() as stack:
        if adapters_off is not None:
            stack.enter_context(adapters_off())
        stack.enter_context(autocast())
        stats = activation_stats(target, factory(STATS_EPOCH), n=n, progress=progress)
    info("mean norms: " + ", ".join(f"layer {layer} {mean.norm():.1f}" for layer, (mean, _) in stats.items()))
    means = {layer: mean.tolist() for layer, (mean, _) in stats.items()}
    scales = {layer: scale.tolist() for layer, (_, scale) in stats.items()} if standardize else None
    return means, scales


def check_data_fits(factory: Any, stream: BatchStream, max_length: int, max_positions: int) -> None:
    """Raise :class:`DataError` when no example of epoch 0 passes the stream's filters (e.g. ``data.max_length=1``).

    The batch stream finds out only when it builds its first batch, after config.toml and the
    logs are written; a look at the first examples (normally the very first one fits, so this
    costs one example) tells before the run folder exists.
    """
    skipped: dict[str, int] = {}
    for ex in factory(0):
        reason = stream._reject(ex)
        if reason is None:
            return
        skipped[reason] = skipped.get(reason, 0) + 1
        if sum(skipped.values()) >= stream.give_up_after:
            break
    if not skipped:
        return  # an empty mixture: the stream's own error says so
    if skipped.get("context_too_long"):
        raise DataError(f"every example's context is longer than data.max_length={max_length} tokens (of "
                        f"the first {sum(skipped.values())} examples, skipped: {skipped}); raise data.max_length "
                        "or shorten the contexts (e.g. the builders' max_context_tokens). Nothing was written.")
    raise DataError(f"no example passed the filters (of the first {sum(skipped.values())}, skipped: {skipped}); "
                    f"raise data.max_positions (now {max_positions}) or data.max_length (now {max_length}), "
                    "or check the data sources. Nothing was written.")
