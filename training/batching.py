"""From a stream of :class:`TrainingExample` to padded tensors: filtering, length grouping, collation.

Two inputs are built per example:

* the **target context** (``context_ids``), left-padded, read by the target up to the
  deepest source layer of the batch;
* the **oracle input**: the oracle prompt (:func:`activation_oracles.prompt.build_prompt`)
  followed by the answer tokens (:func:`activation_oracles.prompt.answer_ids`, end-of-turn
  included), also left-padded, so every row's answer ends at the last column and the
  LM head only has to run on the last ``max answer length + 1`` columns. Labels are
  ``-100`` everywhere except on the answer tokens.

Position ids follow the attention mask (``cumsum - 1``), so a padded row computes
exactly what it would alone.

The batch stream is a pure function of the example stream and a seed: a resumed run
rebuilds it and skips the batches already consumed (:class:`BatchStream`).

>>> stream = BatchStream(lambda epoch: iter([]), batch_size=2)
>>> stream.batch_size
2
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any

import torch

from ..config import OracleConfig
from ..errors import DataError
from ..forward import label_logprobs
from ..padding import left_pad
from ..prompt import answer_ids, build_prompt
from .example import TrainingExample

IGNORE = -100


@dataclass(frozen=True)
class Prepared:
    """One example turned into token ids for both passes."""

    context_ids: tuple[int, ...]
    positions: tuple[int, ...]        # activation positions inside context_ids
    layer: int                        # source block index
    oracle_ids: tuple[int, ...]       # prompt + answer
    placeholder_positions: tuple[int, ...]
    n_answer: int                     # answer tokens at the end of oracle_ids (end-of-turn included)
    source: str
    question: str
    answer: str


def prepare(example: TrainingExample, tokenizer: Any, config: OracleConfig, n_layers: int) -> Prepared:
    """Build the oracle prompt and answer ids of ``example`` (the source layer is ``int(n_layers * p / 100)``)."""
    if not 0 < example.layer_percent < 100:
        raise DataError(f"an example from {example.source!r} has layer_percent={example.layer_percent}, outside "
                        "(0, 100); builders must draw depths such as 25, 50 or 75.")
    layer = int(n_layers * example.layer_percent / 100)
    prompt = build_prompt(tokenizer, config, layer, example.n_positions, example.question)
    ans = answer_ids(tokenizer, config, prompt, layer, example.question, example.answer)
    if not ans:
        raise DataError(f"example from {example.source!r} has an answer {example.answer!r} that tokenizes to no "
                        "tokens; every example needs an answer.")
    return Prepared(context_ids=tuple(example.context_ids), positions=tuple(example.positions), layer=layer,
                    oracle_ids=tuple(prompt.input_ids) + tuple(ans), placeholder_positions=tuple(prompt.positions),
                    n_answer=len(ans), source=example.source, question=example.question, answer=example.answer)


def cost(example: TrainingExample) -> float:
    """A cheap compute estimate used for length grouping (no tokenization needed).

    The target pass reads ``len(context)`` tokens forward only; the oracle pass reads
    the prompt (about K placeholders + the question) and the answer forward and backward,
    about three times the cost per token.
    """
    oracle_tokens = example.n_positions + (len(example.question) + len(example.answer)) / 4 + 12
    return len(example.context_ids) + 3 * oracle_tokens


@dataclass
class StreamStats:
    """Counters of the examples the stream accepted and skipped."""

    used: Counter = field(default_factory=Counter)          # per source, examples yielded in batches
    skipped: Counter = field(default_factory=Counter)       # per reason
    epochs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"used": dict(sorted(self.used.items())), "skipped": dict(sorted(self.skipped.items())),
                "epochs": self.epochs}


class BatchStream:
    """Global batches of ``batch_size`` examples, length-grouped, deterministic given ``seed``.

    Args:
        make_examples: ``epoch -> iterator of TrainingExample``; called again (next epoch)
            when an iterator ends, so finite builders cycle.
        batch_size: examples per global batch (one optimiser step over all processes).
        group_batches: batches per length-grouping pool: a pool of ``group_batches * batch_size``
            examples is sorted by :func:`cost`, cut into batches, and the batches are shuffled.
        seed: seed of the batch order inside each pool.
        max_length: examples whose context is longer are skipped (counted in ``stats``).
        max_positions: examples with more activation positions are skipped.
        give_up_after: raise :class:`DataError` when this many examples in a row were skipped
            before any was accepted (e.g. every context is longer than ``max_length``).
    """

    def __init__(self, make_examples: Callable[[int], Iterator[TrainingExample]], *, batch_size: int,
                 group_batches: int = 16, seed: int = 0, max_length: int = 1 << 30, max_positions: int = 1 << 30,
                 give_up_after: int = 2000) -> None:
        self.make_examples = make_examples
        self.batch_size = int(batch_size)
        self.group_batches = int(group_batches)
        self.seed = int(seed)
        self.max_length = int(max_length)
        self.max_positions = int(max_positions)
        self.give_up_after = int(give_up_after)
        self.stats = StreamStats()

    def _filtered(self) -> Iterator[TrainingExample]:
        accepted = 0
        in_a_row = 0
        epoch = 0
        while True:
            produced = 0
            for ex in self.make_examples(epoch):
                produced += 1
                reason = self._reject(ex)
                if reason is None:
                    accepted += 1
                    in_a_row = 0
                    yield ex
                    continue
                self.stats.skipped[reason] += 1
                in_a_row += 1
                if accepted == 0 and in_a_row >= self.give_up_after:
                    raise self._nothing_fits()
            if produced == 0 or accepted == 0:
                if produced == 0 and epoch == 0:
                    raise DataError("the data mixture produced no examples; check the data sources in the config.")
                raise self._nothing_fits()
            epoch += 1
            self.stats.epochs = epoch

    def _reject(self, ex: TrainingExample) -> str | None:
        if len(ex.context_ids) > self.max_length:
            return "context_too_long"
        if ex.n_positions > self.max_positions:
            return "too_many_positions"
        if not ex.positions or not ex.context_ids:
            return "empty"
        return None

    def _nothing_fits(self) -> DataError:
        skipped = dict(self.stats.skipped)
        if skipped.get("context_too_long"):
            return DataError(f"every example's context is longer than data.max_length={self.max_length} tokens "
                             f"(skipped: {skipped}); raise data.max_length or shorten the contexts (e.g. the "
                             "builders' max_context_tokens).")
        return DataError(f"no example passed the filters (skipped: {skipped}); raise data.max_positions or "
                         "data.max_length, or check the data sources.")

    def __iter__(self) -> Iterator[list[TrainingExample]]:
        rng = Random(self.seed)
        examples = self._filtered()
        pool_size = self.batch_size * self.group_batches
        while True:
            pool = [ex for _, ex in zip(range(pool_size), examples)]
            if len(pool) < pool_size:  # only when the source ends for good (it normally cycles)
                return
            if self.group_batches > 1:
                pool.sort(key=cost)
            batches = [pool[i:i + self.batch_size] for i in range(0, pool_size, self.batch_size)]
            if self.group_batches > 1:
                rng.shuffle(batches)
            for batch in batches:
                for ex in batch:
                    self.stats.used[ex.source] += 1
                yield batch


def shard(batch: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """This process's share of a global batch (interleaved, so shares have similar lengths)."""
    return list(batch[rank::world_size])


def split_micro(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``items`` cut into ``n`` contiguous micro-batches of near-equal size (empty ones dropped)."""
    out = []
    base, extra = divmod(len(items), n)
    start = 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        if size:
            out.append(list(items[start:start + size]))
        start += size
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = left_pad(rows, pad_id)
    return b.input_ids, b.attention_mask, b.position_ids


@dataclass
class TargetBatch:
    """Left-padded target contexts; ``offsets[i]`` is the padding in front of row ``i``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: list[int]
    layers: list[int]
    positions: list[tuple[int, ...]]

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class OracleBatch:
    """Left-padded oracle inputs with labels on the answer tokens only."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    placeholder_positions: list[list[int]]   # each row's own indices (padding excluded)
    keep: int                                # last columns whose logits the loss needs

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def n_answer_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def collate_target(items: Sequence[Prepared], pad_id: int) -> TargetBatch:
    ids, mask, pos = _left_pad([p.context_ids for p in items], pad_id)
    width = ids.shape[1]
    return TargetBatch(ids, mask, pos, [width - len(p.context_ids) for p in items], [p.layer for p in items],
                       [p.positions for p in items])


def collate_oracle(items: Sequence[Prepared], pad_id: int) -> OracleBatch:
    ids, mask, pos = _left_pad([p.oracle_ids for p in items], pad_id)
    width = ids.shape[1]
    labels = torch.full_like(ids, IGNORE)
    for i, p in enumerate(items):
        labels[i, width - p.n_answer:] = ids[i, width - p.n_answer:]
    keep = min(width, max(p.n_answer for p in items) + 1)
    return OracleBatch(ids, mask, pos, labels, [list(p.placeholder_positions) for p in items], keep)


def answer_loss_sum(logits_BKV: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the answer tokens, from the logits of the last ``K`` columns.

    ``logits_BKV[:, j]`` is the prediction made at column ``S - K + j`` for the token at column
    ``S - K + j + 1``; the last column predicts nothing.
    """
    return answer_loss_terms(logits_BKV, labels_BS)[0]


def answer_loss_terms(logits_BKV: torch.Tensor, labels_BS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_sum, example_sum)``: the summed answer-token cross-entropy, and the sum over examples
    of each example's mean over its own answer tokens (every example weighs the same, however long
    its answer: a yes/no answer is 2 tokens, a context-prediction answer up to ~13). The answer
    tokens' log-probabilities are :func:`activation_oracles.forward.label_logprobs`', as ``choose``'s."""
    lp_BJ, scored_BJ = label_logprobs(logits_BKV, labels_BS, IGNORE)
    ce_BJ = -lp_BJ
    per_example = ce_BJ.sum(1) / scored_BJ.sum(1).clamp(min=1)
    return ce_BJ.sum(), per_example.sum()
