"""On-policy corpus: text the target model writes itself, for users with no corpus at hand.

:class:`OnPolicySource` samples rollouts from the target (greedy, or
temperature sampling seeded per batch) from a list of diverse seed prompts,
and yields each rollout as one document: the prompt through the target's chat
template (with the assistant header) followed by the generated tokens, exactly
the ids the target produced. It is a text source, so it plugs into
:class:`~activation_oracles.training.context_prediction.ContextPrediction`.
Rollouts are generated lazily, once, and cached; :meth:`OnPolicySource.save_jsonl`
writes them as chat records that :class:`~activation_oracles.training.sources.ChatSource`
reads back, so an expensive corpus can be reused.

>>> from random import Random
>>> from activation_oracles.tiny import tiny_model
>>> from activation_oracles.training.context_prediction import ContextPrediction
>>> target = tiny_model()
>>> src = OnPolicySource(target, n_rollouts=2, max_new_tokens=8, seed=0)
>>> ex = next(ContextPrediction(src, n_positions=(1, 4), n_tokens=(1, 4)).examples(target.tokenizer, Random(0)))
>>> ex.source
'context_prediction'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from random import Random
from typing import Any

import torch

from activation_oracles.errors import ConfigError, DataError
from activation_oracles.files import package_data
from activation_oracles.forward import generate
from activation_oracles.padding import left_pad, pad_id_of

from .sources import check_file, encode_chat

SEED_PROMPTS_PATH = package_data("seed_prompts.txt")


def _seed_prompts_file() -> Path:
    try:  # installed package data first (a wheel), then the source tree
        from importlib.resources import files

        path = Path(str(files("activation_oracles") / "data" / "seed_prompts.txt"))
        if path.is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return SEED_PROMPTS_PATH


def load_prompts(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Prompts from a text file, one a line (``#`` comments and blank lines skipped); default: the shipped list.

    >>> len(load_prompts()) >= 100
    True
    """
    p = check_file(path if path is not None else _seed_prompts_file(), "prompt file")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in prompts if line and not line.startswith("#")]
    if not prompts:
        raise DataError(f"prompt file {str(p)!r} holds no prompts; put one prompt per line.")
    return prompts


class OnPolicySource:
    """Rollouts of the target model as a text source.

    Args:
        model: the target, an ``ao.Model`` (``ao.load_model(...)`` or ``ao.as_model(hf, tokenizer)``)
            with a tokenizer that has a chat template.
        prompts: seed prompts, or a path to a prompt file; default the shipped ``seed_prompts.txt``.
        n_rollouts: how many rollouts the corpus has (prompts are cycled in a seeded order).
        max_new_tokens: the most tokens generated per rollout.
        temperature: 0 for greedy decoding, otherwise sampling at this temperature.
        top_p: nucleus sampling threshold (sampling only).
        seed: fixes prompt order and sampling; the same seed gives the same corpus.
        batch_size: rollouts generated per ``generate`` call.
        system_prompt: an optional system turn put before every prompt.
    """

    def __init__(self, model: Any, *, prompts: Sequence[str] | str | os.PathLike[str] | None = None,
                 n_rollouts: int = 256, max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, batch_size: int = 8, system_prompt: str | None = None,
                 name: str = "on_policy") -> None:
        from activation_oracles.models import as_model

        self.model = as_model(model)
        if self.model.tokenizer is None:
            raise ConfigError("OnPolicySource needs a model with a tokenizer; wrap it with ao.as_model(hf, tokenizer).")
        if isinstance(prompts, (str, os.PathLike)) or prompts is None:
            prompts = load_prompts(prompts)
        self.prompts = [str(p) for p in prompts if str(p).strip()]
        if not self.prompts:
            raise DataError("OnPolicySource got no prompts; pass a non-empty list or a prompt file.")
        if n_rollouts < 1 or max_new_tokens < 1 or batch_size < 1:
            raise ConfigError(f"n_rollouts={n_rollouts}, max_new_tokens={max_new_tokens}, batch_size={batch_size}; "
                              "each must be >= 1.")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError(f"temperature={temperature}, top_p={top_p}; expected temperature >= 0 (0: greedy) "
                              "and 0 < top_p <= 1.")
        self.n_rollouts, self.max_new_tokens, self.batch_size = int(n_rollouts), int(max_new_tokens), int(batch_size)
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        self.system_prompt, self.name = system_prompt, name
        order_rng = Random(f"on-policy:{seed}")
        self._order: list[str] = []
        while len(self._order) < self.n_rollouts:
            cycle = list(self.prompts)
            order_rng.shuffle(cycle)
            self._order.extend(cycle)
        del self._order[self.n_rollouts:]
        self._rollouts: list[dict[str, Any]] = []

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return head + [{"role": "user", "content": prompt}]

    @torch.no_grad()
    def _generate(self, batch_index: int) -> list[dict[str, Any]]:
        tok, hf = self.model.tokenizer, self.model.hf
        prompts = self._order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
        prompt_ids = [encode_chat(tok, self._messages(p), add_generation_prompt=True) for p in prompts]
        batch = left_pad(prompt_ids, pad_id_of(tok), self.model.device)
        extra = {"top_p": self.top_p} if self.temperature > 0 else None
        devices = [batch.input_ids.device] if batch.input_ids.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + batch_index)
            out = generate(hf, tok, batch.input_ids, batch.attention_mask, self.max_new_tokens, self.temperature,
                           extra)
        rollouts = []
        for prompt, ids, row in zip(prompts, prompt_ids, out):
            new = row.ids + ([row.stop] if row.stop is not None else [])  # the transcript keeps its end of turn
            rollouts.append({"prompt": prompt, "ids": list(ids) + new,
                             "completion": tok.decode(row.ids, skip_special_tokens=True)})
        return rollouts

    def rollouts(self, *, progress: bool | None = None) -> Iterator[dict[str, Any]]:
        """Yield ``{"prompt", "ids", "completion"}`` per rollout, generating (and caching) as needed.

        ``progress`` shows a bar with an ETA while rollouts are *generated* (minutes for a few
        hundred on a CPU); ``None`` follows :func:`activation_oracles.progress.progress_default`
        (off, unless the ``ao`` CLI turned it on). Cached rollouts come back without one.
        """
        from activation_oracles.progress import progress as progress_bar

        n_batches = -(-self.n_rollouts // self.batch_size)
        todo = self.n_rollouts - len(self._rollouts)
        with progress_bar(desc="on-policy rollouts", total=todo, unit="rollout",
                          enabled=progress if todo > 0 else False) as bar:
            for b in range(n_batches):
                if len(self._rollouts) < min((b + 1) * self.batch_size, self.n_rollouts):
                    fresh = self._generate(b)
                    self._rollouts.extend(fresh)
                    bar.update(len(fresh))
                yield from self._rollouts[b * self.batch_size:(b + 1) * self.batch_size]

    def documents(self, tokenizer: Any) -> Iterator[list[int]]:
        """Each rollout's token ids (prompt through the chat template + generated tokens)."""
        mine = self.model.tokenizer
        if tokenizer is not None and tokenizer is not mine and tokenizer.get_vocab() != mine.get_vocab():
            raise ConfigError("the tokenizer given to the builder is not the target model's; on-policy rollouts are "
                              "token ids of the target, so build examples with the target's tokenizer.")
        for r in self.rollouts():
            yield list(r["ids"])

    def save_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write the rollouts as ``{"messages": [...]}`` lines (read back with ``ChatSource(path)``)."""
        p = Path(path).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("w", encoding="utf-8") as f:
            for r in self.rollouts():
                messages = self._messages(r["prompt"]) + [{"role": "assistant", "content": r["completion"]}]
                f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        return p

