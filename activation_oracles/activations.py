"""The ``Activations`` type: captured residual vectors with their provenance.

An ``Activations`` holds, for one context, the residual vectors at some token
positions of one or more source layers, plus everything needed to check that
two sets fit together: model name, depth, width, token ids and positions.
(A little over 400 lines: one public type, its checks, views and safetensors round trip.)

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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .checks import check_input_file, check_int, check_output_file
from .files import temp_beside, usual_mode
from .errors import (ActivationsFileError, ActivationsMismatchError, ArgumentError, ArgumentTypeError,
                     EmptyInputError, OutputWriteError, PositionError, UnsafeFileError)

_FORMAT = "activation_oracles.activations/1"


def parse_position_spec(spec: Any, n_tokens: int) -> list[int]:
    """Resolve ``"all"``, ``"last:N"``, ``"i:j"``, an int, or a list of ints to token indices.

    A spec that reaches outside the context is an error, not a silent clamp: ``last:99`` on a
    31-token text would otherwise capture 31 vectors where 99 were asked for.

    >>> parse_position_spec("last:2", 5), parse_position_spec("1:3", 5), parse_position_spec(-1, 5)
    ([3, 4], [1, 2], [4])
    """
    understood = ("expected 'all', 'last:N', 'i:j' (a Python slice), an int, or a list of ints.")
    if spec is None or (isinstance(spec, str) and spec.strip() == "all"):
        idx = list(range(n_tokens))
    elif isinstance(spec, str):
        m_last = re.fullmatch(r"last:(\d+)", spec.strip())
        m_range = re.fullmatch(r"(-?\d*):(-?\d*)", spec.strip())
        if m_last:
            n = int(m_last.group(1))
            if n < 1:
                raise PositionError(f"positions={spec!r} selects no token; use last:N with N >= 1.")
            if n > n_tokens:
                raise PositionError(f"positions={spec!r} asks for the last {n} tokens of a {n_tokens}-token context; "
                                    f"expected last:N with 1 <= N <= {n_tokens} (or 'all').")
            idx = list(range(n_tokens - n, n_tokens))
        elif m_range:
            start = int(m_range.group(1)) if m_range.group(1) else None
            stop = int(m_range.group(2)) if m_range.group(2) else None
            for bound in (start, stop):
                if bound is not None and not -n_tokens <= bound <= n_tokens:
                    raise PositionError(f"positions={spec!r}: bound {bound} is outside a {n_tokens}-token context; "
                                        f"expected slice bounds in [-{n_tokens}, {n_tokens}].")
            idx = list(range(n_tokens))[slice(start, stop)]
        else:
            raise PositionError(f"positions={spec!r} is not understood; {understood}")
    elif isinstance(spec, int) and not isinstance(spec, bool):
        idx = [spec]
    elif isinstance(spec, (list, tuple, range)):
        idx = list(spec)
        bad = [p for p in idx if isinstance(p, bool) or not isinstance(p, int)]
        if bad:
            raise PositionError(f"positions={spec!r:.80} holds {bad[0]!r} ({type(bad[0]).__name__}); it must hold "
                                "ints only (token indices).")
    else:
        raise PositionError(f"positions={spec!r:.80} ({type(spec).__name__}) is not understood; {understood}")
    out = []
    for p in idx:
        if not -n_tokens <= p < n_tokens:
            raise PositionError(f"position {p} is out of range for a context of {n_tokens} tokens; "
                                f"expected an index in [-{n_tokens}, {n_tokens}).")
        out.append(p % n_tokens)
    if not out:
        raise PositionError(f"positions={spec!r:.80} selects zero positions of {n_tokens} tokens; select at least one.")
    if len(set(out)) != len(out):
        raise PositionError(f"positions={spec!r:.80} repeats a token index.")
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
        self._check_types()
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

    def _check_types(self) -> None:
        """Types first: a wrong one would otherwise surface later as an AttributeError deep in a method."""
        if not isinstance(self.vectors, dict):
            raise ArgumentTypeError(f"vectors is a {type(self.vectors).__name__}; expected a dict "
                                    "{layer: [n_positions, d_model] tensor}.")
        for layer, vec in self.vectors.items():
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise ArgumentTypeError(f"vectors has key {layer!r} ({type(layer).__name__}); expected int layer "
                                        "indices.")
            if not isinstance(vec, torch.Tensor):
                raise ArgumentTypeError(f"vectors[{layer}] is a {type(vec).__name__}; expected a torch.Tensor of "
                                        "shape [n_positions, d_model].")
            if not vec.is_floating_point():
                raise ArgumentTypeError(f"vectors[{layer}] has dtype {vec.dtype}; expected a floating-point tensor.")
        for name in ("positions", "token_ids"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)):
                raise ArgumentTypeError(f"{name} is a {type(value).__name__} ({value!r:.60}); expected a tuple of ints.")
            bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int)]
            if bad:
                raise ArgumentTypeError(f"{name} holds {bad[0]!r} ({type(bad[0]).__name__}); expected ints only.")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.tokens, (tuple, list)) or not all(isinstance(t, str) for t in self.tokens):
            raise ArgumentTypeError(f"tokens={self.tokens!r:.60}; expected a tuple of token strings.")
        object.__setattr__(self, "tokens", tuple(self.tokens))
        if not isinstance(self.model_name, str):
            raise ArgumentTypeError(f"model_name={self.model_name!r:.60} ({type(self.model_name).__name__}); "
                                    "expected a string.")
        check_int("n_layers", self.n_layers, minimum=1)
        check_int("d_model", self.d_model, minimum=1)
        if self.kind not in ("residual", "difference"):
            raise ActivationsMismatchError(f"kind={self.kind!r}; expected 'residual' or 'difference'.")
        if not isinstance(self.meta, dict):
            raise ArgumentTypeError(f"meta is a {type(self.meta).__name__}; expected a dict of JSON values.")
        try:  # save() writes meta as JSON: find out now, not when the file is half written
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise ArgumentTypeError(f"meta cannot be written as JSON ({exc}); keep it to str, numbers, bools, "
                                    "lists and dicts.") from None

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

    @property
    def n_positions(self) -> int:
        """How many positions were captured (``len(acts)``; the repr shows it under this name)."""
        return len(self.positions)

    def vectors_for(self, layer: int | None = None) -> torch.Tensor:
        """The ``[n_positions, d_model]`` tensor of ``layer`` (default: the single layer)."""
        if layer is not None:
            check_int("layer", layer)
        key = self.layer if layer is None else layer
        if key not in self.vectors:
            raise ActivationsMismatchError(f"no vectors for layer {key}; these activations hold {self.layers}.")
        return self.vectors[key]

    def at_layer(self, layer: int) -> Activations:
        return replace(self, vectors={layer: self.vectors_for(layer)})

    def select(self, positions: Sequence[int]) -> Activations:
        """Keep the vectors at these token indices (each must have been captured)."""
        if isinstance(positions, (str, bytes)) or not isinstance(positions, (list, tuple, range)):
            raise ArgumentTypeError(f"select({positions!r:.60}): expected a list of token indices (ints).")
        for p in positions:
            check_int("select() position", p)
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
        check_int("token() position", position)
        return self.select([position])

    def segment(self, start: int, end: int | None = None) -> Activations:
        """The captured positions with ``start <= token index < end`` (Python slice semantics over tokens)."""
        check_int("segment() start", start)
        if end is not None:
            check_int("segment() end", end)
        span = set(range(len(self.token_ids))[slice(start, end)])
        return self.select([p for p in self.positions if p in span])

    def last(self, n: int) -> Activations:
        """The last ``n`` captured positions."""
        check_int("last() n", n)
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
        """Write one safetensors file (provenance in its metadata).

        Atomic: the data goes to a temporary file in the same folder, which replaces ``path``
        only once complete (``os.replace`` within one filesystem), so a failed or interrupted
        write leaves the old file (or nothing) and no temporary file behind.
        """
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        path = check_output_file("path", path, "activations")
        tensors = {f"layer_{k}": v.detach().contiguous().cpu() for k, v in self.vectors.items()}
        metadata = self.metadata()
        tmp: str | None = None
        try:
            fd, tmp = temp_beside(path)
            os.close(fd)
            save_file(tensors, tmp, metadata=metadata)
            usual_mode(tmp)  # safetensors writes a new file over the temporary one, with mkstemp's 0600
            os.replace(tmp, path)
            tmp = None
        except (OSError, SafetensorError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise OutputWriteError(f"cannot write the activations to {str(path)!r}: {reason}. Pick a writable "
                                   "folder with free space.") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:  # the folder itself is gone or unwritable: nothing was created there
                    pass
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Activations:
        """Read a file written by :meth:`save`. Never unpickles: anything but safetensors is refused."""
        from safetensors import SafetensorError, safe_open

        path = check_input_file("path", path, "activations file")
        with open(path, "rb") as fh:
            head = fh.read(9)
        # safetensors: an 8-byte little-endian header length, then the JSON header's "{". Only
        # without that shape do the pickle / zip magic bytes mean anything (a header length can
        # end in 0x80 too).
        if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
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
        return cls._from_file(path, meta, tensors)

    @classmethod
    def _from_file(cls, path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> Activations:
        """Rebuild from a file's metadata, each field checked: a damaged file names the field at fault."""
        def fail(key: str, expected: str) -> ActivationsFileError:
            shown = meta.get(key)
            got = "is missing" if shown is None else f"is {shown[:60]!r}"
            return ActivationsFileError(f"{str(path)!r}: metadata {key!r} {got}; expected {expected}. The file is "
                                        "damaged or was not written by Activations.save(): capture it again.")

        def field(key: str, kind: type, expected: str, default: Any = None) -> Any:
            if key not in meta:
                if default is not None:
                    return default
                raise fail(key, expected)
            raw = meta[key]
            if kind is str:
                return raw
            try:
                value = int(raw) if kind is int else json.loads(raw)
            except ValueError:
                raise fail(key, expected) from None
            if kind is list:
                if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                    raise fail(key, expected)
            elif kind is dict and not isinstance(value, dict):
                raise fail(key, expected)
            return value

        layers = field("layers", list, "a JSON list of layer indices, e.g. [15]")
        missing = [k for k in layers if f"layer_{k}" not in tensors]
        if missing:
            raise ActivationsFileError(f"{str(path)!r}: metadata 'layers' lists {layers} but the file has no tensor "
                                       f"layer_{missing[0]} (it holds {sorted(tensors)}); the file is damaged or was "
                                       "not written by Activations.save(): capture it again.")
        tokens = field("tokens", str, "a JSON list of token strings")
        try:
            token_list = json.loads(tokens)
        except ValueError:
            raise fail("tokens", "a JSON list of token strings") from None
        if not isinstance(token_list, list) or not all(isinstance(t, str) for t in token_list):
            raise fail("tokens", "a JSON list of token strings")
        try:
            return cls(
                vectors={int(k): tensors[f"layer_{k}"] for k in layers},
                positions=tuple(field("positions", list, "a JSON list of token indices")),
                token_ids=tuple(field("token_ids", list, "a JSON list of token ids")),
                tokens=tuple(token_list),
                model_name=field("model_name", str, "the source model's name"),
                n_layers=field("n_layers", int, "an integer (the model's depth)"),
                d_model=field("d_model", int, "an integer (the residual width)"),
                kind=field("kind", str, "'residual' or 'difference'", "residual"),
                meta=field("meta", dict, "a JSON object", {}),
            )
        except ActivationsFileError:
            raise
        except (ActivationsMismatchError, PositionError, EmptyInputError, ArgumentError) as exc:
            raise ActivationsFileError(f"{str(path)!r}: its metadata does not fit its tensors ({exc}); the file is "
                                       "damaged or was not written by Activations.save(): capture it again.") from None

    def __repr__(self) -> str:
        return (f"Activations(model={self.model_name!r}, layers={list(self.layers)}, n_positions={len(self)}, "
                f"n_tokens={len(self.token_ids)}, d_model={self.d_model}, kind={self.kind!r})")
