"""Residual capture and injection through a TransformerLens 4 ``TransformerBridge``.

Same contract as :mod:`.torch_backend`. Building a bridge swaps a model's
submodules for bridge components and forces eager attention, so it is never
built on the caller's model: it is built on a *structural copy* of it
(``copy.deepcopy`` with every parameter shared, everything else copied). While
a block is open, the caller's backbone (the module owning the decoder blocks)
routes its forward to the copy's backbone, whose blocks fire the bridge's hook
points (``blocks.{i}.hook_out``, the block's output residual)::

    model(...) / model.hf(...) / generate()
      -> caller's lm head etc.  ->  backbone.forward == _Session.route
           -> copy's backbone: bridge blocks, TL hooks added with bridge.hooks(...)

The caller's model runs its own embedding-free outer code (LM head, loss,
``generate`` loop) and gets its usual output object (``.logits`` and all);
positions, masks and caches follow Hugging Face semantics exactly as with the
torch backend (we do not go through ``bridge.forward``, which derives position
ids from the mask itself). The bridge computes attention eagerly, so values at
*padding* positions of a left-padded batch can differ from an SDPA model's;
real positions agree to float precision.

Cache: the bridge (copy + hook points) is built once per model object and kept
in a ``WeakKeyDictionary``; it costs module objects and buffers, not weights.
It is rebuilt when the caller's model changed since it was built: its module
tree, a parameter's identity, version counter (in-place updates such as an
optimizer step), storage, dtype or device, a buffer's, a training flag, or a
PEFT adapter's enabled/active/merged state. A bridge in use by an open block is
never rebuilt. Hooks registered on the caller's modules do not fire here (the
copy runs instead); nest blocks of one backend only.

The bridge is built with ``transformer_lens.model_bridge.sources.build_bridge_from_module``
(what ``boot_transformers(name, hf_model=...)`` does after loading, minus its
tokenizer handling and load-time class patches): no hub access, no tokenizer
touched.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import BackendError
from ..models import Model
from ._common import (
    CaptureSink,
    Injection,
    PassInfo,
    ResidualCache,
    StopForward,
    apply_injection,
    make_pass_recorder,
)

BACKEND = "transformer_lens"
_MISSING = object()
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _version(t: torch.Tensor) -> int:
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors keep no version counter
        return -1


def _fingerprint(hf: nn.Module) -> tuple:
    """Everything whose change makes a built bridge stale (see the module docstring)."""
    modules = tuple((id(m), m.training, getattr(m, "_disable_adapters", None), str(getattr(m, "_active_adapter", "")),
                     tuple(getattr(m, "merged_adapters", None) or ())) for m in hf.modules())
    tensors = tuple((id(t), _version(t), t.data_ptr(), t.dtype, t.device)
                    for t in [*hf.parameters(), *hf.buffers()])
    return modules, tensors


@dataclass(eq=False)
class _Bridge:
    bridge: Any                # the TransformerBridge over the copy
    backbone: nn.Module        # the copy's backbone, run in place of the caller's
    hook_names: list[str]      # block i's output hook point
    fingerprint: tuple
    users: int = 0


_BRIDGES: weakref.WeakKeyDictionary[nn.Module, _Bridge] = weakref.WeakKeyDictionary()


def _build(model: Model) -> _Bridge:
    try:
        from transformer_lens.model_bridge.sources import build_bridge_from_module
        from transformer_lens.utilities.attn_implementation import force_eager_attention
    except ImportError as exc:
        raise BackendError("backend='transformer_lens' needs TransformerLens 4 (pip install 'transformer-lens>=4'); "
                           "or use backend='torch'.") from exc
    hf = model.hf
    # A copy of the module tree that shares every parameter: no weight memory, and the caller's
    # modules, config and attention setting are never touched by the bridge.
    clone = copy.deepcopy(hf, memo={id(p): p for p in hf.parameters()})
    for module in clone.modules():  # hooks copied from the caller would outlive their handles here
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if hooks:
                hooks.clear()
        # transformers marks a model whose output-recording hooks (output_hidden_states=...) are in
        # place; they were just dropped, so let it install them again on first use
        module.__dict__.pop("_output_capturing_hooks_installed", None)
    base = clone.get_base_model() if callable(getattr(clone, "get_base_model", None)) else clone  # PEFT
    layers = list(clone.get_submodule(model.layers_path))
    architecture = type(base).__name__
    try:
        force_eager_attention(base)
        bridge = build_bridge_from_module(base, architecture, hf_config=base.config, tokenizer=None,
                                          dtype=model.dtype, device=model.device, model_name=model.name)
    except Exception as exc:
        raise BackendError(f"TransformerLens could not build a TransformerBridge for {model.name!r} "
                           f"({architecture}): {exc}. Use backend='torch' or backend='nnsight' for this model."
                           ) from exc
    # The bridge swaps submodules (the block list included): look the backbone and blocks up afresh.
    backbone = clone.get_submodule(model.layers_path.rsplit(".", 1)[0] if "." in model.layers_path else "")
    stack = clone.get_submodule(model.layers_path)
    blocks = list(getattr(bridge, "blocks", None) or [])
    hook_names = []
    for i, layer in enumerate(layers):
        block = next((b for b in blocks if getattr(b, "original_component", None) is layer), None)
        if block is None or stack[i] is not block or getattr(block.hook_out, "name", None) is None:
            raise BackendError(f"TransformerLens did not bridge decoder block {i} of {model.name!r} "
                               f"({architecture}) where the model runs it; use backend='torch' or 'nnsight'.")
        hook_names.append(block.hook_out.name)
    for module in bridge.modules():  # our copy only: see _cache_alias
        if callable(getattr(module, "_update_kv_cache", None)):
            module.register_forward_pre_hook(_cache_alias, with_kwargs=True)
    return _Bridge(bridge, backbone, hook_names, _fingerprint(hf))


def _cache_alias(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Hand an attention bridge the KV cache under the name it reads.

    transformers >= 5.2x passes the cache to attention as ``cache=``; TransformerLens 4.3's
    attention bridges read ``past_key_values=`` (or ``layer_past=``) and otherwise skip the cache
    update, so every decode step of ``generate()`` would attend to itself alone.
    """
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        return args, {**kwargs, "past_key_values": kwargs["cache"]}
    return None


def _bridge_for(model: Model) -> _Bridge:
    entry = _BRIDGES.get(model.hf)
    if entry is not None and (entry.users > 0 or entry.fingerprint == _fingerprint(model.hf)):
        return entry
    entry = _build(model)
    _BRIDGES[model.hf] = entry
    return entry


# ---------------------------------------------------------------------------------------------
# Routing the caller's backbone to the bridge while blocks are open
# ---------------------------------------------------------------------------------------------

class _Session:
    """Routes one caller backbone to its bridge; shared by every TL block open on that model."""

    def __init__(self, model: Model) -> None:
        self.backbone = model.backbone
        other = getattr(self.backbone.__dict__.get("forward"), "_ao_backend", None)
        if other is not None:
            raise BackendError(f"a backend={other!r} block is already open on this model; blocks nested on one "
                               "model must use the same backend.")
        self.entry = _bridge_for(model)
        self.info = PassInfo()
        self._record = make_pass_recorder(self.backbone, self.info)
        self.users = 0
        self._saved = self.backbone.__dict__.get("forward", _MISSING)
        self.entry.users += 1
        self.backbone.__dict__["forward"] = self.route

    def route(self, *args: Any, **kwargs: Any) -> Any:
        """Stands in for the caller's ``backbone.forward`` while the session is open."""
        self._record(self.backbone, args, kwargs)
        return self.entry.backbone(*args, **kwargs)

    route._ao_backend = BACKEND  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._saved is _MISSING:
            self.backbone.__dict__.pop("forward", None)
        else:
            self.backbone.__dict__["forward"] = self._saved
        self.entry.users -= 1


_SESSIONS: dict[int, _Session] = {}


@contextmanager
def _open(model: Model, hooks: dict[int, Any]) -> Iterator[None]:
    key = id(model.backbone)
    session = _SESSIONS.get(key)
    if session is None or session.backbone is not model.backbone:
        session = _Session(model)
        _SESSIONS[key] = session
    session.users += 1
    try:
        entry = session.entry
        fwd_hooks = [(entry.hook_names[idx], make(session.info)) for idx, make in hooks.items()]
        with entry.bridge.hooks(fwd_hooks=fwd_hooks):
            yield
    finally:
        session.users -= 1
        if not session.users:
            del _SESSIONS[key]
            session.close()


@contextmanager
def capture(model: Model, resolved: list[tuple[int, int]], positions: Any, stop_early: bool) -> Iterator[ResidualCache]:
    sink = CaptureSink(resolved, positions)

    def maker(idx: int):
        def make(info: PassInfo):
            def hook(resid_BSD: torch.Tensor, hook: Any) -> None:
                sink.record(idx, resid_BSD, info)
                if stop_early and idx == sink.deepest:
                    raise StopForward()
            return hook
        return make

    with _open(model, {idx: maker(idx) for idx in sink.by_index}):
        try:
            yield sink.cache
        except StopForward:
            pass


@contextmanager
def inject(model: Model, idx: int, injection: Injection) -> Iterator[None]:
    def make(info: PassInfo):
        def hook(resid_BSD: torch.Tensor, hook: Any) -> torch.Tensor | None:
            if not info.prefill:  # decode steps of generate() and cached continuations are left alone
                return None
            return apply_injection(resid_BSD, injection, info)
        return hook

    with _open(model, {idx: make}):
        yield
