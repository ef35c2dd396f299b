"""Validation and padding bookkeeping shared by every hook backend.

Everything a user can get wrong is checked here, before any hook is
registered, so a bad call leaves the model exactly as it was.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import LayerNotFoundError, ModeError, NonFiniteError, PositionError, VectorShapeError
from ..models import Model

MODES = ("norm_add", "add", "replace")

Layers = int | Sequence[int]
RowPositions = Sequence[int]
Positions = Sequence[int] | Sequence[Sequence[int]]


class StopForward(Exception):
    """Raised by a capture hook after the deepest requested block; absorbed by the context manager."""


def resolve_layers(model: Model, layers: Layers) -> list[tuple[int, int]]:
    """Return ``[(as_given, non_negative_index), ...]`` or raise :class:`LayerNotFoundError`."""
    given = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else list(layers)
    if not given:
        raise LayerNotFoundError(f"layers={layers!r} is empty; pass at least one block index in "
                                 f"[-{model.n_layers}, {model.n_layers}).")
    out: list[tuple[int, int]] = []
    for layer in given:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise LayerNotFoundError(f"layer {layer!r} ({type(layer).__name__}) is not an int; pass block "
                                     f"indices in [-{model.n_layers}, {model.n_layers}).")
        if not -model.n_layers <= layer < model.n_layers:
            raise LayerNotFoundError(
                f"layer {layer} is out of range for {model.name!r}, which has {model.n_layers} decoder blocks; "
                f"expected an index in [-{model.n_layers}, {model.n_layers}) (negative counts from the end)."
            )
        out.append((layer, layer % model.n_layers))
    return out


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ModeError(f"mode={mode!r} is not known; expected one of {MODES}.")


def normalize_capture_positions(positions: Positions | None) -> list[int] | list[list[int]] | None:
    """``None`` (all), one list shared by every row, or one list per row."""
    if positions is None:
        return None
    rows = list(positions)
    if not rows:
        raise PositionError("positions is empty; pass None for all positions or at least one index.")
    if all(isinstance(p, int) and not isinstance(p, bool) for p in rows):
        return [int(p) for p in rows]
    per_row = [_int_row(r, i) for i, r in enumerate(rows)]
    counts = {len(r) for r in per_row}
    if len(counts) != 1:
        raise PositionError(f"positions per row have different counts {sorted(counts)}; capture returns a "
                            "[batch, n_positions, d_model] tensor, so every row needs the same count.")
    return per_row


def _int_row(row: Any, index: int) -> list[int]:
    if isinstance(row, torch.Tensor):
        row = row.tolist()
    if isinstance(row, (int, str, bytes)) or not isinstance(row, Sequence):
        raise PositionError(f"positions[{index}] is {row!r}; expected a list of int token indices for that row.")
    values = list(row)
    if not values:
        raise PositionError(f"positions[{index}] is empty; each row needs at least one token index.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise PositionError(f"positions[{index}] holds {v!r}; expected int token indices.")
    if len(set(values)) != len(values):
        raise PositionError(f"positions[{index}]={values} repeats an index; each position may appear once.")
    return [int(v) for v in values]


@dataclass
class Injection:
    """Validated injection request: per-row positions and float32 vectors on the model's device."""

    positions: list[list[int]]
    vectors: list[torch.Tensor]  # per row, [K, D] float32
    mode: str
    coeff: float


def validate_injection(model: Model, positions: Positions, vectors: Any, mode: str, coeff: float) -> Injection:
    check_mode(mode)
    if not isinstance(coeff, (int, float)) or isinstance(coeff, bool) or not math.isfinite(coeff):
        raise NonFiniteError(f"coeff={coeff!r}; expected a finite number (1.0 is the reference setting).")
    rows_in = list(positions) if not isinstance(positions, torch.Tensor) else positions.tolist()
    if not rows_in:
        raise PositionError("positions is empty; pass one list of token indices per batch row.")
    flat = all(isinstance(p, int) and not isinstance(p, bool) for p in rows_in)
    rows = [_int_row(rows_in, 0)] if flat else [_int_row(r, i) for i, r in enumerate(rows_in)]

    if isinstance(vectors, torch.Tensor):
        if vectors.dim() == 2 and len(rows) == 1:
            vec_rows = [vectors]
        elif vectors.dim() == 3:
            vec_rows = list(vectors.unbind(0))
        else:
            raise VectorShapeError(f"vectors has shape {tuple(vectors.shape)}; expected [batch, K, d_model] or, "
                                   f"for a single row, [K, d_model] with d_model={model.d_model}.")
    else:
        vec_rows = list(vectors)
    if len(vec_rows) != len(rows):
        raise VectorShapeError(f"got {len(vec_rows)} vector rows for {len(rows)} position rows; expected one "
                               "[K, d_model] tensor per row of positions.")
    device = model.device
    out: list[torch.Tensor] = []
    for i, (row, vec) in enumerate(zip(rows, vec_rows)):
        if not isinstance(vec, torch.Tensor):
            raise VectorShapeError(f"vectors[{i}] is a {type(vec).__name__}; expected a torch.Tensor [K, d_model].")
        if vec.dim() == 1:
            vec = vec.unsqueeze(0)
        if vec.dim() != 2 or vec.shape[0] != len(row):
            raise VectorShapeError(f"vectors[{i}] has shape {tuple(vec.shape)} for {len(row)} positions; expected "
                                   f"[{len(row)}, {model.d_model}] (one vector per position).")
        if vec.shape[1] != model.d_model:
            raise VectorShapeError(f"vectors[{i}] has width {vec.shape[1]} but {model.name!r} has d_model="
                                   f"{model.d_model}; vectors must come from a model of the same width.")
        v = vec.detach().to(device=device, dtype=torch.float32)
        if not torch.isfinite(v).all():
            raise NonFiniteError(f"vectors[{i}] holds NaN or inf; injected vectors must be finite.")
        if mode == "norm_add" and (v.norm(dim=-1) == 0).any():
            raise NonFiniteError(f"vectors[{i}] holds an all-zero vector; norm_add divides by ||v||. "
                                 "Use mode='add' for zero vectors or drop that position.")
        out.append(v)
    return Injection(rows, out, mode, float(coeff))


@dataclass
class PassInfo:
    """What the backbone's pre-hook saw about the current forward pass."""

    mask: torch.Tensor | None = None
    mask_cpu: torch.Tensor | None = None
    past_len: int = 0
    calls: int = 0
    _sig: inspect.Signature | None = field(default=None, repr=False)

    @property
    def prefill(self) -> bool:
        return self.past_len == 0


_CACHE_KEYS = ("past_key_values", "cache", "past_key_value", "past", "layer_past")


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        try:
            return int(cache.get_seq_length())
        except Exception:
            return 0
    try:  # legacy tuple-of-tuples cache
        return int(cache[0][0].shape[-2])
    except Exception:
        return 0


def make_pass_recorder(backbone: nn.Module, info: PassInfo):
    """A forward pre-hook (with kwargs) for the backbone that records the mask and the cache length."""
    try:
        info._sig = inspect.signature(backbone.forward)
    except (TypeError, ValueError):
        info._sig = None

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        arguments: dict[str, Any] = dict(kwargs)
        if args and info._sig is not None:
            try:
                arguments = dict(info._sig.bind_partial(*args, **kwargs).arguments)
                arguments.update(arguments.pop("kwargs", {}) or {})
            except TypeError:
                pass
        mask = arguments.get("attention_mask")
        info.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        # One host copy per pass: per-row lookups on a GPU mask would each force a device sync.
        info.mask_cpu = info.mask.detach().to("cpu") if info.mask is not None else None
        # The KV cache's keyword changed across transformers versions (past_key_values -> cache).
        cache = next((arguments[k] for k in _CACHE_KEYS if arguments.get(k) is not None), None)
        info.past_len = _cache_length(cache)
        info.calls += 1

    return pre_hook


def absolute_positions(row_positions: list[int], row: int, seq_len: int, info: PassInfo) -> list[int]:
    """Map a row's own token indices (negative = from its end) onto padded sequence indices."""
    mask = info.mask_cpu if info.mask_cpu is not None else info.mask
    if mask is not None and mask.shape[-1] == seq_len + info.past_len:
        valid = mask[row, info.past_len:].nonzero().flatten().tolist()
    else:
        valid = list(range(seq_len))
    n = len(valid)
    out = []
    for p in row_positions:
        if not -n <= p < n:
            raise PositionError(f"position {p} is out of range for batch row {row}, which has {n} tokens "
                                f"(excluding padding); expected an index in [-{n}, {n}).")
        out.append(valid[p])
    return out


def block_hidden(output: Any) -> torch.Tensor:
    """The residual tensor of a block's output (transformers 5 returns a tensor, older versions a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


def apply_injection(hidden_BSD: torch.Tensor, inj: Injection, info: PassInfo) -> torch.Tensor:
    """Return a new residual tensor with the injection applied (out of place, autograd-safe)."""
    batch, seq_len, _ = hidden_BSD.shape
    if batch != len(inj.positions):
        raise VectorShapeError(f"the forward pass has batch size {batch} but positions/vectors were given for "
                               f"{len(inj.positions)} rows; pass one list of positions per row.")
    rows: list[int] = []
    cols: list[int] = []
    for b, row_positions in enumerate(inj.positions):
        abs_pos = absolute_positions(row_positions, b, seq_len, info)
        rows.extend([b] * len(abs_pos))
        cols.extend(abs_pos)
    vectors_ND = torch.cat(inj.vectors, dim=0).to(hidden_BSD.device)
    index = (torch.tensor(rows).to(hidden_BSD.device, non_blocking=True),
             torch.tensor(cols).to(hidden_BSD.device, non_blocking=True))
    selected_ND = hidden_BSD[index].float()
    if inj.mode == "norm_add":
        unit_ND = vectors_ND / vectors_ND.norm(dim=-1, keepdim=True)
        new_ND = selected_ND + inj.coeff * selected_ND.norm(dim=-1, keepdim=True) * unit_ND
    elif inj.mode == "add":
        new_ND = selected_ND + inj.coeff * vectors_ND
    else:
        new_ND = vectors_ND.expand_as(selected_ND)
    return hidden_BSD.index_put(index, new_ND.to(hidden_BSD.dtype))


class ResidualCache(dict):
    """Maps each requested layer, as given, to its captured residual tensor.

    ``attention_mask`` holds the 2-D mask of the captured pass (``None`` when
    the call had none), so padded positions can be told apart.
    """

    attention_mask: torch.Tensor | None = None

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.items()}
        return f"ResidualCache({shapes})"


def select_positions(hidden_BSD: torch.Tensor, positions: Any, info: PassInfo) -> torch.Tensor:
    """The captured value: every position (a copy), or each row's requested positions."""
    if positions is None:
        return hidden_BSD.clone()
    batch, seq_len = hidden_BSD.shape[:2]
    per_row = positions if isinstance(positions[0], list) else [positions] * batch
    if len(per_row) != batch:
        raise PositionError(f"positions were given for {len(per_row)} rows but the batch has {batch}; "
                            "pass one list per row or one shared list.")
    return torch.stack([hidden_BSD[b, absolute_positions(list(p), b, seq_len, info)] for b, p in enumerate(per_row)])


class CaptureSink:
    """The part of a capture every backend shares: which layers were asked for, and storing them.

    Backends differ only in how they reach a block's output; they hand it to :meth:`record`.
    """

    def __init__(self, resolved: list[tuple[int, int]], positions: Any) -> None:
        self.cache = ResidualCache()
        self.positions = positions
        self.by_index: dict[int, list[int]] = {}
        for given, idx in resolved:
            self.by_index.setdefault(idx, []).append(given)
        self.deepest = max(self.by_index)

    def record(self, idx: int, hidden_BSD: torch.Tensor, info: PassInfo) -> None:
        value = select_positions(hidden_BSD.detach(), self.positions, info)
        for given in self.by_index[idx]:
            self.cache[given] = value
        self.cache.attention_mask = info.mask
