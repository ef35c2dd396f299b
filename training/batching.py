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
    its answer: a yes/no answer is 2 tokens, a context-prediction answer up to ~13)."""
    k = logits_BKV.shape[1]
    targets_BJ = labels_BS[:, labels_BS.shape[1] - k + 1:]
    pred = logits_BKV[:, :-1].float()
    ce_BJ = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), targets_BJ.reshape(-1),
                                              ignore_index=IGNORE, reduction="none").view(targets_BJ.shape)
    per_example = ce_BJ.sum(1) / (targets_BJ != IGNORE).sum(1).clamp(min=1)
    return ce_BJ.sum(), per_example.sum()


# ------------------------------------------------------------------------------------------------------
# from config sources to an example stream
# ------------------------------------------------------------------------------------------------------

_TEXT_SOURCE_KEYS = ("source", "texts", "path", "paths", "format", "field", "column", "split_by", "dataset", "dataset_split",
                     "dataset_config", "limit", "prompts", "n_rollouts", "max_new_tokens", "temperature", "top_p",
                     "rollout_seed", "rollout_batch_size", "system_prompt")
KINDS = ("context_prediction", "classification", "families", "system_prompt_qa", "on_policy")


def _call_checked(factory: Callable[..., Any], params: dict[str, Any], where: str, extra_valid: Sequence[str] = ()
                  ) -> Any:
    """``factory(**params)``, turning unknown keyword arguments into a ConfigError that lists the valid ones."""
    import inspect

    from ..errors import ConfigError

    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return factory(**params)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    valid = [n for n, p in sig.parameters.items()
             if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and n != "self"]
    unknown = [k for k in params if k not in valid]
    if unknown and not accepts_any:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; valid keys are: "
                          f"{', '.join(sorted(set(valid) | set(extra_valid) | {'kind', 'weight'}))}.")
    return factory(**params)


def _tuple_lists(params: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) and k not in ("texts", "paths", "tasks", "dialogue_paths", "held_out",
                                                                  "prompts", "families") else v
            for k, v in params.items()}


def _text_source(params: dict[str, Any], where: str, model: Any) -> Any:
    """Pick the text source of a context-prediction spec from its keys."""
    from ..errors import ConfigError
    from . import sources as S

    name = params.get("name") or "texts"
    if "source" in params:  # a nested table: {type = "jsonl", paths = [...], ...} (mixture.SOURCE_TYPES)
        from .mixture import SOURCE_TYPES

        table = dict(params["source"])
        kind = table.pop("type", None)
        if kind not in SOURCE_TYPES or kind == "on_policy":
            raise ConfigError(f"{where}: source.type={kind!r}; expected one of "
                              f"{', '.join(k for k in SOURCE_TYPES if k != 'on_policy')} (or kind = 'on_policy').")
        return _call_checked(SOURCE_TYPES[kind], table, f"{where} source")
    if "texts" in params:
        return S.TextListSource(list(params["texts"]), name=name)
    if "dataset" in params:
        kw = {"split": params.get("dataset_split", "train"), "field": params.get("field", "text"),
              "config": params.get("dataset_config"), "limit": params.get("limit")}
        return S.HFDatasetSource(params["dataset"], **kw)
    paths = params.get("paths", params.get("path"))
    if paths is None:
        raise ConfigError(f"{where} names no text: give texts=[...], path=..., paths=[...] or dataset=<hub id>.")
    fmt = params.get("format") or _guess_format(paths)
    if fmt == "text":
        return S.PlainTextSource(paths, split=params.get("split_by", "paragraph"), name=name)
    if fmt == "jsonl":
        return S.JsonlSource(paths, field=params.get("field", "text"), name=name)
    if fmt == "csv":
        if "column" not in params:
            raise ConfigError(f"{where}: a CSV text source needs column=<the text column>.")
        return S.CsvColumnSource(paths, params["column"], name=name)
    if fmt == "chat":
        return S.ChatSource(paths, field=params.get("field", "messages"), name=name)
    raise ConfigError(f"{where}: format={fmt!r}; expected text, jsonl, csv or chat.")


def _guess_format(paths: Any) -> str:
    first = str(paths if isinstance(paths, str) else list(paths)[0]).lower()
    if first.endswith(".jsonl"):
        return "jsonl"
    if first.endswith(".csv"):
        return "csv"
    if first.endswith(".json"):
        return "chat"
    return "text"


def resolve_custom_kind(kind: str, where: str = "a data source") -> type:
    """The class a ``"package.module:Class"`` kind names, checked to be a data source; never called here.

    A config file is data, so the name it gives must not become an arbitrary call:
    ``kind = "os:system"`` would otherwise run a shell command with the table's keys.
    Only a class whose ``examples(tokenizer, rng)`` method makes it a
    :class:`~.example.Builder` is accepted; anything else raises :class:`ConfigError`
    before it is invoked.
    """
    import importlib
    import inspect

    from ..errors import ConfigError

    fix = ("a custom kind must name a data-source class, 'package.module:Class', whose examples(tokenizer, rng) "
           "method yields TrainingExample records (the Builder interface of activation_oracles.training.example)")
    module_name, _, attr = kind.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{where}: kind={kind!r} is not 'package.module:Class'; {fix}.")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):  # "module:Outer.Inner" reaches a nested class
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: kind={kind!r} cannot be imported ({exc}); {fix}.") from None
    if not inspect.isclass(obj):
        what = type(obj).__name__
        raise ConfigError(f"{where}: kind={kind!r} names a {what}, not a class; it was not called. Only data-source "
                          f"classes are accepted: {fix}.")
    examples = inspect.getattr_static(obj, "examples", None)
    if examples is None or not callable(getattr(obj, "examples", None)):
        raise ConfigError(f"{where}: kind={kind!r} names the class {obj.__qualname__}, which has no examples() "
                          f"method; it was not instantiated. {fix[0].upper()}{fix[1:]}.")
    # (self,) tokenizer, rng: the call Mixture makes on every builder
    args = (object(),) * (2 if isinstance(examples, (staticmethod, classmethod)) else 3)
    try:
        inspect.signature(obj.examples).bind(*args)
    except TypeError:
        raise ConfigError(f"{where}: kind={kind!r}: {obj.__qualname__}.examples{inspect.signature(obj.examples)} "
                          f"cannot be called as examples(tokenizer, rng); {fix}.") from None
    except ValueError:  # pragma: no cover - builtins without a signature
        pass
    return obj


def build_builder(spec: Any, layer_percents: Sequence[float], *, where: str = "a data source", model: Any = None
                  ) -> Any:
    """The dataset builder a :class:`~.config.SourceSpec` describes.

    ``kind`` is one of :data:`KINDS` or ``"package.module:Class"``, a data-source class (see
    :func:`resolve_custom_kind`; instantiated with the params).
    ``layer_percents`` is passed to builders that take it unless the spec sets its own.
    ``model`` (the target) is needed by ``on_policy``.
    """
    from ..errors import ConfigError

    params = _tuple_lists(dict(spec.params))
    kind = spec.kind
    if ":" in kind:
        factory = resolve_custom_kind(kind, where)
        import inspect

        try:
            takes_lp = "layer_percents" in inspect.signature(factory).parameters
        except (TypeError, ValueError):  # pragma: no cover
            takes_lp = False
        if takes_lp:
            params.setdefault("layer_percents", tuple(layer_percents))
        return _call_checked(factory, params, where)
    params.setdefault("layer_percents", tuple(layer_percents))
    if kind in ("context_prediction", "on_policy"):
        from .context_prediction import ContextPrediction

        text_params = {k: params.pop(k) for k in list(params) if k in _TEXT_SOURCE_KEYS}
        if kind == "on_policy":
            if model is None:
                raise ConfigError(f"{where}: on_policy needs the target model (the trainer passes it).")
            from .on_policy import OnPolicySource

            kw = {"prompts": text_params.get("prompts"), "n_rollouts": text_params.get("n_rollouts", 256),
                  "max_new_tokens": text_params.get("max_new_tokens", 128),
                  "temperature": text_params.get("temperature", 1.0), "top_p": text_params.get("top_p", 1.0),
                  "seed": text_params.get("rollout_seed", 0), "batch_size": text_params.get("rollout_batch_size", 8),
                  "system_prompt": text_params.get("system_prompt")}
            source = OnPolicySource(model, **kw)
            params.setdefault("name", "on_policy")
        else:
            text_params.setdefault("name", params.get("name"))
            source = _text_source(text_params, where, model)
        return _call_checked(_bind_source(ContextPrediction, source), params, where, _TEXT_SOURCE_KEYS)
    if kind == "classification":
        from .classification import Classification

        if "data_dir" not in params:
            raise ConfigError(f"{where}: classification needs data_dir=<folder with gmt/, relations/, ...>.")
        if "tasks" in params:  # tasks may be names or tables describing a ClassificationTask
            from .classification import ClassificationTask

            params["tasks"] = [_call_checked(ClassificationTask, _tuple_lists(t), f"{where} tasks")
                               if isinstance(t, dict) else t for t in params["tasks"]]
        return _call_checked(Classification, params, where)
    if kind == "families":
        from .families import QuestionFamilies

        return _call_checked(QuestionFamilies, params, where)
    if kind == "system_prompt_qa":
        from .system_prompt_qa import SystemPromptQA

        if "qa_path" not in params or "dialogue_paths" not in params:
            raise ConfigError(f"{where}: system_prompt_qa needs qa_path=<qa.json> and dialogue_paths=[...].")
        return _call_checked(SystemPromptQA, params, where)
    raise ConfigError(f"{where}: kind={kind!r} is not known; expected one of {', '.join(KINDS)} or "
                      "'package.module:Class' (a data-source class with an examples(tokenizer, rng) method).")


def _bind_source(cls: Any, source: Any) -> Callable[..., Any]:
    """``cls(source, **kw)`` with ``cls``'s keyword signature (so unknown keys are reported)."""
    import functools
    import inspect

    sig = inspect.signature(cls)
    params = [p for name, p in sig.parameters.items() if name != "source"]

    @functools.wraps(cls)
    def make(**kw: Any) -> Any:
        return cls(source, **kw)

    make.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return make


def make_example_stream(specs: Sequence[Any], tokenizer: Any, layer_percents: Sequence[float], seed: int, *,
                        model: Any = None, section: str = "data") -> Callable[[int], Iterator[TrainingExample]]:
    """``epoch -> iterator``: the weighted :class:`~.mixture.Mixture` of the builders ``specs`` describe.

    The whole stream is fixed by ``seed`` (and the epoch, for finite builders that end).
    Every process builds the same global stream; the trainer shares out each batch.
    The returned function has ``.mixture`` (for its summary) and ``.builders``.
    """
    from ..errors import ConfigError
    from .mixture import Mixture

    if not specs:
        raise ConfigError(f"{section}.sources is empty; add at least one [[{section}.sources]] table "
                          "(or use --preset tiny).")
    builders = [build_builder(s, layer_percents, where=f"{section}.sources[{i}] ({s.kind})", model=model)
                for i, s in enumerate(specs)]
    mixture = Mixture(builders, [float(s.weight) for s in specs], seed=seed, name=section)

    def stream(epoch: int) -> Iterator[TrainingExample]:
        return mixture.examples(tokenizer, None if epoch == 0 else Random(f"{seed}:epoch:{epoch}"))

    stream.mixture = mixture  # type: ignore[attr-defined]
    stream.builders = builders  # type: ignore[attr-defined]
    return stream


# ------------------------------------------------------------------------------------------------------
# steps: what the trainer consumes, built ahead of time (optionally on a background thread)
# ------------------------------------------------------------------------------------------------------

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
