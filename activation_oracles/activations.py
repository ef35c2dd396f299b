"""The ``Activations`` type: captured residual vectors with their provenance.

An ``Activations`` holds, for one context, the residual vectors at some token
positions of one or more source layers, plus everything needed to check that
two sets fit together: model name, depth, width, token ids and positions.

>>> import torch
>>> acts = Activations({3: torch.ones(2, 4)}, positions=(1, 2), token_ids=(5, 6, 7),
...                    tokens=("a", "b", "c"), model_name="toy", n_layers=6, d_model=4)
>>> acts.last(1).positions, acts.layer
((2,), 3)
>>> (acts - acts).vectors[3].abs().sum().item()
0.0
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .errors import ActivationsMismatchError, EmptyInputError, PositionError, UnsafeFileError

_FORMAT = "activation_oracles.activations/1"


def parse_position_spec(spec: Any, n_tokens: int) -> list[int]:
    """Resolve ``"all"``, ``"last:N"``, ``"i:j"``, an int, or a list of ints to token indices.

    >>> parse_position_spec("last:2", 5), parse_position_spec("1:3", 5), parse_position_spec(-1, 5)
    ([3, 4], [1, 2], [4])
    """
    if spec is None or spec == "all":
        idx = list(range(n_tokens))
    elif isinstance(spec, str):
        m_last = re.fullmatch(r"last:(\d+)", spec.strip())
        m_range = re.fullmatch(r"(-?\d*):(-?\d*)", spec.strip())
        if m_last:
            n = int(m_last.group(1))
            if n < 1:
                raise PositionError(f"positions={spec!r} selects no token; use last:N with N >= 1.")
            idx = list(range(max(0, n_tokens - n), n_tokens))
        elif m_range:
            start = int(m_range.group(1)) if m_range.group(1) else None
            stop = int(m_range.group(2)) if m_range.group(2) else None
            idx = list(range(n_tokens))[slice(start, stop)]
        else:
            raise PositionError(f"positions={spec!r} is not understood; expected 'all', 'last:N', 'i:j', "
                                "an int, or a list of ints.")
    elif isinstance(spec, int) and not isinstance(spec, bool):
        idx = [spec]
    elif isinstance(spec, Iterable):
        idx = list(spec)
        if any(isinstance(p, bool) or not isinstance(p, int) for p in idx):
            raise PositionError(f"positions={spec!r} must hold ints only.")
    else:
        raise PositionError(f"positions={spec!r} is not understood; expected 'all', 'last:N', 'i:j', "
                            "an int, or a list of ints.")
    out = []
    for p in idx:
        if not -n_tokens <= p < n_tokens:
            raise PositionError(f"position {p} is out of range for a context of {n_tokens} tokens; "
                                f"expected an index in [-{n_tokens}, {n_tokens}).")
        out.append(p % n_tokens)
    if not out:
        raise PositionError(f"positions={spec!r} selects zero positions of {n_tokens} tokens; select at least one.")
    if len(set(out)) != len(out):
        raise PositionError(f"positions={spec!r} repeats a token index.")
    return out


@dataclass(frozen=True, eq=False)
class Activations:
    """Residual vectors of one context, per source layer, with provenance.

    Attributes:
        vectors: ``{layer: [n_positions, d_model] tensor}``.
        positions: token index (into ``token_ids``) of each vector row.
        token_ids: the whole context's token ids, as the model saw them.
        tokens: the decoded token strings, one per id.
        model_name: the source model.
        n_layers: the source model's depth (so a percent depth can be checked).
        d_model: residual width.
        kind: ``"residual"``, or ``"difference"`` for the result of ``a - b``.
    """

    vectors: dict[int, torch.Tensor]
    positions: tuple[int, ...]
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    model_name: str
    n_layers: int
    d_model: int
    kind: str = "residual"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise EmptyInputError("Activations needs at least one layer of vectors.")
        if not self.positions:
            raise PositionError("Activations with zero positions; select at least one token.")
        for layer, vec in self.vectors.items():
            if vec.dim() != 2 or vec.shape != (len(self.positions), self.d_model):
                raise ActivationsMismatchError(
                    f"layer {layer} vectors have shape {tuple(vec.shape)}; expected "
                    f"[{len(self.positions)}, {self.d_model}] (n_positions, d_model).")
        if len(self.tokens) != len(self.token_ids):
            raise ActivationsMismatchError(f"{len(self.tokens)} token strings for {len(self.token_ids)} token ids.")
        for p in self.positions:
            if not 0 <= p < len(self.token_ids):
                raise PositionError(f"position {p} is outside the context of {len(self.token_ids)} tokens.")

    # -- views ---------------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))

    @property
    def layer(self) -> int:
        """The single source layer (raises when there are several; use ``at_layer`` first)."""
        if len(self.vectors) != 1:
            raise ActivationsMismatchError(f"these activations hold layers {self.layers}; pick one with "
                                           "acts.at_layer(L).")
        return next(iter(self.vectors))

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.vectors.values())).dtype

    def __len__(self) -> int:
        return len(self.positions)

    def vectors_for(self, layer: int | None = None) -> torch.Tensor:
        """The ``[n_positions, d_model]`` tensor of ``layer`` (default: the single layer)."""
        key = self.layer if layer is None else layer
        if key not in self.vectors:
            raise ActivationsMismatchError(f"no vectors for layer {key}; these activations hold {self.layers}.")
        return self.vectors[key]

    def at_layer(self, layer: int) -> Activations:
        return replace(self, vectors={layer: self.vectors_for(layer)})

    def select(self, positions: Sequence[int]) -> Activations:
        """Keep the vectors at these token indices (each must have been captured)."""
        wanted = [p % len(self.token_ids) if -len(self.token_ids) <= p < len(self.token_ids) else p
                  for p in positions]
        if not wanted:
            raise PositionError("select() got zero positions; pass at least one captured token index.")
        rows = []
        for p in wanted:
            if p not in self.positions:
                raise PositionError(f"token {p} was not captured; captured positions are {list(self.positions)}.")
            rows.append(self.positions.index(p))
        index = torch.tensor(rows)
        return replace(self, vectors={k: v[index] for k, v in self.vectors.items()}, positions=tuple(wanted))

    def token(self, position: int) -> Activations:
        """A single-token input (the reference's token mode)."""
        return self.select([position])

    def segment(self, start: int, end: int | None = None) -> Activations:
        """The captured positions with ``start <= token index < end`` (Python slice semantics over tokens)."""
        span = set(range(len(self.token_ids))[slice(start, end)])
        return self.select([p for p in self.positions if p in span])

    def last(self, n: int) -> Activations:
        """The last ``n`` captured positions."""
        if n < 1:
            raise PositionError(f"last({n}) selects no position; pass n >= 1.")
        return self.select(list(self.positions[-n:]))

    def full(self) -> Activations:
        return self

    def to(self, *args: Any, **kwargs: Any) -> Activations:
        return replace(self, vectors={k: v.to(*args, **kwargs) for k, v in self.vectors.items()})

    # -- arithmetic ----------------------------------------------------------------------------------
    def __sub__(self, other: Activations) -> Activations:
        """Difference of two captures of the same tokens and layers (e.g. fine-tuned minus base)."""
        if not isinstance(other, Activations):
            return NotImplemented
        problems = []
        if self.token_ids != other.token_ids:
            problems.append("token ids differ")
        if self.positions != other.positions:
            problems.append(f"positions differ ({list(self.positions)[:5]}... vs {list(other.positions)[:5]}...)")
        if self.layers != other.layers:
            problems.append(f"layers differ ({self.layers} vs {other.layers})")
        if self.d_model != other.d_model:
            problems.append(f"d_model differs ({self.d_model} vs {other.d_model})")
        if problems:
            raise ActivationsMismatchError(
                "cannot subtract activations: " + "; ".join(problems) +
                ". Capture both models on the same prompt, layers and positions.")
        vectors = {k: self.vectors[k].float() - other.vectors[k].float() for k in self.layers}
        return replace(self, vectors=vectors, kind="difference",
                       model_name=f"{self.model_name} - {other.model_name}")

    # -- files ---------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return {
            "format": _FORMAT,
            "model_name": self.model_name,
            "n_layers": str(self.n_layers),
            "d_model": str(self.d_model),
            "kind": self.kind,
            "layers": json.dumps(list(self.layers)),
            "positions": json.dumps(list(self.positions)),
            "token_ids": json.dumps(list(self.token_ids)),
            "tokens": json.dumps(list(self.tokens)),
            "meta": json.dumps(self.meta),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one safetensors file (provenance in its metadata). Written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {f"layer_{k}": v.detach().contiguous().cpu() for k, v in self.vectors.items()}
        save_file(tensors, str(tmp), metadata=self.metadata())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Activations:
        """Read a file written by :meth:`save`. Never unpickles: anything but safetensors is refused."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"activations file {str(path)!r} does not exist.")
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80" or head == b"PK":
            raise UnsafeFileError(f"{str(path)!r} looks like a pickle / torch.save file; activation_oracles "
                                  "loads only safetensors files written by Activations.save().")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise UnsafeFileError(f"{str(path)!r} is not a readable safetensors file ({exc}); expected a file "
                                  "written by Activations.save().") from None
        if meta.get("format") != _FORMAT:
            raise ActivationsMismatchError(f"{str(path)!r} is a safetensors file but not an activation_oracles "
                                           f"activations file (format={meta.get('format')!r}).")
        layers = json.loads(meta["layers"])
        return cls(
            vectors={int(k): tensors[f"layer_{k}"] for k in layers},
            positions=tuple(json.loads(meta["positions"])),
            token_ids=tuple(json.loads(meta["token_ids"])),
            tokens=tuple(json.loads(meta["tokens"])),
            model_name=meta["model_name"],
            n_layers=int(meta["n_layers"]),
            d_model=int(meta["d_model"]),
            kind=meta.get("kind", "residual"),
            meta=json.loads(meta.get("meta", "{}")),
        )

    def __repr__(self) -> str:
        return (f"Activations(model={self.model_name!r}, layers={list(self.layers)}, n_positions={len(self)}, "
                f"n_tokens={len(self.token_ids)}, d_model={self.d_model}, kind={self.kind!r})")
