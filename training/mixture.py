"""The training mixture: builders interleaved by weight, deterministically, sharded for DDP.

Every rank builds the same global stream (same seed: the builders' own random
draws and the weighted choice of builder at each step are seeded from it) and
keeps the examples whose global index ``i`` has ``i % world_size == rank``. So
the shards are disjoint, together they are exactly the single-process stream,
and a global batch of B examples is the same B examples whatever the number of
processes (which is what makes a DDP run match a one-process run). Building an
example costs only tokenization, so generating the others' examples and
dropping them is cheap next to a forward pass.

>>> from random import Random
>>> from transformers import AutoTokenizer
>>> from activation_oracles.embedded import embedded_dir
>>> from activation_oracles.training.context_prediction import ContextPrediction
>>> from activation_oracles.training.sources import TextListSource
>>> tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
>>> texts = TextListSource(["Owls are birds of prey that hunt at night. " * 3, "Rivers flow to the sea. " * 5])
>>> mix = Mixture([ContextPrediction.single_token(texts), ContextPrediction.multi_token(texts)],
...               {"context_prediction_single": 1, "context_prediction_multi": 2}, seed=0)
>>> stream = mix.examples(tok)
>>> batch = [next(stream) for _ in range(30)]
>>> sorted(mix.summary()["builders"])
['context_prediction_multi', 'context_prediction_single']
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from random import Random
from typing import Any

from activation_oracles.errors import ConfigError

from .classification import Classification
from .context_prediction import ContextPrediction
from .example import Builder, TrainingExample
from .families import QuestionFamilies
from .on_policy import OnPolicySource
from .sources import ChatSource, CsvColumnSource, HFDatasetSource, JsonlSource, PlainTextSource, TextListSource
from .system_prompt_qa import SystemPromptQA

BUILDER_TYPES: dict[str, type] = {
    "context_prediction": ContextPrediction,
    "classification": Classification,
    "families": QuestionFamilies,
    "system_prompt_qa": SystemPromptQA,
}
"""Builder classes by the kind name a config uses."""

SOURCE_TYPES: dict[str, type] = {
    "texts": TextListSource,
    "plain_text": PlainTextSource,
    "jsonl": JsonlSource,
    "csv": CsvColumnSource,
    "chat": ChatSource,
    "hf": HFDatasetSource,
    "on_policy": OnPolicySource,
}
"""Text-source classes (for context prediction) by the kind name a config uses."""


class Mixture:
    """Weighted, seeded interleaving of builders, with a disjoint shard per DDP rank.

    Args:
        builders: the builders (each with a unique ``name``).
        weights: ``{name: weight}`` (every builder named), a list in builder order, or None
            (equal weights). Weights are relative; 0 leaves a builder out.
        seed: fixes the whole stream (builder draws and interleaving).
        rank, world_size: this process's shard: global examples ``i`` with ``i % world_size == rank``.

    A builder whose stream ends is dropped and the others' weights renormalised; the
    mixture ends when every builder has ended (the default builders never end).
    """

    def __init__(self, builders: Sequence[Builder], weights: Mapping[str, float] | Sequence[float] | None = None,
                 *, seed: int = 0, rank: int = 0, world_size: int = 1, name: str = "mixture") -> None:
        builders = list(builders)
        if not builders:
            raise ConfigError("a mixture needs at least one builder.")
        names = [getattr(b, "name", None) for b in builders]
        if any(not isinstance(n, str) or not n for n in names):
            raise ConfigError(f"every builder needs a non-empty string name; got {names}.")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"builder names {dupes} appear more than once; give each builder its own name= "
                              "(e.g. context_prediction_single and context_prediction_multi).")
        if weights is None:
            values = [1.0] * len(builders)
        elif isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(names))
            missing = [n for n in names if n not in weights]
            if unknown or missing:
                raise ConfigError(f"mixture weights name unknown builders {unknown} and miss {missing}; the "
                                  f"builders are {names}: give one weight per builder.")
            values = [weights[n] for n in names]
        else:
            values = list(weights)
            if len(values) != len(builders):
                raise ConfigError(f"{len(values)} weights for {len(builders)} builders {names}; give one each.")
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ConfigError(f"mixture weights {values} must be numbers.") from None
        if any(not math.isfinite(v) or v < 0 for v in values) or not any(v > 0 for v in values):
            raise ConfigError(f"mixture weights {dict(zip(names, values))} must be finite, >= 0, and not all 0.")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank}, world_size={world_size}; expected integers with 0 <= rank < world_size.")
        self.builders, self.names, self.weights = builders, names, values
        self.seed, self.rank, self.world_size, self.name = int(seed), rank, world_size, name
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.counts: Counter[str] = Counter()
        self.global_counts: Counter[str] = Counter()
        self.source_counts: Counter[str] = Counter()
        self.exhausted: set[str] = set()
        self.n_global = 0

    def examples(self, tokenizer: Any, rng: Random | None = None, *, start: int = 0) -> Iterator[TrainingExample]:
        """This rank's shard of the stream, skipping the first ``start`` global examples (to resume).

        ``rng``: None uses ``seed``; otherwise one 64-bit draw from it seeds the stream, and every
        rank must pass an rng in the same state.
        """
        if start < 0:
            raise ConfigError(f"start={start}; expected the number of global examples already consumed (>= 0).")
        self._reset_counts()
        base = self.seed if rng is None else rng.getrandbits(64)
        streams = {n: iter(b.examples(tokenizer, Random(f"{base}:{i}:{n}")))
                   for i, (n, b) in enumerate(zip(self.names, self.builders)) if self.weights[i] > 0}
        weight = dict(zip(self.names, self.weights))
        schedule = Random(f"{base}:schedule")
        index = 0
        while streams:
            live = [n for n in self.names if n in streams]
            total = sum(weight[n] for n in live)
            x = schedule.random() * total
            chosen = live[-1]
            for n in live:
                x -= weight[n]
                if x < 0:
                    chosen = n
                    break
            try:
                ex = next(streams[chosen])
            except StopIteration:
                del streams[chosen]
                self.exhausted.add(chosen)
                continue
            mine = index >= start and index % self.world_size == self.rank
            index += 1
            if index > start:
                self.global_counts[chosen] += 1
                self.n_global = index - start
            if mine:
                self.counts[chosen] += 1
                self.source_counts[ex.source] += 1
                yield ex

    def summary(self) -> dict[str, Any]:
        """Weights, shares and counts per builder (this rank's and the global stream's), for the oracle card."""
        total = sum(self.weights)
        builders = {}
        for n, b, w in zip(self.names, self.builders, self.weights):
            entry: dict[str, Any] = {"type": type(b).__name__, "weight": w, "share": w / total,
                                     "count": self.counts[n], "global_count": self.global_counts[n],
                                     "exhausted": n in self.exhausted}
            details = getattr(b, "summary", None)
            if callable(details):
                entry["details"] = details()
            builders[n] = entry
        return {"name": self.name, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "n_examples": sum(self.counts.values()), "n_global": self.n_global, "builders": builders,
                "sources": dict(sorted(self.source_counts.items()))}
