"""What every bad-input case checks, in one place.

A case passes when the call raises exactly the expected :class:`AOError` subclass (which is
also a specific built-in), the message names the bad value, no file in the watched folder
changed, and the model carries no hook and computes the same logits as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from activation_oracles.errors import AOError

# The hook dictionaries of tests/conftest.py (a leak in any counts).
HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
              "_backward_hooks", "_backward_pre_hooks")
PROBE_IDS = torch.tensor([[1, 17, 42, 5, 99, 23, 7]])


def small_model(embedded_tokenizer: Any, positions: int = 256) -> Any:
    """The one tiny model of a test module: 2 blocks, d_model 32, the embedded tokenizer.

    ``positions`` lowers ``config.max_position_embeddings`` (only the bookkeeping: rotary models
    compute positions on the fly) so a too-long prompt is a few hundred tokens, not thousands.
    """
    from activation_oracles.tiny import tiny_model

    m = tiny_model(n_layers=2, d_model=32, tokenizer=embedded_tokenizer, seed=3)
    m.hf.config.max_position_embeddings = positions
    return m


def hooks_on(model: Any) -> list[tuple[str, str]]:
    module = getattr(model, "hf", model)
    return [(name, attr) for name, sub in module.named_modules() for attr in HOOK_DICTS if getattr(sub, attr, None)]


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.hf(input_ids=PROBE_IDS).logits.clone()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime (a change or a leftover shows)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = Path(root) / f
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def expect(call: Callable[[], Any], cls: type[AOError], needle: str | tuple[str, ...], *,
           folder: Path | None = None, model: Any = None, reference: torch.Tensor | None = None) -> str:
    """Run ``call``; check the error, its message, the folder and the model. Returns the message."""
    before = snapshot(folder) if folder is not None else None
    with pytest.raises(AOError) as info:
        call()
    err = info.value
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    builtins = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
    assert builtins and isinstance(err, tuple(builtins))
    message = str(err)
    for n in (needle,) if isinstance(needle, str) else needle:
        assert n in message, f"{n!r} not in {message!r}"
    assert "\n" not in message.strip(), "an error message is one line"
    message.encode("utf-8")  # printable on a UTF-8 terminal: no raw lone surrogate in the message
    if folder is not None:
        assert snapshot(folder) == before, "a file in the folder changed or was left behind"
    if model is not None:
        assert hooks_on(model) == [], "hooks left on the model"
        if reference is not None:
            assert torch.equal(logits(model), reference), "the model computes other logits"
    return message
