"""Optimiser steps as the trainer consumes them: micro-batches with their gather indices, built ahead.

:func:`make_step_input` shares one global batch out to this process, prepares and orders its
examples, cuts them into ``grad_accum`` micro-batches and collates each (:class:`MicroBatch`:
padded target and oracle inputs plus one gather index per source layer). :class:`StepSource`
yields them in order, built inline or a few steps ahead in a forked worker process.

>>> from activation_oracles.training.batching import BatchStream
>>> source = StepSource(BatchStream(lambda epoch: iter([]), batch_size=2), 0, lambda b: b, depth=0)
>>> source.depth
0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import BatchStream, OracleBatch, Prepared, TargetBatch, collate_oracle, collate_target, shard, split_micro
from .example import TrainingExample


@dataclass
class MicroBatch:
    """One forward/backward: collated target and oracle inputs plus where each item's vectors are.

    ``gather[layer] = (rows, cols)`` index the captured ``[batch, seq, d_model]`` residual of
    ``layer`` (padded columns); ``slices[i] = (layer, start, stop)`` is item ``i``'s share of
    that layer's gathered vectors. One indexing op per layer replaces one per item.
    """

    items: list[Prepared]
    target: TargetBatch
    oracle: OracleBatch
    gather: dict[int, tuple[torch.Tensor, torch.Tensor]]
    slices: list[tuple[int, int, int]]
    n_target_tokens: int
    n_oracle_tokens: int
    n_answer_tokens: int


def make_micro(items: Sequence[Prepared], pad_id: int) -> MicroBatch:
    tb = collate_target(items, pad_id)
    ob = collate_oracle(items, pad_id)
    rows: dict[int, list[int]] = {}
    cols: dict[int, list[int]] = {}
    slices = []
    for i, p in enumerate(items):
        r, c = rows.setdefault(p.layer, []), cols.setdefault(p.layer, [])
        start = len(r)
        r.extend([i] * len(p.positions))
        c.extend(tb.offsets[i] + q for q in p.positions)
        slices.append((p.layer, start, len(r)))
    gather = {layer: (torch.tensor(rows[layer]), torch.tensor(cols[layer])) for layer in rows}
    return MicroBatch(list(items), tb, ob, gather, slices, tb.n_tokens, ob.n_tokens, ob.n_answer_tokens)


@dataclass
class StepInput:
    """This process's part of one optimiser step: its micro-batches of one global batch."""

    examples: list[TrainingExample]   # the whole global batch (every process holds it)
    micro: list[MicroBatch]
    n_answer_tokens: int              # of this process's share
    skipped: dict[str, int] = field(default_factory=dict)  # the stream's skip counters so far


def make_step_input(examples: Sequence[TrainingExample], prepare_fn: Callable[[TrainingExample], Prepared],
                    pad_id: int, *, rank: int = 0, world_size: int = 1, grad_accum: int = 1) -> StepInput:
    """Share out ``examples``, prepare them, order by length, cut into micro-batches, collate."""
    local = [prepare_fn(ex) for ex in shard(examples, rank, world_size)]
    local.sort(key=lambda p: len(p.oracle_ids) + len(p.context_ids))
    micro = [make_micro(mb, pad_id) for mb in split_micro(local, grad_accum)]
    return StepInput(list(examples), micro, sum(m.n_answer_tokens for m in micro))


class _StepDataset(torch.utils.data.IterableDataset):
    """The step inputs of a batch stream, from batch ``skip`` on (runs in a DataLoader worker)."""

    def __init__(self, stream: BatchStream, skip: int, make: Callable[[list[TrainingExample]], StepInput]) -> None:
        self.stream, self.skip, self.make = stream, int(skip), make

    def __iter__(self) -> Iterator[StepInput]:
        batches = iter(self.stream)
        for _ in range(self.skip):  # a resumed run skips what it consumed, in the same order
            next(batches)
        for batch in batches:
            step = self.make(batch)
            step.skipped = dict(self.stream.stats.skipped)
            yield step


class StepSource:
    """Step inputs in order: built inline (``depth=0``), or ``depth`` steps ahead in a worker process.

    The worker is a forked ``DataLoader`` process: building batches (builders, tokenization,
    prompts, collation) then never holds the training process's interpreter lock, so the GPU's
    kernel launches are not slowed by it (a thread would be). Errors in the worker are raised here.
    """

    def __init__(self, stream: BatchStream, skip: int, make: Callable[[list[TrainingExample]], StepInput],
                 depth: int) -> None:
        self.depth = int(depth)
        dataset = _StepDataset(stream, skip, make)
        if self.depth <= 0:
            self._iter: Any = iter(dataset)
            self._loader = None
        else:
            import multiprocessing

            self._loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1,
                                                       prefetch_factor=self.depth,
                                                       multiprocessing_context=multiprocessing.get_context("fork"),
                                                       collate_fn=_identity,
                                                       # its own generator: the loader must not draw from the
                                                       # global RNG, which drives dropout (exact resume)
                                                       generator=torch.Generator().manual_seed(0))
            self._iter = iter(self._loader)

    def __iter__(self) -> StepSource:
        return self

    def __next__(self) -> StepInput:
        return next(self._iter)

    def close(self) -> None:
        shutdown = getattr(self._iter, "_shutdown_workers", None)
        if self._loader is not None and callable(shutdown):
            shutdown()
        self._iter = iter(())


def _identity(x: Any) -> Any:
    return x
