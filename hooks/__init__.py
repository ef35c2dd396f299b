"""Read and write a model's residual stream: capture and injection context managers.

Both take any decoder-only model (an ``ao.Model``, a transformers model, or a
PEFT wrapper), validate every argument before touching the model, and remove
exactly the hooks they added when the block ends, however it ends.

>>> import torch, activation_oracles as ao
>>> from activation_oracles.hooks import capture_residuals, inject_residuals
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> torch.manual_seed(0) and None
>>> model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=4,
...     num_attention_heads=2, num_key_value_heads=2, vocab_size=64)).eval()
>>> ids = torch.tensor([[1, 5, 9, 3]])
>>> with capture_residuals(model, [1, -1]) as cache:
...     _ = model(ids)
>>> sorted(cache), tuple(cache[1].shape)
([-1, 1], (1, 4, 16))
>>> with inject_residuals(model, 1, [[2]], cache[1][:, 2:3] * 0 + 1.0):
...     patched = model(ids).logits
>>> torch.equal(patched[0, :2], model(ids).logits[0, :2])   # earlier positions untouched
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import BackendError
from ..models import as_model
from ._common import MODES, Layers, Positions, ResidualCache, normalize_capture_positions, resolve_layers, \
    validate_injection

BACKENDS = ("torch", "nnsight", "transformer_lens")

__all__ = ["capture_residuals", "inject_residuals", "ResidualCache", "BACKENDS", "MODES"]


def _backend(name: str) -> Any:
    if name == "torch":
        from . import torch_backend as mod
    elif name == "nnsight":
        from . import nnsight_backend as mod
    elif name == "transformer_lens":
        from . import tl_backend as mod
    else:
        raise BackendError(f"backend={name!r} is not known; expected one of {BACKENDS}.")
    return mod


@contextmanager
def capture_residuals(model: Any, layers: Layers, *, positions: Positions | None = None, stop_early: bool = True,
                      backend: str = "torch") -> Iterator[ResidualCache]:
    """Record the output of decoder blocks ``layers`` during the forward passes inside the block.

    Args:
        model: an ``ao.Model``, a transformers causal LM, or a PEFT wrapper of one.
        layers: a block index or a list of them; negative indices count from the end.
        positions: ``None`` for every position, one list of token indices shared by all rows,
            or one list per row. Indices are each row's own (padding excluded; negative from the end).
        stop_early: stop the forward pass after the deepest requested block (the stop is absorbed
            here, so code after the model call inside the ``with`` block does not run).
        backend: ``"torch"`` (default), ``"nnsight"`` or ``"transformer_lens"``.

    Yields:
        A :class:`ResidualCache` mapping each layer as given to a detached
        ``[batch, seq, d_model]`` tensor (``[batch, n_positions, d_model]`` with positions),
        filled by the most recent forward pass.
    """
    mod = _backend(backend)
    m = as_model(model)
    resolved = resolve_layers(m, layers)
    norm_positions = normalize_capture_positions(positions)
    with mod.capture(m, resolved, norm_positions, stop_early) as cache:
        yield cache


@contextmanager
def inject_residuals(model: Any, layer: int, positions: Positions, vectors: Any, *, mode: str = "norm_add",
                     coeff: float = 1.0, backend: str = "torch") -> Iterator[None]:
    """Write ``vectors`` into the output of block ``layer`` at ``positions`` during prefill passes.

    Args:
        model: an ``ao.Model``, a transformers causal LM, or a PEFT wrapper of one.
        layer: the block whose output is modified (the reference oracle uses block 1).
        positions: one list of token indices per batch row (each row's own indices, padding excluded).
        vectors: one ``[K, d_model]`` tensor per row, or a ``[batch, K, d_model]`` tensor.
        mode: ``"norm_add"`` (h + c·‖h‖·v/‖v‖, the reference), ``"add"`` (h + c·v) or ``"replace"`` (v).
        coeff: the coefficient ``c``; ``norm_add`` with 0 leaves the model's output bit-identical.
        backend: ``"torch"`` (default), ``"nnsight"`` or ``"transformer_lens"``.

    Only passes that start from an empty KV cache are touched: the decode steps of
    ``generate()`` and continuations of a cached prefix run unchanged.
    """
    mod = _backend(backend)
    m = as_model(model)
    (_, idx), = resolve_layers(m, layer) if isinstance(layer, int) and not isinstance(layer, bool) \
        else resolve_layers(m, [layer])  # type: ignore[list-item]
    injection = validate_injection(m, positions, vectors, mode, coeff)
    with mod.inject(m, idx, injection):
        yield
