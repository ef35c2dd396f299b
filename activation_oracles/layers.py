"""Find the decoder-block stack of a transformer structurally, with no model-name table.

A decoder-only transformer keeps its blocks in one ``nn.ModuleList`` whose
entries all share a class, and whose length is the config's layer count. We look
for exactly that, which works for Llama, Mistral, Qwen, Gemma, Phi, GPT-2,
GPT-NeoX, OLMo and their PEFT wrappings without naming any of them.

>>> import torch.nn as nn
>>> class Toy(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
>>> path, blocks = find_decoder_layers(Toy())
>>> path, len(blocks)
('blocks', 3)
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .errors import LayerDiscoveryError

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def config_layer_count(model: nn.Module) -> int | None:
    """The number of decoder blocks the model's config declares, if it has a config."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in _LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _resolve_path(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential)):
            obj = obj[int(part)]
        elif hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise LayerDiscoveryError(
                f"layers_path={path!r}: {type(obj).__name__} has no attribute {part!r}. "
                "Expected a dotted path from the model to its nn.ModuleList of decoder blocks "
                "(e.g. 'model.layers' for Llama, 'transformer.h' for GPT-2); "
                "print(model) shows the module tree."
            )
    return obj


def find_decoder_layers(model: nn.Module, layers_path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Return ``(dotted_path, module_list)`` of the model's decoder blocks.

    With ``layers_path`` the path is followed as given. Otherwise the candidate
    lists are every ``nn.ModuleList`` with homogeneous, parameter-holding
    entries; one whose length equals the config's layer count wins, and among
    equals the one holding the most parameters (the text decoder, not a small
    auxiliary stack).
    """
    if layers_path is not None:
        found = _resolve_path(model, layers_path)
        if not isinstance(found, (nn.ModuleList, nn.Sequential)) or len(found) == 0:
            raise LayerDiscoveryError(
                f"layers_path={layers_path!r} points to a {type(found).__name__}, "
                "expected a non-empty nn.ModuleList of decoder blocks; print(model) shows the module tree."
            )
        return layers_path, found  # type: ignore[return-value]

    expected = config_layer_count(model)
    candidates: list[tuple[bool, int, str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(block) for block in module}
        if len(kinds) != 1:
            continue
        if not any(True for _ in module[0].parameters()):
            continue
        matches = expected is not None and len(module) == expected
        candidates.append((matches, _param_count(module), name, module))
    if not candidates:
        raise LayerDiscoveryError(
            f"found no stack of decoder blocks in {type(model).__name__}: expected an nn.ModuleList of "
            "identical blocks. Pass layers_path='dotted.path.to.blocks' (e.g. 'model.layers'); "
            "print(model) shows the module tree."
        )
    if expected is not None and not any(c[0] for c in candidates):
        sizes = sorted({len(c[3]) for c in candidates})
        raise LayerDiscoveryError(
            f"{type(model).__name__}'s config declares {expected} layers but its ModuleLists have lengths "
            f"{sizes}. Pass layers_path='dotted.path.to.blocks' to choose the decoder stack explicitly."
        )
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    _, _, name, module = candidates[0]
    return name, module
