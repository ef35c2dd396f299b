"""Loading a built organism: its folder's card checked against its adapter, the adapter attached to a base model.

An organism folder (written by :func:`~activation_oracles.evals.organism.build_organism`)
holds ``organism.json`` (the card), ``adapter_config.json`` and ``adapter_model.safetensors``.
:func:`load_organism` attaches the adapter under its own name and parks it, so it is
active only inside ``organism.active()`` and the helpers that take it; the base model
keeps acting as itself. Every name here is importable from
:mod:`activation_oracles.evals.organism` too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activation_oracles.errors import BaseMismatchError, OrganismError
from activation_oracles.files import file_sha256
from activation_oracles.models import Model, as_model

from .chat import Chat, answer_logprobs, generate, running

CARD = "organism.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def load_base(spec: str | Any, *, dtype: Any = None, device: Any = None) -> Model:
    """``"tiny"`` (a tiny random Llama, seed 0), a model spec for ``ao.load_model``, or a loaded model."""
    if not isinstance(spec, str):
        return as_model(spec)
    if spec in ("tiny", "tiny-llama"):  # the spec, or the name the tiny model reports
        from activation_oracles.tiny import tiny_model

        return tiny_model()
    from activation_oracles.models import load_model

    return load_model(spec, dtype=dtype or "fp32", device=device)


@dataclass
class Organism:
    """An organism's adapter attached to a base model under ``adapter`` (inactive outside its helpers)."""

    model: Model
    adapter: str
    card: dict[str, Any]
    path: Path
    _extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.card.get("options") or {})

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block as the organism (its adapter on, every other adapter off)."""
        with running(self.model, self.adapter):
            yield

    def generate(self, chats: Sequence[Chat], **kwargs: Any) -> list[str]:
        """Greedy replies of the organism (see :func:`activation_oracles.evals.chat.generate`)."""
        return generate(self.model, chats, adapter=self.adapter, **kwargs)

    def answer_logprobs(self, chats: Sequence[Chat], answers: Sequence[str], **kwargs: Any) -> list[float]:
        return answer_logprobs(self.model, chats, answers, adapter=self.adapter, **kwargs)

    def capture(self, chats: Sequence[Chat], *, layers: Sequence[int], batch_size: int = 16) -> list[Any]:
        """The organism's residual activations for each chat (generation prompt appended)."""
        from activation_oracles.capturing import capture

        if not chats:
            return []
        with self.active():
            return list(capture(self.model, list(chats), layers=list(layers), batch_size=batch_size))


def _canonical(name: str) -> str:
    """A base model's spec and its loaded name are the same model ("tiny" is built as "tiny-llama")."""
    from activation_oracles.tiny import TINY_NAME

    return TINY_NAME if name == "tiny" else name


def check_same_base(a: Mapping[str, Any], b: Mapping[str, Any], what: str) -> None:
    """Raise :class:`BaseMismatchError` unless two descriptions (base_model, n_layers, d_model) agree."""
    keys = ("n_layers", "d_model")
    diffs = [k for k in keys if a.get(k) and b.get(k) and a.get(k) != b.get(k)]
    if a.get("base_model") and b.get("base_model") and _canonical(a["base_model"]) != _canonical(b["base_model"]):
        diffs.insert(0, "base_model")
    if diffs:
        desc = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in diffs)
        raise BaseMismatchError(f"{what} are built on different base models ({desc}); build the organism on the "
                                "oracle's base model (ao organism build ... --base NAME).")


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An organism folder's card, checked against its adapter (missing card or a different adapter raise)."""
    folder = Path(path)
    if not folder.is_dir():
        raise OrganismError(f"organism {str(folder)!r} is not a folder; pass the folder written by "
                            "`ao organism build`.")
    for name in (CARD, ADAPTER_CONFIG, ADAPTER_FILE):
        if not (folder / name).is_file():
            raise OrganismError(f"organism folder {str(folder)!r} lacks {name}; an organism folder holds {CARD}, "
                                f"{ADAPTER_CONFIG} and {ADAPTER_FILE}. Rebuild it with `ao organism build`.")
    try:
        card = json.loads((folder / CARD).read_text())
    except json.JSONDecodeError as exc:
        raise OrganismError(f"{str(folder / CARD)!r} is not valid JSON ({exc}); rebuild the organism.") from None
    missing = [k for k in ("name", "task", "options", "base_model", "adapter_sha256") if k not in card]
    if missing:
        raise OrganismError(f"{str(folder / CARD)!r} lacks {missing}; rebuild the organism.")
    actual = file_sha256(folder / ADAPTER_FILE)
    if actual != card["adapter_sha256"]:
        raise OrganismError(f"the adapter in {str(folder)!r} does not match its card (sha256 {actual[:12]} vs "
                            f"{str(card['adapter_sha256'])[:12]} recorded); the adapter was replaced or damaged. "
                            "Rebuild the organism (ao organism build ... --overwrite).")
    return card


def load_organism(path: str | os.PathLike[str], *, base: Any = None) -> Organism:
    """Attach an organism's adapter to ``base`` (default: its own base model, loaded here).

    The adapter gets the name ``organism_<name>_<first 8 hex of its SHA-256>`` and is parked (off) outside the
    organism's helpers, so the base keeps acting as the base model.
    """
    from activation_oracles.adapter_checks import check_adapter_fits, read_adapter_index
    from activation_oracles.adapters import adapter_names, park_adapters
    from activation_oracles.loading import attach_adapter

    folder = Path(path)
    card = read_card(folder)
    model = load_base(card["base_model"]) if base is None else as_model(base)
    check_same_base(card, {"base_model": None, "n_layers": model.n_layers, "d_model": model.d_model},
                    f"organism {card['name']!r} and the base model given")
    index = read_adapter_index(folder)  # config and tensor index checked, before the model is touched
    check_adapter_fits(index, model.hf, model.name)
    # module-dict keys take no dots; the adapter's hash tells apart two builds of one name (e.g. another seed)
    adapter = "organism_" + re.sub(r"\W", "_", str(card["name"])) + "_" + str(card.get("adapter_sha256", ""))[:8]
    if adapter in adapter_names(model.hf):
        return Organism(model=model, adapter=adapter, card=card, path=folder)
    attach_adapter(model, folder, adapter, index=index)  # all or nothing
    park_adapters(model.hf)
    return Organism(model=model, adapter=adapter, card=card, path=folder)


def attach_organism(spec: str | os.PathLike[str] | Organism, model: Model, *, base_name: str | None,
                    what: str) -> Organism:
    """``spec`` as is when already loaded; else the folder's card checked against ``base_name`` and
    ``model``'s shape (``what`` names the other side in the error), and its adapter attached to ``model``."""
    if isinstance(spec, Organism):
        return spec
    card = read_card(spec)
    check_same_base(card, {"base_model": base_name, "n_layers": model.n_layers, "d_model": model.d_model},
                    f"organism {card['name']!r} and {what}")
    return load_organism(spec, base=model)


__all__ = ["ADAPTER_CONFIG", "ADAPTER_FILE", "CARD", "Organism", "attach_organism", "check_same_base", "load_base",
           "load_organism", "read_card"]
