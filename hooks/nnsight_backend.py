"""Residual capture and injection through nnsight 0.8 tracing, on the caller's own model.

Same contract as :mod:`.torch_backend` (the public context managers validate
everything first and call :func:`capture` / :func:`inject` here); only the
machinery differs. While a block is open, the *backbone* (the module that owns
the decoder blocks, e.g. ``LlamaModel``) is wrapped in an ``nnsight.NNsight``
envoy tree and its ``forward`` is routed through one nnsight trace per pass::

    model(...) / model.hf(...) / generate() / a PEFT wrapper
      -> backbone.forward == _Session.route
           -> with envoy.trace(...):                 # the real forward, interleaved
                  for each requested block, shallowest first:
                      read blocks[i].output, let every open request read or replace it
                  tracer.stop() after the deepest block, if a capture asked for stop_early

Routing at the backbone, not at the top-level model, means every way of
running the model is traced, and the code inside the ``with`` block is the same
for every backend. Passes with nothing to do (decode steps of ``generate()``
under an injection) skip the trace and run the backbone directly.

Blocks nested on one model share one envoy tree (a session); each adds its
request and the last one to close tears the tree down. nnsight serves values in
execution order, so one trace body visiting blocks in depth order is how
several requests can share a pass.

Leaving nothing behind:

- nnsight instruments a module by writing a controller into its instance
  ``__dict__`` (``forward`` and ``__nnsight__``) and keeps it there for good. The
  session records those two slots on every backbone module before wrapping and
  puts them back exactly when it closes (normal exit, exception, KeyboardInterrupt).
- Importing nnsight patches ``torch.Tensor.backward`` and mounts ``.save`` on
  every Python object. When this module is the one that first imports nnsight it
  undoes both (the trace body here hands results back through a shared dict and
  needs neither). Import nnsight yourself beforehand to keep them for your own traces.
- No tokenizer is touched: the backbone is wrapped with the plain ``NNsight``
  envoy, not ``LanguageModel`` (which switches tokenizers to left padding).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    block_hidden,
    make_pass_recorder,
    replace_hidden,
)

BACKEND = "nnsight"
_MISSING = object()
_STATE = "__nnsight__"  # the instance slot nnsight keeps a module's controller state in (nnsight.intervention.source.STATE)
_SLOTS = ("forward", _STATE)

# An op sees a block's output (and the pass's PassInfo) and returns a replacement or None.
Op = Callable[[Any, PassInfo], Any]


def _import_nnsight() -> Any:
    """Import nnsight >= 0.8; when this is the first import, undo its import-time global patches."""
    if "nnsight" in sys.modules:
        nnsight = sys.modules["nnsight"]
    else:
        backward = torch.Tensor.backward
        had_save = "save" in vars(object)
        try:
            import nnsight
        except ImportError as exc:
            raise BackendError("backend='nnsight' needs the nnsight package; install it with "
                               "pip install 'nnsight>=0.8', or use backend='torch'.") from exc
        torch.Tensor.backward = backward  # nnsight wraps it to support `with loss.backward():`
        if not had_save and "save" in vars(object):
            from nnsight._c import unmount

            if unmount is not None:
                unmount("save")
    version = tuple(int(p) for p in str(getattr(nnsight, "__version__", "0.8")).split(".")[:2] if p.isdigit())
    if version < (0, 8):
        raise BackendError(f"backend='nnsight' needs nnsight >= 0.8, found {nnsight.__version__}; "
                           "upgrade it (pip install -U nnsight) or use backend='torch'.")
    return nnsight


@dataclass(eq=False)
class _Request:
    """What one open ``capture``/``inject`` block wants from each pass."""

    ops: dict[int, Op]
    prefill_only: bool = False
    stop_after: int | None = None


@dataclass(eq=False)
class _Session:
    """One envoy tree over one backbone, shared by every nnsight block open on it."""

    model: Model
    requests: list[_Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        nnsight = _import_nnsight()
        self.backbone: nn.Module = self.model.backbone
        current = self.backbone.__dict__.get("forward")
        other = getattr(current, "_ao_backend", None)
        if other is not None:
            raise BackendError(f"a backend={other!r} block is already open on this model; blocks nested on one "
                               "model must use the same backend.")
        self.info = PassInfo()
        self._record = make_pass_recorder(self.backbone, self.info)
        self._saved = [(m, [m.__dict__.get(slot, _MISSING) for slot in _SLOTS]) for m in self.backbone.modules()]
        try:
            self.envoy = nnsight.NNsight(self.backbone)
            self._body = self.backbone.__dict__["forward"]  # nnsight's controller: runs the backbone for the trace
            self._envoys = self.envoy.interleaver.envoys  # id(module) -> its envoy
            self.backbone.__dict__["forward"] = self.route
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for module, values in self._saved:
            for slot, value in zip(_SLOTS, values):
                if value is _MISSING:
                    module.__dict__.pop(slot, None)
                else:
                    module.__dict__[slot] = value
        self.__dict__.pop("envoy", None)
        self.__dict__.pop("_body", None)
        self.__dict__.pop("_envoys", None)

    def _plan(self) -> tuple[list[tuple[int, list[Op]]], int | None]:
        by_layer: dict[int, list[Op]] = {}
        stops = []
        for request in self.requests:
            if request.prefill_only and not self.info.prefill:
                continue
            for idx, op in request.ops.items():
                by_layer.setdefault(idx, []).append(op)
            if request.stop_after is not None:
                stops.append(request.stop_after)
        stop_after = min(stops) if stops else None
        plan = sorted((idx, ops) for idx, ops in by_layer.items() if stop_after is None or idx <= stop_after)
        return plan, stop_after

    def route(self, *args: Any, **kwargs: Any) -> Any:
        """Stands in for ``backbone.forward`` while the session is open."""
        self._record(self.backbone, args, kwargs)
        plan, stop_after = self._plan()
        if not plan:
            return self._body(*args, **kwargs)
        return self._traced(plan, stop_after, args, kwargs)

    route._ao_backend = BACKEND  # type: ignore[attr-defined]

    def _traced(self, plan: list[tuple[int, list[Op]]], stop_after: int | None, args: tuple, kwargs: dict) -> Any:
        # nnsight compiles this `with` body and runs it interleaved with the forward pass; results
        # travel back through `box`, a shared object, so nothing depends on nnsight's save mechanics.
        box: dict[str, Any] = {}
        info, layers, envoys = self.info, self.model.layers, self._envoys
        with self.envoy.trace(*args, fn=self._body, **kwargs) as tracer:
            for idx, ops in plan:
                block = envoys[id(layers[idx])]
                output = block.output
                for op in ops:
                    new = op(output, info)
                    if new is not None:
                        block.output = new
                        output = new
                if idx == stop_after:
                    box["stopped"] = True
                    tracer.stop()
            box["output"] = self.envoy.output
        if box.get("stopped"):
            raise StopForward()
        return box["output"]


_SESSIONS: dict[int, _Session] = {}


@contextmanager
def _open(model: Model, request: _Request) -> Iterator[PassInfo]:
    key = id(model.backbone)
    session = _SESSIONS.get(key)
    if session is None or session.backbone is not model.backbone:
        session = _Session(model)
        _SESSIONS[key] = session
    session.requests.append(request)
    try:
        yield session.info
    finally:
        session.requests.remove(request)
        if not session.requests:
            del _SESSIONS[key]
            session.close()


@contextmanager
def capture(model: Model, resolved: list[tuple[int, int]], positions: Any, stop_early: bool) -> Iterator[ResidualCache]:
    sink = CaptureSink(resolved, positions)

    def make_op(idx: int) -> Op:
        def op(output: Any, info: PassInfo) -> None:
            sink.record(idx, block_hidden(output), info)
        return op

    request = _Request({idx: make_op(idx) for idx in sink.by_index}, stop_after=sink.deepest if stop_early else None)
    with _open(model, request):
        try:
            yield sink.cache
        except StopForward:
            pass


@contextmanager
def inject(model: Model, idx: int, injection: Injection) -> Iterator[None]:
    def op(output: Any, info: PassInfo) -> Any:
        return replace_hidden(output, apply_injection(block_hidden(output), injection, info))

    with _open(model, _Request({idx: op}, prefill_only=True)):
        yield
