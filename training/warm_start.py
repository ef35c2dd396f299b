"""Warm starts: a run that begins from another run's oracle (``model.init_adapter``).

Why: in a broad mixture the oracle's reading starts late or not at all within a CPU
budget, while a few strong tasks read within ~100 steps (ORACLE_CARD.md). A curriculum
trains those first and then continues on the broad mixture from that adapter. The new
run gets a fresh optimiser and schedule; the adapter's weights and the activation
statistics it was trained with (means / scales, which its weights are tuned to) carry over.

Everything is checked before a weight changes: the folder is an oracle directory, its
adapter is a LoRA of this base with the run's rank and target modules, its statistics
cover the run's source layers, and its injection settings equal the run's.

>>> from activation_oracles.training.warm_start import WARM_START_FILES
>>> WARM_START_FILES
('oracle_config.json', 'adapter_config.json', 'adapter_model.safetensors')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from activation_oracles.config import OracleConfig
from activation_oracles.errors import ConfigError

WARM_START_FILES = ("oracle_config.json", "adapter_config.json", "adapter_model.safetensors")


def read_warm_start(folder: str, peft_model: Any, run_config: OracleConfig, cfg: Any, layers: set[int]
                    ) -> tuple[dict[str, Any], OracleConfig]:
    """Load ``folder``'s adapter weights into ``peft_model`` (adapter ``"default"``) after checking them.

    Args:
        folder: an oracle directory written by ``ao train`` (or ``export_oracle``).
        peft_model: the run's freshly wrapped PEFT model.
        run_config: the run's own oracle config (layers, injection) to compare against.
        cfg: the run's ``TrainConfig``.
        layers: the source layers the run reads.

    Returns:
        ``(state, stored)``: the tensors loaded, and the folder's oracle config (its activation
        statistics replace measuring new ones).

    Raises:
        ConfigError: the folder is not an oracle directory, or does not fit the run (what differs,
            and which setting to change).
    """
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from activation_oracles.adapter_checks import check_adapter_fits, read_adapter_index
    from activation_oracles.errors import AOError

    where = f"model.init_adapter={folder!r}"
    root = Path(folder).expanduser()
    missing = [n for n in WARM_START_FILES if not (root / n).is_file()]
    if missing:
        raise ConfigError(f"{where} lacks {missing}; expected an oracle directory written by `ao train` "
                          f"({', '.join(WARM_START_FILES)}).")
    try:
        stored = OracleConfig.load(root / "oracle_config.json")
        index = read_adapter_index(root)
        check_adapter_fits(index, peft_model, run_config.base_model)
    except AOError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    # LoRA tensors only: with a tied lm_head targeted, PEFT's state dict also holds the base head's
    # weight, which an oracle directory does not store.
    own = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model, adapter_name="default").items()
           if "lora_" in k}
    theirs = {k: v for k, v in index.shapes.items() if "lora_" in k}
    if own != theirs:
        extra, lacking = sorted(set(theirs) - set(own)), sorted(set(own) - set(theirs))
        differ = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
        raise ConfigError(f"{where} does not fit this run's LoRA (lora.r={cfg.lora.r}, lora.target_modules="
                          f"{list(cfg.lora.target_modules)}): its adapter has r={index.config['r']} and targets "
                          f"{index.config['target_modules']}; tensors only in the file {extra[:2]}, only in the run "
                          f"{lacking[:2]}, of other shapes {differ[:2]}. Set lora.r / lora.target_modules to the "
                          "adapter's.")
    for field in ("n_layers", "d_model", "injection_layer", "coeff", "mode", "placeholder", "system_prompt"):
        if getattr(stored, field, None) != getattr(run_config, field, None):
            raise ConfigError(f"{where} was trained with {field}={getattr(stored, field, None)!r} but this run uses "
                              f"{getattr(run_config, field, None)!r}; warm starts keep the oracle's prompt and "
                              "injection (change the run's setting to match).")
    if cfg.model.center_activations:
        if not stored.activation_means:
            raise ConfigError(f"{where} has no activation means but model.center_activations = true; warm start "
                              "from a centred run, or set model.center_activations = false.")
        if not layers <= set(stored.activation_means):
            raise ConfigError(f"{where} has means of layers {sorted(stored.activation_means)} but the run reads "
                              f"layers {sorted(layers)}; use data.layer_percents the adapter was trained on.")
        if cfg.model.standardize_activations and not stored.activation_scales:
            raise ConfigError(f"{where} has no activation scales but model.standardize_activations = true.")
    elif stored.activation_means:
        raise ConfigError(f"{where} was trained on centred activations but model.center_activations = false; set "
                          "it to true (the adapter's weights expect centred vectors).")
    state = load_file(str(root / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, state, adapter_name="default")
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:  # pragma: no cover - the key comparison above rules this out
        raise ConfigError(f"{where}: tensors {unexpected[:3]} did not load.")
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # LoRA weights train in fp32 even when the file is bf16
    stats = OracleConfig(base_model=stored.base_model, n_layers=stored.n_layers, d_model=stored.d_model,
                         activation_means=stored.activation_means if cfg.model.center_activations else None,
                         activation_scales=stored.activation_scales if cfg.model.standardize_activations else None)
    return state, stats
