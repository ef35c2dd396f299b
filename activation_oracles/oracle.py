"""``ActivationOracle``: ask questions about activations, get answers and probabilities.

The oracle is a language model (normally the target's base model plus a LoRA
adapter) whose prompt holds one placeholder token per activation vector; the
vectors are added, norm-matched, to the oracle's residual stream after block 1
during the prompt pass (see :mod:`activation_oracles.prompt`).

Why one module of ~500 lines: the class's calls (``ask``, ``choose``, ``describe`` and their
token/segment modes) share one injection session, one prompt cache and the typed overloads
that give each call form one return type; what is not the class lives beside it
(:mod:`activation_oracles.oracle_args` checks the arguments, :mod:`activation_oracles.forward`
scores answers, :mod:`activation_oracles.padding` pads).

>>> import activation_oracles as ao
>>> from activation_oracles.tiny import tiny_model
>>> target = tiny_model()               # a random 4-block Llama; ao.load_model("smollm2-135m") for the real one
>>> acts = ao.capture(target, "I love this movie!")
>>> oracle = ao.ActivationOracle.untrained(target)
>>> p = oracle.choose(acts, "Is the sentiment positive?", ["Yes", "No"])   # one set, one question: a dict
>>> sorted(p)
['No', 'Yes']
>>> len(oracle.choose([acts, acts], "Is the sentiment positive?", ["Yes", "No"]))  # a list in, a list out
2
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, overload

import torch

from .activations import Activations
from .adapters import inference_mode, use_adapter
from .answer import DEFAULT_MAX_NEW_TOKENS, Answer
from .checks import check_bool, check_int, check_optional_int, check_real
from .config import OracleConfig
from .errors import ActivationsMismatchError, ArgumentError, ArgumentTypeError, MissingTokenizerError, PromptTooLongError
from .forward import Generated, cache_kwarg, continuation_logprobs, generate, output_cache
from .hooks import inject_residuals
from .oracle_args import check_choices, check_overrides, pair_inputs
from .models import Model, as_model
from .padding import left_pad, pad_id_of
from .prompt import OraclePrompt, end_of_turn_id, answer_ids, build_prompt, placeholder_id


DESCRIBE_QUESTION = "Can you describe what is happening in this text?"
"""The reference's open question (its model-diffing evaluation asks it); ``describe`` asks it."""


# At most this many (prompt, choice) rows per continuation pass of choose(): each holds its answer's
# logits over the vocabulary (49,152 entries for SmolLM2), so 256 rows of a 3-token answer are ~150 MB.
MAX_CHOICE_ROWS = 256


@dataclass(frozen=True)
class _Item:
    prompt: OraclePrompt
    vectors_KD: torch.Tensor


class ActivationOracle:
    """An oracle model plus the configuration that says how activations enter it.

    Build one with :func:`load_oracle` (a trained adapter) or
    :meth:`ActivationOracle.untrained` (the bare base model with the same
    injection: the Patchscopes-style baseline every evaluation reports).
    """

    def __init__(self, model: Any, config: OracleConfig, adapter: str | None = None) -> None:
        self.model: Model = as_model(model)
        self.config = config
        self.adapter = adapter
        if self.model.tokenizer is None:
            raise MissingTokenizerError(f"oracle model {self.model.name!r} has no tokenizer; wrap it with "
                                  "ao.as_model(model, tokenizer).")
        self.placeholder_id = placeholder_id(self.model.tokenizer, config)  # checks it is one token
        self._eot = end_of_turn_id(self.model.tokenizer)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def untrained(cls, model: Any, **overrides: Any) -> ActivationOracle:
        """The base model with the reference injection and no adapter (a Patchscopes-style baseline)."""
        m = as_model(model)
        check_overrides(overrides, m.n_layers, fixed=("base_model", "n_layers", "d_model"))
        config = OracleConfig(base_model=m.name, n_layers=m.n_layers, d_model=m.d_model, **overrides)
        return cls(m, config, adapter=None)

    def as_untrained(self) -> ActivationOracle:
        """The untrained control of this oracle: its injection (layer, mode, coeff, centring), no adapter."""
        return ActivationOracle(self.model, replace(self.config, training=None, lora=None), adapter=None)

    def with_config(self, **changes: Any) -> ActivationOracle:
        """A view of this oracle with other settings, e.g. ``coeff=0`` for the no-information control."""
        check_overrides(changes, self.model.n_layers)
        return ActivationOracle(self.model, replace(self.config, **changes), self.adapter)

    @property
    def assumed(self) -> dict[str, Any]:
        """Settings that were assumed rather than read from the oracle's files (``{}`` when none were).

        A reference-format adapter (no ``oracle_config.json``) gets the reference's conventions;
        ``config.origin`` says where they come from.
        """
        return dict((self.config.origin or {}).get("assumed") or {})

    def __repr__(self) -> str:
        kind = f"adapter={self.adapter!r}" if self.adapter else "untrained"
        fmt = (self.config.origin or {}).get("format")
        extra = f", format={fmt!r} (settings assumed: see .assumed)" if fmt else ""
        return (f"ActivationOracle(base={self.model.name!r}, {kind}, mode={self.config.mode!r}, "
                f"coeff={self.config.coeff}{extra})")

    # -- prompt assembly -----------------------------------------------------------------------------
    def _vectors(self, acts: Activations, layer: int | None) -> tuple[int, torch.Tensor]:
        if not isinstance(acts, Activations):
            raise ActivationsMismatchError(f"expected Activations (from ao.capture or Activations.load), got "
                                           f"{type(acts).__name__}.")
        if acts.d_model != self.model.d_model:
            raise ActivationsMismatchError(
                f"activations have d_model={acts.d_model} (from {acts.model_name!r}) but the oracle "
                f"{self.model.name!r} has d_model={self.model.d_model}; use an oracle built on the target's "
                "base model (or one of the same width).")
        src = acts.layer if layer is None else layer
        return src, acts.vectors_for(src)

    def _item(self, acts: Activations, question: str, layer: int | None,
              centred: dict[tuple[int, int], torch.Tensor] | None = None) -> _Item:
        """``centred`` caches the transformed vectors of each (activation set, layer) within one call, so
        questions about the same activations carry the very same tensor and share one prefix pass."""
        src, vectors_KD = self._vectors(acts, layer)
        if acts.kind == "residual":  # a difference of two models' residuals has no mean to remove
            key = (id(acts), src)
            found = centred.get(key) if centred is not None else None
            if found is None:
                found = self.config.centre(vectors_KD, src)
                if centred is not None:
                    centred[key] = found
            vectors_KD = found
        prompt = build_prompt(self.model.tokenizer, self.config, src, vectors_KD.shape[0], question)
        return _Item(prompt, vectors_KD)

    @contextmanager
    def _session(self, items: Sequence[_Item]) -> Iterator[None]:
        """Adapter on, injection armed for these rows (prefill only), no grad, no dropout."""
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(inference_mode(self.model.hf))
            stack.enter_context(use_adapter(self.model.hf, self.adapter))
            stack.enter_context(inject_residuals(
                self.model, self.config.injection_layer, [list(it.prompt.positions) for it in items],
                [it.vectors_KD for it in items], mode=self.config.mode, coeff=self.config.coeff))
            yield

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and mask for ``generate`` (which derives position ids from the mask itself)."""
        batch = left_pad(rows, pad_id_of(self.model.tokenizer), self.model.device)
        return batch.input_ids, batch.attention_mask

    def _decode(self, row: Generated, max_new_tokens: int) -> Answer:
        """The answer up to the end-of-turn token; ``truncated`` when there was none within the budget."""
        text = self.model.tokenizer.decode(row.ids, skip_special_tokens=True).strip()
        return Answer(text, truncated=row.stop is None and len(row.ids) >= max_new_tokens)

    # -- asking --------------------------------------------------------------------------------------
    # One return type per call form (typing.overload): one activation set and one question give an
    # Answer, anything with a list gives a list, so callers need no cast or isinstance check.
    @overload
    def ask(self, acts: Activations, question: str, *, max_new_tokens: int = ..., temperature: float = ...,
            seed: int | None = ..., batch_size: int = ..., layer: int | None = ..., reuse_prefix: bool = ...,
            generate_kwargs: dict[str, Any] | None = ...) -> Answer: ...

    @overload
    def ask(self, acts: Activations | Sequence[Activations], question: str | Sequence[str], *,
            max_new_tokens: int = ..., temperature: float = ..., seed: int | None = ..., batch_size: int = ...,
            layer: int | None = ..., reuse_prefix: bool = ...,
            generate_kwargs: dict[str, Any] | None = ...) -> list[Answer]: ...

    def ask(self, acts: Activations | Sequence[Activations], question: str | Sequence[str], *,
            max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, seed: int | None = None,
            batch_size: int = 16, layer: int | None = None, reuse_prefix: bool = True,
            generate_kwargs: dict[str, Any] | None = None) -> Answer | list[Answer]:
        """Answer ``question`` about ``acts`` in free text.

        A single activation set and a single question give a string. A list of
        either (or two lists of equal length, paired) gives a list, computed in
        left-padded batches; under greedy decoding (``temperature=0``) the answers
        equal one-at-a-time answers. Several questions about one activation set
        share the prompt prefix (with the injected placeholders), computed once.
        ``generate_kwargs`` are passed on to ``generate`` (e.g. ``{"min_new_tokens": 8}``).

        ``max_new_tokens`` (default 64) is the answer budget. Generation stops where the oracle
        ends its turn, so a short answer costs only its own tokens; an answer still going at
        the budget is cut there. Each answer is an :class:`~activation_oracles.answer.Answer`
        (a ``str``) whose ``truncated`` attribute is True in that case: ask again with a
        larger ``max_new_tokens`` to read the rest.
        """
        check_int("max_new_tokens", max_new_tokens, minimum=1, fix="It is the longest answer, in tokens.")
        temperature = check_real("temperature", temperature, minimum=0.0, fix="Use 0 for greedy decoding.")
        check_optional_int("seed", seed)
        check_int("batch_size", batch_size, minimum=1)
        check_optional_int("layer", layer)
        check_bool("reuse_prefix", reuse_prefix)
        extra = self._check_generate_kwargs(generate_kwargs)
        pairs, single = pair_inputs(acts, question)
        centred: dict[tuple[int, int], torch.Tensor] = {}  # ``pairs`` keeps every acts alive: ids stay unique
        items = [self._item(a, q, layer, centred) for a, q in pairs]
        self._check_length([it.prompt.input_ids for it in items], max_new_tokens)
        answers: list[Answer | None] = [None] * len(items)
        rng = torch.random.fork_rng(devices=[]) if seed is not None else _null()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            groups = _prefix_groups(items) if reuse_prefix else [[i] for i in range(len(items))]
            loose: list[int] = []
            for group in groups:
                if len(group) >= 2:
                    for start in range(0, len(group), batch_size):
                        chunk = group[start:start + batch_size]
                        for idx, text in zip(chunk, self._generate_with_prefix([items[i] for i in chunk],
                                                                                max_new_tokens, temperature, extra)):
                            answers[idx] = text
                else:
                    loose.extend(group)
            for start in range(0, len(loose), batch_size):
                chunk = loose[start:start + batch_size]
                for idx, text in zip(chunk, self._generate([items[i] for i in chunk], max_new_tokens, temperature,
                                                                 extra)):
                    answers[idx] = text
        done = [a for a in answers if a is not None]  # every index was filled above
        return done[0] if single else done

    # Arguments that ask() sets itself, or that would break the prefix cache and the injection.
    _OWN_KWARGS = frozenset({"input_ids", "inputs", "attention_mask", "past_key_values", "cache", "max_new_tokens",
                             "temperature", "use_cache", "generation_config"})

    def _check_generate_kwargs(self, generate_kwargs: Any) -> dict[str, Any]:
        """``generate_kwargs`` as a dict of options ``generate`` knows (transformers only warns, or fails
        after the prompt pass, on a typo)."""
        if generate_kwargs is None:
            return {}
        if not isinstance(generate_kwargs, dict):
            raise ArgumentTypeError(f"generate_kwargs={generate_kwargs!r:.60} ({type(generate_kwargs).__name__}); "
                                    "expected a dict such as {'min_new_tokens': 8}.")
        import inspect

        from transformers import GenerationConfig

        known = set(vars(GenerationConfig())) | set(inspect.signature(self.model.hf.generate).parameters)
        known -= {"kwargs", "self"}
        for key in generate_kwargs:
            if key in self._OWN_KWARGS:
                raise ArgumentError(f"generate_kwargs[{key!r}] is set by ask() itself; pass max_new_tokens= or "
                                    "temperature= to ask(), and leave inputs, masks and caches to it.")
            if not isinstance(key, str) or key.startswith("_") or key not in known:
                close = sorted(k for k in known if not k.startswith("_") and isinstance(key, str)
                               and (key[:4] in k or k[:4] in key))[:5]
                hint = f" (close: {', '.join(close)})" if close else ""
                raise ArgumentError(f"generate_kwargs[{key!r}] is not an option of generate(){hint}; expected "
                                    "GenerationConfig fields such as min_new_tokens, repetition_penalty, top_p.")
        return dict(generate_kwargs)

    def _check_length(self, rows: Sequence[Sequence[int]], max_new_tokens: int = 0) -> None:
        """The oracle prompt (plus the answer) must fit the model's positions: past them GPT-2-style
        models raise an IndexError mid-generation and rotary ones read garbage."""
        from .capturing import context_limit

        limit = context_limit(self.model)
        if limit is None:
            return
        longest = max(len(r) for r in rows)
        if longest + max_new_tokens > limit:
            raise PromptTooLongError(f"the oracle prompt is {longest} tokens and max_new_tokens={max_new_tokens}, "
                                     f"{longest + max_new_tokens} in all, but {self.model.name!r} has {limit} "
                                     "positions; pass fewer activation positions (e.g. acts.last(16)), a shorter "
                                     "question or a smaller max_new_tokens.")

    def _generate(self, items: Sequence[_Item], max_new_tokens: int, temperature: float,
                  extra: dict[str, Any] | None = None) -> list[Answer]:
        ids, mask = self._left_pad([it.prompt.input_ids for it in items])
        with self._session(items):
            out = generate(self.model.hf, self.model.tokenizer, ids, mask, max_new_tokens, temperature, extra)
        return [self._decode(row, max_new_tokens) for row in out]

    def _generate_with_prefix(self, items: Sequence[_Item], max_new_tokens: int, temperature: float,
                              extra: dict[str, Any] | None = None) -> list[Answer]:
        """Prefill the shared prefix once (with injection), then continue every question from its cache."""
        first = items[0]
        prefix = list(first.prompt.input_ids[:first.prompt.prefix_len])
        prefix_ids = torch.tensor([prefix], device=self.model.device)
        with self._session([first]):
            out = self.model.hf(input_ids=prefix_ids, use_cache=True)
            cache = output_cache(out)
        # Pad between the cached prefix and each suffix so all suffixes end together; the
        # mask hides the padding and position ids follow the mask, as in a plain left-padded batch.
        suffixes = [list(it.prompt.input_ids[len(prefix):]) for it in items]
        width = max(len(s) for s in suffixes)
        pad = self.model.tokenizer.pad_token_id if self.model.tokenizer.pad_token_id is not None else 0
        rows, masks = [], []
        for s in suffixes:
            rows.append(prefix + [pad] * (width - len(s)) + s)
            masks.append([1] * len(prefix) + [0] * (width - len(s)) + [1] * len(s))
        ids = torch.tensor(rows, device=self.model.device)
        mask = torch.tensor(masks, device=self.model.device)
        batch_cache = copy.deepcopy(cache)
        if len(items) > 1:
            batch_cache.batch_repeat_interleave(len(items))
        with torch.no_grad(), inference_mode(self.model.hf), use_adapter(self.model.hf, self.adapter):
            out = generate(self.model.hf, self.model.tokenizer, ids, mask, max_new_tokens, temperature, extra,
                           **{cache_kwarg(self.model.hf): batch_cache})
        return [self._decode(row, max_new_tokens) for row in out]

    @overload
    def choose(self, acts: Activations, question: str, choices: Sequence[str], *, layer: int | None = ...,
               batch_size: int = ...) -> dict[str, float]: ...

    @overload
    def choose(self, acts: Activations | Sequence[Activations], question: str | Sequence[str],
               choices: Sequence[str], *, layer: int | None = ..., batch_size: int = ...
               ) -> list[dict[str, float]]: ...

    def choose(self, acts: Activations | Sequence[Activations], question: str | Sequence[str],
               choices: Sequence[str], *, layer: int | None = None, batch_size: int = 32
               ) -> dict[str, float] | list[dict[str, float]]:
        """Probability of each choice as the oracle's whole answer, normalised over the choices.

        Each choice is scored by the oracle's log-likelihood of its answer tokens
        (end-of-turn token included, so "Yes" is not rewarded for being the start
        of a longer answer); the probabilities are a softmax of those scores.
        """
        choice_list = check_choices(choices)
        check_optional_int("layer", layer)
        check_int("batch_size", batch_size, minimum=1)
        pairs, single = pair_inputs(acts, question)
        prepared = []
        for a, q in pairs:  # every prompt built (and checked) before the first forward pass
            item = self._item(a, q, layer)
            src = self._vectors(a, layer)[0]
            answers = [answer_ids(self.model.tokenizer, self.config, item.prompt, src, q, c) for c in choice_list]
            self._check_length([list(item.prompt.input_ids) + list(ans) for ans in answers])
            prepared.append((item, answers))
        out: list[dict[str, float]] = []
        # batch_size prompts per pass; fewer when there are many choices, as every (prompt, choice) row
        # carries its answer's logits over the whole vocabulary
        step = max(1, min(batch_size, MAX_CHOICE_ROWS // len(choice_list)))
        for start in range(0, len(prepared), step):
            chunk = prepared[start:start + step]
            for s in self._score_choices([it for it, _ in chunk], [a for _, a in chunk]):
                top = max(s)
                exps = [math.exp(x - top) for x in s]
                total = sum(exps)
                out.append({c: e / total for c, e in zip(choice_list, exps)})
        return out[0] if single else out

    def choice_logprobs(self, acts: Activations, question: str, choices: Sequence[str], *,
                        layer: int | None = None) -> dict[str, float]:
        """Unnormalised total log-probability of each choice's answer tokens."""
        choice_list = check_choices(choices)
        check_optional_int("layer", layer)
        pair_inputs(acts, question)  # the same checks as ask() and choose()
        item = self._item(acts, question, layer)
        src = self._vectors(acts, layer)[0]
        answers = [answer_ids(self.model.tokenizer, self.config, item.prompt, src, question, c) for c in choice_list]
        return dict(zip(choice_list, self._score_choices([item], [answers])[0]))

    def _score_choices(self, items: Sequence[_Item], answers: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        """Log-likelihood of each item's answers after its prompt. The prompts run once, left-padded in one
        injected batch; every answer continues from its prompt's KV cache in one right-padded batch. With C
        choices this costs one prompt pass instead of C, which is most of the work (the prompt holds the K
        placeholders and the question).
        """
        batch = left_pad([it.prompt.input_ids for it in items], pad_id_of(self.model.tokenizer), self.model.device)
        with self._session(items):
            out = self.model.hf(**batch.forward_kwargs(), use_cache=True, logits_to_keep=1)
        flat = [list(a) for per_item in answers for a in per_item]
        # The continuation pass carries a cache, so the (prefill-only) injection stays out of it.
        with torch.no_grad(), inference_mode(self.model.hf), use_adapter(self.model.hf, self.adapter):
            scores = continuation_logprobs(self.model.hf, output_cache(out), batch.attention_mask,
                                           out.logits[:, -1], flat, pad_id_of(self.model.tokenizer))
        n_per = len(answers[0])  # every item has the same choices
        return [scores[i * n_per:(i + 1) * n_per] for i in range(len(items))]

    # -- input modes ---------------------------------------------------------------------------------
    def ask_tokens(self, acts: Activations, question: str, **kwargs: Any) -> list[Answer]:
        """Ask once per captured position with that single vector (the reference's token mode)."""
        per_token = [acts.token(p) for p in acts.positions]
        return self.ask(per_token, question, **kwargs)

    def choose_tokens(self, acts: Activations, question: str, choices: Sequence[str], **kwargs: Any
                      ) -> list[dict[str, float]]:
        """``choose`` once per captured position (an "oracle lens" over the tokens)."""
        per_token = [acts.token(p) for p in acts.positions]
        return self.choose(per_token, question, choices, **kwargs)

    @overload
    def describe(self, acts: Activations, *, max_new_tokens: int = ..., **kwargs: Any) -> Answer: ...

    @overload
    def describe(self, acts: Sequence[Activations], *, max_new_tokens: int = ..., **kwargs: Any
                 ) -> list[Answer]: ...

    def describe(self, acts: Activations | Sequence[Activations], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 **kwargs: Any) -> Answer | list[Answer]:
        """An open description of what the activations hold: ``ask`` with :data:`DESCRIBE_QUESTION`.

        The holistic mode auditors reach for before they know what to ask. Its quality is
        measured by the card's ``describe`` evaluation (does the description name a content
        word of the text the activations came from, beside the three controls).

        Args:
            acts: one activation set, or a list of them (then a list of descriptions).
            max_new_tokens, **kwargs: as for :meth:`ask`.

        Returns:
            The description (an :class:`~activation_oracles.answer.Answer`), or a list of them.

        >>> import activation_oracles as ao
        >>> from activation_oracles.tiny import tiny_model
        >>> model = tiny_model()
        >>> oracle = ao.ActivationOracle.untrained(model)
        >>> text = oracle.describe(ao.capture(model, "The owl hunts at night.", layers=2), max_new_tokens=4)
        >>> isinstance(text, str)
        True
        """
        if isinstance(acts, Activations):
            return self.ask(acts, DESCRIBE_QUESTION, max_new_tokens=max_new_tokens, **kwargs)
        items = list(acts)
        return self.ask(items, [DESCRIBE_QUESTION] * len(items), max_new_tokens=max_new_tokens, **kwargs)

    def ask_segment(self, acts: Activations, question: str, start: int, end: int | None = None,
                    **kwargs: Any) -> Answer:
        """Ask about the vectors of tokens ``start <= i < end`` only."""
        return self.ask(acts.segment(start, end), question, **kwargs)


@contextmanager
def _null() -> Iterator[None]:
    yield


def _prefix_groups(items: Sequence[_Item]) -> list[list[int]]:
    """Group items whose prompts share the prefix and the very same vectors."""
    groups: dict[tuple, list[int]] = {}
    order: list[tuple] = []
    for i, it in enumerate(items):
        prefix = it.prompt.input_ids[:it.prompt.prefix_len]
        if tuple(it.prompt.input_ids[:len(prefix)]) != prefix:
            key: tuple = ("solo", i)
        else:
            key = (prefix, id(it.vectors_KD))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(i)
    return [groups[k] for k in order]


from .loading import load_oracle  # noqa: E402  (re-exported: ao.load_oracle lives here for discoverability)

__all__ = ["ActivationOracle", "load_oracle"]
