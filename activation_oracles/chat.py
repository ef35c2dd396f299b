"""Chat rendering without a template's default system prompt, and where the user's content lies.

Some chat templates (SmolLM2's among them) insert a default system prompt whenever a
dialogue has no system turn: on SmolLM2 that is 26 of the ~37 tokens of a short user turn,
text that carries nothing about the input. Training and evaluation contexts, and the
oracle's own prompts, therefore use ``system_prompt=""``: an explicit empty system turn
when (and only when) the template would otherwise add its default, so the model still
sees its familiar chat format. ``None`` keeps the template's own behaviour (what the
model sees in deployment, and what oracles trained before this setting used).

:func:`content_spans` maps each user message's text to its token positions, so callers
can read the content and never a template token.

>>> from transformers import AutoTokenizer
>>> from activation_oracles.embedded import embedded_dir
>>> tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
>>> msgs = [{"role": "user", "content": "Owls hunt at night."}]
>>> "SmolLM" in render_text(tok, msgs, system_prompt=None), "SmolLM" in render_text(tok, msgs)
(True, False)
>>> ids, spans = content_spans(tok, msgs)
>>> tok.decode(ids[spans[0][0]:spans[0][1]])
'Owls hunt at night.'
"""

from __future__ import annotations

import weakref
from typing import Any

from .errors import ConfigError, DataError, PositionError

Messages = list[dict[str, str]]
_PROBE = "\u2063probe\u2063"  # text no template changes, to tell a default system turn from the user's

_DEFAULT_CACHE: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


#: Roles a chat message may have. Templates render any string as a role header (SmolLM2's shows
#: "<|im_start|>wizard"), so a typo would silently become a turn the model never saw in training.
ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: Any, name: str = "messages") -> Messages:
    """``messages`` unchanged when every message is a ``{"role", "content"}`` dict with a known role and text.

    Raises :class:`~activation_oracles.errors.PromptError` naming the message, its index and
    what is wrong (``content: None`` would otherwise reach the template as an undefined value).
    """
    from .checks import check_text
    from .errors import PromptError

    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise PromptError(f"{name}[{i}] is a {type(m).__name__} ({m!r:.60}); expected a dict such as "
                              "{'role': 'user', 'content': 'Hello'}.")
        for key in ("role", "content"):
            if key not in m:
                raise PromptError(f"{name}[{i}] = {m!r:.80} has no {key!r}; every message needs 'role' and 'content', "
                                  "e.g. {'role': 'user', 'content': 'Hello'}.")
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise PromptError(f"{name}[{i}] has role {role!r}; expected one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise PromptError(f"{name}[{i}] ({role!r}) has content {content!r:.60} ({type(content).__name__}); "
                              "expected a string (use '' for an empty turn).")
        check_text(f"{name}[{i}] content", content)
    return messages


def injects_default_system(tokenizer: Any) -> bool:
    """Whether the chat template adds a system turn of its own to a dialogue that has none.

    True when a lone user turn renders longer than the same turn after an explicit empty
    system turn (the template filled in a default); False when the template has no system
    role, rejects one, or adds nothing.
    """
    try:
        return _DEFAULT_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    user = [{"role": "user", "content": _PROBE}]
    try:
        bare = tokenizer.apply_chat_template(user, tokenize=False)
        empty = tokenizer.apply_chat_template([{"role": "system", "content": ""}] + user, tokenize=False)
        found = len(bare) > len(empty)
    except Exception:  # templates raise their own types (jinja2 TemplateError) for a system role they reject
        found = False
    try:
        _DEFAULT_CACHE[tokenizer] = found
    except TypeError:
        pass
    return found


def with_system(tokenizer: Any, messages: Messages, system_prompt: str | None = "") -> Messages:
    """``messages`` with the system turn ``system_prompt`` implies.

    ``None``: unchanged (the template's default applies). A string: when the dialogue has no
    system turn and the template would add a default, a system turn holding that string goes
    first (``""``: an empty one); a dialogue with its own system turn is never changed.
    """
    if system_prompt is None:
        return list(messages)
    if not isinstance(system_prompt, str):
        raise ConfigError(f"system_prompt={system_prompt!r}; expected a string ('' for none) or None for the "
                          "chat template's default.")
    if any(m.get("role") == "system" for m in messages):
        return list(messages)
    if system_prompt == "" and not injects_default_system(tokenizer):
        return list(messages)
    return [{"role": "system", "content": system_prompt}] + list(messages)


def render_text(tokenizer: Any, messages: Messages, *, system_prompt: str | None = "",
                add_generation_prompt: bool = False, template_kwargs: dict[str, Any] | None = None) -> str:
    """The chat-template text of ``messages`` (see :func:`with_system` for ``system_prompt``).

    ``template_kwargs`` are extra template variables (e.g. ``{"enable_thinking": False}``), passed
    to ``apply_chat_template``; templates ignore variables they do not use.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat "
                          "template, so a chat cannot be rendered the way the model sees it; use a chat model's "
                          "tokenizer, or plain text (chat=False / context_format='plain').")
    full = with_system(tokenizer, messages, system_prompt)
    try:
        return tokenizer.apply_chat_template(full, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **(template_kwargs or {}))
    except Exception as exc:  # templates raise their own exception types (jinja2 TemplateError, ValueError)
        roles = [m.get("role") for m in full]
        raise DataError(f"the tokenizer's chat template rejected a dialogue with roles {roles}: {exc}. Some "
                        "templates accept no 'system' role or require alternating user/assistant turns; "
                        "reshape the dialogue to what this model's template accepts.") from None


def _content_offset(tokenizer: Any, messages: Messages, i: int, add_generation_prompt: bool) -> int:
    """Characters before message ``i``'s text in the rendered chat (found with a marker in its place)."""
    marked = [dict(m) for m in messages]
    marked[i]["content"] = _PROBE
    text = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=add_generation_prompt)
    return max(text.find(_PROBE), 0)


def content_spans(tokenizer: Any, messages: Messages, *, system_prompt: str | None = "",
                  add_generation_prompt: bool = False,
                  roles: tuple[str, ...] = ("user",)) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the rendered chat and, per message of ``roles``, its content's token span ``[start, end)``.

    A token belongs to a content span when its characters lie inside the message's text
    (leading/trailing whitespace excluded), so template tokens such as ``<|im_start|>``,
    ``user`` and the newline after it are never inside. Raises :class:`PositionError`
    when a message's text does not survive rendering as one token run.
    """
    text = render_text(tokenizer, messages, system_prompt=system_prompt, add_generation_prompt=add_generation_prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    spans: list[tuple[int, int]] = []
    full = with_system(tokenizer, messages, system_prompt)
    for i, m in enumerate(full):
        content = str(m.get("content", ""))
        stripped = content.strip()
        if not stripped:
            continue
        # Where the template puts this message's text: render it with a marker in its place.
        cursor = _content_offset(tokenizer, full, i, add_generation_prompt)
        raw_at = text.find(content, cursor)
        at = text.find(stripped, cursor if raw_at < 0 else raw_at)
        if at < 0:
            raise PositionError(f"the {m.get('role')!r} message {stripped[:40]!r} does not appear verbatim in the "
                                "rendered chat (the template rewrote it); its content positions cannot be found.")
        lo = raw_at if 0 <= raw_at <= at else at  # leading whitespace of the message is still the message's
        hi = at + len(stripped)
        if m.get("role") not in roles:
            continue
        inside = [j for j, (s, e) in enumerate(offsets) if e > s and s >= lo and e <= max(hi, lo + len(content))
                  and e > at and s < hi]
        if not inside:
            raise PositionError(f"no token lies inside the {m.get('role')!r} message {stripped[:40]!r}; it cannot "
                                "be read at content positions.")
        spans.append((inside[0], inside[-1] + 1))
    if not spans:
        raise PositionError(f"the dialogue has no non-empty message of roles {list(roles)}; there is no content "
                            "to read.")
    return ids, spans
