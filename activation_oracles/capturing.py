"""``ao.capture``: one call from a prompt to :class:`Activations`.

>>> import activation_oracles as ao
>>> target = ao.load_model("smollm2-135m")                             # doctest: +SKIP
>>> acts = ao.capture(target, "Tell me about owls.", layer_percent=50)  # doctest: +SKIP
>>> acts.layer, acts.d_model                                            # doctest: +SKIP
(15, 576)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .activations import Activations, parse_position_spec
from .errors import EmptyInputError, PositionError
from .hooks import capture_residuals
from .models import Model, as_model

Messages = list[dict[str, str]]


def _is_messages(obj: Any) -> bool:
    return isinstance(obj, list) and bool(obj) and all(isinstance(m, dict) and "role" in m for m in obj)


def render(model: Model, prompt: str | Messages, *, chat: bool = True, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a prompt, through the model's chat template when ``chat`` is true."""
    tok = model.tokenizer
    if tok is None:
        raise EmptyInputError(f"{model.name!r} has no tokenizer; load it with ao.load_model or pass "
                              "ao.as_model(model, tokenizer).")
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
    single = isinstance(prompt_or_messages, str) or _is_messages(prompt_or_messages)
    prompts = [prompt_or_messages] if single else list(prompt_or_messages)  # type: ignore[list-item]
    if not prompts:
        raise EmptyInputError("no prompts given; pass a string, a chat, or a non-empty list of them.")
    if layers is None:
        percents = [layer_percent] if isinstance(layer_percent, (int, float)) else list(layer_percent)
        layer_list = sorted({m.layer_at(p) for p in percents})
    else:
        layer_list = [layers] if isinstance(layers, int) else list(layers)
    ids_list = [render(m, p, chat=chat, add_generation_prompt=add_generation_prompt) for p in prompts]
    if isinstance(positions, str) and positions.strip() == "content":
        pos_list = [content_positions(m, p, chat=chat, add_generation_prompt=add_generation_prompt, ids=ids)
                    for p, ids in zip(prompts, ids_list)]
    else:
        pos_list = [parse_position_spec(positions, len(ids)) for ids in ids_list]

    results: list[Activations] = []
    pad_id = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0
    for start in range(0, len(ids_list), batch_size):
        chunk = ids_list[start:start + batch_size]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, ids in enumerate(chunk):  # left padding, as for generation
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        with torch.no_grad(), capture_residuals(m, layer_list, stop_early=True, backend=backend) as cache:
            m.hf(input_ids=input_ids.to(m.device), attention_mask=mask.to(m.device))
        for i, ids in enumerate(chunk):
            pos = pos_list[start + i]
            offset = width - len(ids)
            index = torch.tensor([offset + p for p in pos])
            vectors = {layer: cache[layer][i, index].cpu() for layer in layer_list}
            tokens = tuple(m.tokenizer.convert_ids_to_tokens(ids))
            results.append(Activations(vectors=vectors, positions=tuple(pos), token_ids=tuple(ids),
                                       tokens=tokens, model_name=m.name, n_layers=m.n_layers,
                                       d_model=m.d_model))
    return results[0] if single else results
