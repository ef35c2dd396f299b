"""Chat helpers for audits: greedy replies, answer log-likelihoods and captures, with one adapter active.

Organisms and oracles are LoRA adapters on one shared base model. Every helper
here takes ``adapter``: the name of the adapter to run with (an organism's), or
``None`` for the bare base model. The model's own adapter state is restored on
exit (``use_adapter``), so an oracle sharing the base is never disturbed.

>>> from activation_oracles.tiny import tiny_model
>>> from activation_oracles.evals.chat import answer_logprobs, generate
>>> m = tiny_model()
>>> chat = [{"role": "user", "content": "Give me a hint."}]
>>> len(generate(m, [chat], max_new_tokens=4)) == 1
True
>>> a, b = answer_logprobs(m, [chat, chat], ["Yes", "No"])
>>> a < 0 and b < 0
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from activation_oracles.adapters import use_adapter
from activation_oracles.forward import answer_logprob_sums
from activation_oracles.forward import generate as generate_rows
from activation_oracles.models import Model, as_model
from activation_oracles.padding import left_pad
from activation_oracles.prompt import end_of_turn_id
from activation_oracles.training.sources import encode_chat

Chat = list[dict[str, str]]


@contextmanager
def running(model: Model, adapter: str | None) -> Iterator[None]:
    """Eval mode, no grad, only ``adapter`` active (``None``: the base model)."""
    was_training = model.hf.training
    model.hf.eval()
    try:
        with torch.no_grad(), use_adapter(model.hf, adapter):
            yield
    finally:
        model.hf.train(was_training)


def prompt_ids(tokenizer: Any, chat: Chat, prefill: str = "") -> list[int]:
    """The chat through the template with the assistant header open, then ``prefill`` (the reply's start)."""
    ids = encode_chat(tokenizer, chat, add_generation_prompt=True)
    if prefill:
        ids = ids + list(tokenizer(prefill, add_special_tokens=False)["input_ids"])
    return ids


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, or its end-of-sequence id when it has none (SmolLM2, GPT-2)."""
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def generate(model: Any, chats: Sequence[Chat], *, adapter: str | None = None, prefill: str = "",
             max_new_tokens: int = 48, batch_size: int = 16, progress: bool | None = None,
             desc: str = "generating replies") -> list[str]:
    """Greedy replies to each chat (left-padded batches), ``prefill`` forced as the reply's start.

    The returned text is what the model wrote after ``prefill`` (special tokens dropped).
    ``progress``/``desc``: a bar over the chats (:mod:`activation_oracles.progress`; ``None``
    follows the ambient default, so behaviour checks and audits show one under ``ao``).
    """
    m = as_model(model)
    tok = m.tokenizer
    out: list[str] = []
    with running(m, adapter), _bar(desc, len(chats), progress) as bar:
        for start in range(0, len(chats), batch_size):
            rows = [prompt_ids(tok, c, prefill) for c in chats[start:start + batch_size]]
            batch = left_pad(rows, pad_id(tok), m.device)
            for row in generate_rows(m.hf, tok, batch.input_ids, batch.attention_mask, max_new_tokens):
                out.append(tok.decode(row.ids, skip_special_tokens=True).strip())
            bar.update(len(rows))
    return out


def _bar(desc: str, total: int, enabled: bool | None) -> Any:
    """A transient bar (cleared when done) that appears only if the call lasts over 2 s: many calls are short."""
    from activation_oracles.progress import progress

    return progress(desc=desc, total=total, enabled=enabled, unit="chat", leave=False, delay=2.0)


def answer_logprobs(model: Any, chats: Sequence[Chat], answers: Sequence[str], *, adapter: str | None = None,
                    prefill: str = "", end_of_turn: bool = True, batch_size: int = 16,
                    progress: bool | None = None, desc: str = "scoring answers") -> list[float]:
    """Total log-probability of ``answers[i]`` as the reply to ``chats[i]`` (after ``prefill``).

    With ``end_of_turn`` the end-of-turn token is scored too, so an answer is not
    rewarded for being the start of a longer one ("Paris" vs "Paris, Texas").
    ``progress``/``desc`` as in :func:`generate`.
    """
    if len(chats) != len(answers):
        raise ValueError(f"answer_logprobs: {len(chats)} chats but {len(answers)} answers; pass one answer per chat.")
    m = as_model(model)
    tok = m.tokenizer
    eot = end_of_turn_id(tok) if end_of_turn else None
    rows: list[tuple[list[int], int]] = []
    for chat, ans in zip(chats, answers):
        p = prompt_ids(tok, chat, prefill)
        a = list(tok(ans, add_special_tokens=False)["input_ids"]) + ([eot] if eot is not None else [])
        if not a:
            raise ValueError(f"answer {ans!r} has no tokens; give a non-empty answer.")
        rows.append((p + a, len(a)))
    scores: list[float] = []
    with running(m, adapter), _bar(desc, len(rows), progress) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            # position ids too (left_pad): an absolute-position model reads padded rows right
            batch = left_pad([r for r, _ in chunk], pad_id(tok), m.device)
            scores += answer_logprob_sums(m.hf, batch, [k for _, k in chunk])
            bar.update(len(chunk))
    return scores


def choice_probs(model: Any, chat: Chat, choices: Sequence[str], *, adapter: str | None = None, prefill: str = "",
                 ) -> dict[str, float]:
    """Softmax over ``choices`` of their log-likelihood as the reply (a black-box forced choice)."""
    scores = answer_logprobs(model, [chat] * len(choices), list(choices), adapter=adapter, prefill=prefill)
    t = torch.softmax(torch.tensor(scores), dim=0)
    return dict(zip(choices, t.tolist()))
