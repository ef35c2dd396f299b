"""Residual capture and injection with plain PyTorch forward hooks (the default, fastest backend).

Every hook is registered through an ``ExitStack`` right after all inputs were
validated, so a failing call registers nothing and a finished, failed or
interrupted block removes exactly the hooks it added.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch.nn as nn

from ..models import Model
from ._common import (
    CaptureSink,
    Injection,
    PassInfo,
    ResidualCache,
    StopForward,
    apply_injection,
    block_hidden,
    make_pass_recorder,
    replace_hidden,
)


def _register(stack: ExitStack, handle: Any) -> None:
    stack.callback(handle.remove)


def _refuse_inside_other_backend(model: Model) -> None:
    """Another backend routes the backbone elsewhere while its block is open: torch hooks would see nothing."""
    other = getattr(model.backbone.__dict__.get("forward"), "_ao_backend", None)
    if other is not None:
        from ..errors import BackendError

        raise BackendError(f"a {other!r} hook block is open on this model; nested blocks must use the same backend "
                           f"(pass backend={other!r}) or close the outer block first.")


@contextmanager
def capture(model: Model, resolved: list[tuple[int, int]], positions: Any, stop_early: bool) -> Iterator[ResidualCache]:
    _refuse_inside_other_backend(model)
    sink = CaptureSink(resolved, positions)
    info = PassInfo()

    def make_hook(idx: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            sink.record(idx, block_hidden(output), info)
            if stop_early and idx == sink.deepest:
                raise StopForward()
        return hook

    with ExitStack() as stack:
        _register(stack, model.backbone.register_forward_pre_hook(make_pass_recorder(model.backbone, info),
                                                                  with_kwargs=True))
        for idx in sink.by_index:
            _register(stack, model.layers[idx].register_forward_hook(make_hook(idx)))
        try:
            yield sink.cache
        except StopForward:
            pass


@contextmanager
def inject(model: Model, idx: int, injection: Injection) -> Iterator[None]:
    _refuse_inside_other_backend(model)
    info = PassInfo()

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if not info.prefill:  # decode steps of generate() and cached continuations are left alone
            return None
        return replace_hidden(output, apply_injection(block_hidden(output), injection, info))

    with ExitStack() as stack:
        _register(stack, model.backbone.register_forward_pre_hook(make_pass_recorder(model.backbone, info),
                                                                  with_kwargs=True))
        _register(stack, model.layers[idx].register_forward_hook(hook))
        yield
