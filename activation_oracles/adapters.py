"""Switch LoRA adapters on a shared PEFT model for the duration of a block.

A target organism and an oracle built on the same base model keep one copy of
the base weights: each is a named LoRA adapter on the same modules, and every
call runs inside ``use_adapter(model, name)`` (``None`` = the bare base model).
Outside such blocks, ``park_adapters`` leaves the shared model acting as its base.

>>> import torch.nn as nn
>>> with use_adapter(nn.Linear(2, 2), None):   # no adapters at all: nothing to switch
...     pass
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn as nn

from .errors import AdapterError


def tuner_layers(module: nn.Module) -> list[Any]:
    """Every PEFT tuner layer (e.g. ``lora.Linear``) inside ``module``."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def adapter_names(module: nn.Module) -> set[str]:
    names: set[str] = set()
    for layer in tuner_layers(module):
        for attr in ("lora_A", "lora_embedding_A"):
            d = getattr(layer, attr, None)
            if d is not None:
                names.update(d.keys())
    return names


@contextmanager
def use_adapter(module: nn.Module, name: str | None) -> Iterator[None]:
    """Run the block with only adapter ``name`` active (``None``: all adapters off), then restore."""
    layers = tuner_layers(module)
    if not layers:
        if name is not None:
            raise AdapterError(f"adapter {name!r} requested but the model has no PEFT adapters loaded.")
        yield
        return
    if name is not None and name not in adapter_names(module):
        raise AdapterError(f"adapter {name!r} is not loaded; loaded adapters are {sorted(adapter_names(module))}.")
    saved = [(layer, bool(layer.disable_adapters), list(layer.active_adapters)) for layer in layers]
    try:
        for layer in layers:
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(name)
        yield
    finally:
        for layer, disabled, active in saved:
            if active:
                layer.set_adapter(active)
            layer.enable_adapters(not disabled)


@contextmanager
def inference_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block (no dropout), then each one's own mode back.

    A LoRA adapter attached with dropout (``lora_dropout > 0``) starts in training mode, so
    without this an oracle's answers would change from call to call.

    >>> m = nn.Sequential(nn.Dropout(0.5)).train()
    >>> with inference_mode(m):
    ...     m[0].training
    False
    >>> m[0].training
    True
    """
    saved = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in saved:
            m.training = False
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def park_adapters(module: nn.Module) -> None:
    """Turn every adapter off so the shared model behaves as its base outside ``use_adapter`` blocks."""
    for layer in tuner_layers(module):
        layer.enable_adapters(False)
