"""``ao.capture``: one call from a prompt to :class:`Activations`.

>>> import activation_oracles as ao
>>> from activation_oracles.tiny import tiny_model
>>> target = tiny_model()               # a random 4-block Llama; ao.load_model("smollm2-135m") for the real one
>>> acts = ao.capture(target, "Tell me about owls.", layer_percent=50)
>>> acts.layer, acts.d_model
(2, 64)
>>> [a.layer for a in ao.capture(target, ["Owls.", "Cats and dogs."], layers=1)]
[1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import torch

from .activations import Activations, parse_position_spec
from .chat import check_messages
from .checks import check_bool, check_int, check_text
from .errors import (ArgumentTypeError, EmptyInputError, LayerNotFoundError, MissingTokenizerError, PositionError,
                     PromptTooLongError)
from .hooks import capture_residuals
from .models import Model, as_model
from .padding import left_pad, pad_id_of

Messages = list[dict[str, str]]


def _is_messages(obj: Any) -> bool:
    # Every dict counts: a message lacking "role" is then reported as a bad message, not as a
    # list of prompts of the wrong type.
    return isinstance(obj, list) and bool(obj) and all(isinstance(m, dict) for m in obj)


def _check_prompt(prompt: Any, name: str = "prompt") -> None:
    """Text or a chat that the tokenizer and the chat template can take (see :func:`check_messages`)."""
    if isinstance(prompt, str):
        check_text(name, prompt)
    elif _is_messages(prompt):
        check_messages(prompt, name)
    elif isinstance(prompt, (bytes, bytearray)):
        raise ArgumentTypeError(f"{name} is {type(prompt).__name__} ({bytes(prompt[:40])!r}); expected str. Decode "
                                "it first, e.g. data.decode('utf-8', errors='replace').")
    elif isinstance(prompt, dict):
        raise ArgumentTypeError(f"{name} is one message ({prompt!r:.60}); a chat is a list of messages: pass "
                                "[message].")
    else:
        raise ArgumentTypeError(f"{name} is a {type(prompt).__name__} ({prompt!r:.60}); expected a string or a list "
                                "of {'role', 'content'} messages.")


def context_limit(model: Model) -> int | None:
    """Most tokens the model has positions for (``config.max_position_embeddings``), or None when unknown.

    Past it, GPT-2-style models index outside their position table (an IndexError from torch)
    and rotary models run on silently, out of the range they were trained on.
    """
    config = getattr(model.hf, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def _layer_list(model: Model, layers: Any, layer_percent: Any) -> list[int]:
    """The block indices to read, checked before any work (each an int in ``[-n_layers, n_layers)``)."""
    n = model.n_layers
    if layers is None:
        if isinstance(layer_percent, (list, tuple)) and layer_percent:
            percents = list(layer_percent)
        else:
            percents = [layer_percent]
        for p in percents:
            if isinstance(p, bool) or not isinstance(p, (int, float)):
                raise LayerNotFoundError(f"layer_percent={layer_percent!r:.60} holds {p!r} ({type(p).__name__}); "
                                         "expected a depth in percent in (0, 100), e.g. 50, or a list of them.")
        return sorted({model.layer_at(p) for p in percents})
    if isinstance(layers, (list, tuple, range)):
        layer_list = list(layers)
        if not layer_list:
            raise LayerNotFoundError("layers=[] selects no block; pass a block index or a list of them, e.g. "
                                     f"layers=[{n // 2}].")
    else:
        layer_list = [layers]
    for layer in layer_list:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise LayerNotFoundError(f"layers={layers!r:.60} holds {layer!r} ({type(layer).__name__}); expected block "
                                     f"indices (ints) in [-{n}, {n}), e.g. layers={n // 2}.")
        if not -n <= layer < n:
            raise LayerNotFoundError(f"layer {layer} is out of range for a model of {n} blocks; expected an index "
                                     f"in [-{n}, {n}).")
    return layer_list


def render(model: Model, prompt: str | Messages, *, chat: bool = True, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a prompt, through the model's chat template when ``chat`` is true."""
    tok = model.tokenizer
    if tok is None:
        raise MissingTokenizerError(f"{model.name!r} has no tokenizer; load it with ao.load_model or pass "
                              "ao.as_model(model, tokenizer).")
    _check_prompt(prompt)
    if _is_messages(prompt):
        messages = prompt
        if not any(str(m.get("content", "")).strip() for m in messages):
            raise EmptyInputError("every message is empty; give at least one message with text.")
    elif isinstance(prompt, str):
        if not prompt.strip():
            raise EmptyInputError("the prompt is empty; pass some text to capture activations on.")
        messages = [{"role": "user", "content": prompt}]
    else:
        raise EmptyInputError(f"prompt is a {type(prompt).__name__}; expected a string or a list of "
                              "{'role', 'content'} messages.")
    if chat and getattr(tok, "chat_template", None):
        add_gen = add_generation_prompt and messages[-1]["role"] != "assistant"
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_gen)
        return list(tok(text, add_special_tokens=False)["input_ids"])
    text = "\n".join(m["content"] for m in messages) if _is_messages(prompt) else str(prompt)
    return list(tok(text)["input_ids"])


def content_positions(model: Model, prompt: str | Messages, *, chat: bool = True, add_generation_prompt: bool = True,
                      ids: Sequence[int] | None = None) -> list[int]:
    """Token indices of the user's own text in ``render(model, prompt, ...)`` (no template or special tokens)."""
    from .chat import content_spans

    tok = model.tokenizer
    rendered = list(ids) if ids is not None else render(model, prompt, chat=chat,
                                                        add_generation_prompt=add_generation_prompt)
    if chat and getattr(tok, "chat_template", None):
        messages = prompt if _is_messages(prompt) else [{"role": "user", "content": str(prompt)}]
        span_ids, spans = content_spans(tok, messages, system_prompt=None,  # what render() shows the model
                                        add_generation_prompt=add_generation_prompt and messages[-1]["role"] != "assistant")
        if span_ids != rendered:
            raise PositionError("the chat renders to different tokens when its content is located; "
                                "pass explicit positions instead of 'content'.")
        return [i for a, b in spans for i in range(a, b)]
    special = set(tok.all_special_ids or [])
    out = [i for i, t in enumerate(rendered) if t not in special]
    if not out:
        raise PositionError("positions='content' selects nothing: the prompt encodes to special tokens only.")
    return out


# One return type per call form (typing.overload): a prompt or a chat gives Activations, a list of
# them a list.
@overload
def capture(model: Any, prompt_or_messages: str | Messages, *, layers: int | Sequence[int] | None = ...,
            layer_percent: float | Sequence[float] = ..., positions: Any = ..., chat: bool = ...,
            add_generation_prompt: bool = ..., backend: str = ..., batch_size: int = ...) -> Activations: ...


@overload
def capture(model: Any, prompt_or_messages: Sequence[str | Messages], *, layers: int | Sequence[int] | None = ...,
            layer_percent: float | Sequence[float] = ..., positions: Any = ..., chat: bool = ...,
            add_generation_prompt: bool = ..., backend: str = ..., batch_size: int = ...) -> list[Activations]: ...


def capture(model: Any, prompt_or_messages: str | Messages | Sequence[str | Messages], *,
            layers: int | Sequence[int] | None = None, layer_percent: float | Sequence[float] = 50,
            positions: Any = "all", chat: bool = True, add_generation_prompt: bool = True,
            backend: str = "torch", batch_size: int = 16) -> Activations | list[Activations]:
    """Run the model on a prompt (or a list of them) and return its residual activations.

    Args:
        model: an ``ao.Model`` (or a transformers / PEFT model with ``ao.as_model``).
        prompt_or_messages: text, a chat (list of ``{"role", "content"}``), or a list of those.
        layers: block indices to read; default from ``layer_percent``.
        layer_percent: depth(s) in percent when ``layers`` is None (50 is the evaluation default).
        positions: ``"all"``, ``"last:N"``, ``"i:j"``, an int, a list of token indices, or
            ``"content"``: only the tokens of the user's own text (every user turn), never a
            chat-template or special token (``acts.tokens`` still shows the whole rendered
            context, so the template stays visible).
        chat: apply the chat template (a plain string becomes one user turn).
        add_generation_prompt: end the template with the assistant header, as at answer time.
        backend: hook backend (``"torch"``, ``"nnsight"``, ``"transformer_lens"``).
        batch_size: prompts per forward pass (left-padded).

    Returns:
        One :class:`Activations` for a single prompt, a list for a list of prompts.
    """
    m = as_model(model)
    # Every argument is checked before the first forward pass, so a bad one changes nothing.
    single = isinstance(prompt_or_messages, str) or _is_messages(prompt_or_messages)
    if not single and not isinstance(prompt_or_messages, (list, tuple)):
        _check_prompt(prompt_or_messages)  # raises: neither text, a chat, nor a list of them
    prompts = [prompt_or_messages] if single else list(prompt_or_messages)  # type: ignore[list-item]
    if not prompts:
        raise EmptyInputError("no prompts given; pass a string, a chat, or a non-empty list of them.")
    for i, p in enumerate(prompts):
        _check_prompt(p, "prompt" if single else f"prompt {i}")
    check_bool("chat", chat)
    check_bool("add_generation_prompt", add_generation_prompt)
    check_int("batch_size", batch_size, minimum=1, fix="It is the number of prompts per forward pass.")
    layer_list = _layer_list(m, layers, layer_percent)
    ids_list = [render(m, p, chat=chat, add_generation_prompt=add_generation_prompt) for p in prompts]
    limit = context_limit(m)
    for i, ids in enumerate(ids_list):
        if limit is not None and len(ids) > limit:
            which = "the prompt" if single else f"prompt {i}"
            raise PromptTooLongError(f"{which} renders to {len(ids)} tokens but {m.name!r} has {limit} positions "
                                     "(config.max_position_embeddings); shorten it, or capture it in pieces.")
    if isinstance(positions, str) and positions.strip() == "content":
        pos_list = [content_positions(m, p, chat=chat, add_generation_prompt=add_generation_prompt, ids=ids)
                    for p, ids in zip(prompts, ids_list)]
    else:
        pos_list = []
        for i, ids in enumerate(ids_list):
            try:
                pos_list.append(parse_position_spec(positions, len(ids)))
            except PositionError as exc:
                if single:
                    raise
                raise PositionError(f"prompt {i}: {exc}") from None

    results: list[Activations] = []
    pad_id = pad_id_of(m.tokenizer)
    for start in range(0, len(ids_list), batch_size):
        chunk = ids_list[start:start + batch_size]
        batch = left_pad(chunk, pad_id, m.device)
        with torch.no_grad(), capture_residuals(m, layer_list, stop_early=True, backend=backend) as cache:
            m.hf(**batch.forward_kwargs())
        for i, ids in enumerate(chunk):
            pos = pos_list[start + i]
            offset = batch.offsets[i]
            index = torch.tensor([offset + p for p in pos])
            vectors = {layer: cache[layer][i, index].cpu() for layer in layer_list}
            tokens = tuple(m.tokenizer.convert_ids_to_tokens(ids))
            results.append(Activations(vectors=vectors, positions=tuple(pos), token_ids=tuple(ids),
                                       tokens=tokens, model_name=m.name, n_layers=m.n_layers,
                                       d_model=m.d_model))
    return results[0] if single else results
