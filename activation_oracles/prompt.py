"""Build the oracle's input: the chat-templated prompt with K placeholder tokens.

The user turn is ``"Layer: {L}\\n" + " ?" * K + " \\n" + question`` rendered with
the oracle's own chat template; the K placeholder positions are found in the
token ids, and the K activation vectors are injected there. Training and asking
share these functions, so the oracle is prompted at test time exactly as it was
trained.

>>> from activation_oracles.config import OracleConfig
>>> from activation_oracles.tiny import tiny_model
>>> tok = tiny_model(n_layers=2, d_model=32).tokenizer     # the embedded SmolLM2 tokenizer
>>> p = build_prompt(tok, OracleConfig(), layer=15, n_positions=3, question="Why?")
>>> [p.input_ids[i] for i in p.positions] == [p.placeholder_id] * 3
True
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from .chat import render_text
from .config import OracleConfig
from .errors import AdapterError, EmptyInputError, PositionError


@dataclass(frozen=True)
class OraclePrompt:
    """Token ids of one oracle prompt and where its placeholders are.

    ``prefix_len`` is the length of the part shared by every question about the
    same activations (everything up to and including the last placeholder).
    """

    input_ids: tuple[int, ...]
    positions: tuple[int, ...]
    placeholder_id: int
    prefix_len: int


def placeholder_id(tokenizer: Any, config: OracleConfig) -> int:
    """The single token id of the placeholder; raises if it tokenizes to more than one token."""
    ids = tokenizer(config.placeholder, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise AdapterError(f"placeholder {config.placeholder!r} tokenizes to {len(ids)} tokens {ids} with this "
                           "tokenizer; it must be exactly one token. Set OracleConfig.placeholder to a "
                           "single-token string.")
    return int(ids[0])


def _render(tokenizer: Any, user_text: str, answer: str | None, system_prompt: str | None = None,
            template_kwargs: dict[str, Any] | None = None) -> str:
    messages = [{"role": "user", "content": user_text}]
    if getattr(tokenizer, "chat_template", None):
        if answer is None:
            return render_text(tokenizer, messages, system_prompt=system_prompt, add_generation_prompt=True,
                               template_kwargs=template_kwargs)
        messages.append({"role": "assistant", "content": answer})
        return render_text(tokenizer, messages, system_prompt=system_prompt, template_kwargs=template_kwargs)
    # Tokenizers without a chat template (tiny test models): a plain rendering.
    return f"User: {user_text}\nAssistant:" + ("" if answer is None else f" {answer}{tokenizer.eos_token or ''}")


def _tokens(tokenizer: Any, text: str) -> list[int]:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer(text, add_special_tokens=not has_template)["input_ids"])


def build_prompt(tokenizer: Any, config: OracleConfig, layer: int, n_positions: int, question: str) -> OraclePrompt:
    """The oracle prompt for ``n_positions`` vectors from source ``layer`` and one question."""
    if not isinstance(question, str) or not question.strip():
        raise EmptyInputError("the question is empty; ask the oracle something, e.g. 'What is the secret word?'.")
    if n_positions < 1:
        raise PositionError("zero activation positions; the oracle needs at least one vector.")
    if n_positions > config.max_positions:
        raise PositionError(f"{n_positions} activation positions exceed this oracle's cap of "
                            f"{config.max_positions}; select fewer (acts.last(N) or acts.segment(i, j)) or "
                            "raise OracleConfig.max_positions.")
    ph = placeholder_id(tokenizer, config)
    user = config.prompt_template.format(layer=layer, placeholders=config.placeholder * n_positions,
                                         question=question)
    ids = _tokens(tokenizer, _render(tokenizer, user, None, config.system_prompt, config.chat_template_kwargs))
    positions = _find_run(ids, ph, n_positions)
    if positions is None:
        # The whole-string tokenization merged a placeholder with a neighbour: build it piecewise.
        before, after = user.split(config.placeholder * n_positions, 1)
        text = _render(tokenizer, user, None, config.system_prompt, config.chat_template_kwargs)
        head, tail = text.split(user, 1)
        ids = (_tokens(tokenizer, head + before) + [ph] * n_positions
               + list(tokenizer(after + tail, add_special_tokens=False)["input_ids"]))
        start = len(_tokens(tokenizer, head + before))
        positions = list(range(start, start + n_positions))
    return OraclePrompt(tuple(ids), tuple(positions), ph, positions[-1] + 1)


def _find_run(ids: list[int], token: int, k: int) -> list[int] | None:
    runs: list[list[int]] = []
    i = 0
    while i < len(ids):
        if ids[i] == token:
            j = i
            while j < len(ids) and ids[j] == token:
                j += 1
            runs.append(list(range(i, j)))
            i = j
        else:
            i += 1
    exact = [r for r in runs if len(r) == k]
    return exact[0] if len(exact) == 1 else None


def answer_ids(tokenizer: Any, config: OracleConfig, prompt: OraclePrompt, layer: int, question: str,
               answer: str) -> list[int]:
    """Token ids of ``answer`` as the assistant turn after ``prompt``, ending with the end-of-turn token.

    These are the tokens the training loss covers and that ``choose`` scores.
    """
    n = len(prompt.positions)
    user = config.prompt_template.format(layer=layer, placeholders=config.placeholder * n, question=question)
    full = _tokens(tokenizer, _render(tokenizer, user, answer, config.system_prompt, config.chat_template_kwargs))
    head = list(prompt.input_ids)
    if full[:len(head)] != head:
        # Rare tokenizer boundary effect: tokenize the answer on its own.
        tail = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        eos = tokenizer.eos_token_id
        return tail + ([eos] if eos is not None else [])
    tail = full[len(head):]
    eot = end_of_turn_id(tokenizer)
    if eot is not None and eot in tail:
        tail = tail[: tail.index(eot) + 1]
    return tail


_EOT_CACHE: "weakref.WeakKeyDictionary[Any, int | None]" = weakref.WeakKeyDictionary()


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The chat template's end-of-turn token (cached: ``get_vocab()`` costs ~50 ms on large vocabularies)."""
    try:
        return _EOT_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = tokenizer.get_vocab()
    found = tokenizer.eos_token_id
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        if tok in vocab:
            found = int(vocab[tok])
            break
    try:
        _EOT_CACHE[tokenizer] = found
    except TypeError:  # not weak-referenceable: just don't cache
        pass
    return found
