"""The models the trainer works with: the base, its LoRA wrap, an optional separate target, and a fast
switch (:class:`AdaptersOff`) that bypasses every LoRA layer so the shared base model can serve as the target.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import ConfigError
from ..models import Model
from .config import TrainConfig


def load_base(cfg: TrainConfig, spec: str, device: torch.device) -> Model:
    """The model named by ``spec`` ('tiny', 'smollm2-135m', a directory or a hub id) on ``device``."""
    from ..models import load_model, resolve_dtype

    dtype = resolve_dtype(cfg.model.dtype)
    if spec == "tiny":
        from ..tiny import tiny_model

        m = tiny_model(n_layers=cfg.model.tiny_layers, d_model=cfg.model.tiny_d_model, seed=cfg.model.tiny_seed,
                       dtype=dtype)
        m.hf.to(device)
        return m
    return load_model(spec, dtype=dtype, device=device)


def wrap_lora(base: Model, cfg: TrainConfig) -> Any:
    """``base`` wrapped in a fresh PEFT LoRA adapter as ``cfg.lora`` says (seeded by ``optim.seed``), in train mode."""
    from peft import LoraConfig, get_peft_model

    lo = cfg.lora
    targets: Any = "all-linear" if tuple(lo.target_modules) == ("all-linear",) else list(lo.target_modules)
    lcfg = LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(cfg.optim.seed)
    try:
        with warnings.catch_warnings():  # PEFT's note about LoRA on a tied LM head (the tiny preset) is noise
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = get_peft_model(base.hf, lcfg, adapter_name="default")
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules={list(lo.target_modules)} does not fit {base.name!r}: {exc}") \
            from None
    model.train()
    return model


def load_target(cfg: TrainConfig, base: Model, device: torch.device) -> Model | None:
    """The separate target ``model.target`` names (frozen, eval mode), or ``None``: the oracle's own base is read."""
    spec = cfg.model.target.strip()
    if not spec:
        return None
    target = load_base(cfg, spec, device)
    if (target.n_layers, target.d_model) != (base.n_layers, base.d_model):
        raise ConfigError(f"model.target={spec!r} has n_layers={target.n_layers}, d_model={target.d_model} but "
                          f"the oracle base {base.name!r} has {base.n_layers}, {base.d_model}; "
                          "a separate target must share the base model's shape (e.g. a fine-tune of it).")
    for p in target.hf.parameters():
        p.requires_grad_(False)
    target.hf.eval()
    return target


class AdaptersOff:
    """A context factory: inside ``with switch():`` every LoRA layer of ``peft`` is bypassed.

    PEFT's ``disable_adapter()`` does the same, ~5x slower. Only used under ``torch.no_grad``, so
    the adapters' ``requires_grad`` flags need no change and the layers' own flag is flipped
    directly when PEFT has it.
    """

    def __init__(self, peft: Any) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = [m for m in peft.modules() if isinstance(m, BaseTunerLayer)]
        probe = self.layers[0] if self.layers else None
        self.direct = False
        if probe is not None and getattr(probe, "_disable_adapters", None) is False:
            probe._disable_adapters = True
            self.direct = probe.disable_adapters is True
            probe._disable_adapters = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self._set(False)
        try:
            yield
        finally:
            self._set(True)

    def _set(self, on: bool) -> None:
        for layer in self.layers:
            if self.direct:
                layer._disable_adapters = not on
            else:
                layer.enable_adapters(on)


def has_base_dropout(base: Model, peft: Any) -> bool:
    """Whether the base model has dropout outside the adapters (then the target pass runs in eval mode)."""
    cfg = getattr(base.hf, "config", None)
    config_dropout = any(isinstance(v, float) and v > 0 for k, v in vars(cfg).items()
                         if "dropout" in k) if cfg is not None else False
    module_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for n, m in peft.named_modules()
                         if "lora_" not in n)
    return config_dropout or module_dropout
