"""Warm starts (``model.init_adapter``): a run begins from another run's adapter and statistics, checked first."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from activation_oracles.errors import ConfigError
from activation_oracles.training.config import apply_overrides
from activation_oracles.training.presets import preset


def _cfg(*overrides: str, steps: int = 4):
    cfg = apply_overrides(preset("tiny"), [f"optim.steps={steps}", "eval.every=0", "checkpoint.every=0",
                                           "model.center_activations=true", "model.standardize_activations=true",
                                           *overrides])
    return replace(cfg, output=replace(cfg.output, progress=False, tensorboard=False))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    from activation_oracles.training.trainer import Trainer

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("warm") / "first"
    try:
        Trainer(_cfg(), out_dir=out).train()
    finally:
        torch.set_num_threads(threads)
    return out


def _lora_state(trainer):
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.peft, adapter_name="default").items()
            if "lora_" in k}  # not the tied base head PEFT adds when lm_head is targeted


def test_a_warm_start_begins_with_the_adapter_and_statistics_it_was_given(first_run, tmp_path):
    from activation_oracles.config import OracleConfig
    from activation_oracles.training.trainer import Trainer

    trainer = Trainer(_cfg(f"model.init_adapter={first_run}"), out_dir=tmp_path / "second")
    saved = load_file(str(first_run / "adapter_model.safetensors"))
    state = _lora_state(trainer)
    assert set(state) == set(saved)
    for k, v in saved.items():
        assert torch.allclose(state[k], v.float(), atol=1e-2), k  # the file is bf16; the run trains fp32
        assert state[k].dtype == torch.float32
    stored = OracleConfig.load(first_run / "oracle_config.json")
    assert trainer.oracle_config.activation_means == stored.activation_means
    assert trainer.oracle_config.activation_scales == stored.activation_scales
    # a fresh run starts elsewhere: LoRA B is zero at initialisation
    fresh = _lora_state(Trainer(_cfg(), out_dir=tmp_path / "fresh"))
    assert all(float(v.abs().max()) == 0 for k, v in fresh.items() if "lora_B" in k)
    assert any(float(v.abs().max()) > 0 for k, v in state.items() if "lora_B" in k)


def test_a_warm_start_that_does_not_fit_is_refused_before_any_file_is_written(first_run, tmp_path):
    from activation_oracles.training.trainer import Trainer

    cases = {
        "lora.r=4": r"does not fit this run's LoRA \(lora.r=4.*Set lora.r",
        "model.center_activations=false": r"was trained on centred activations but model.center_activations = false",
        "model.injection_layer=2": r"was trained with injection_layer=1 but this run uses 2",
    }
    for override, message in cases.items():
        extra = ["model.standardize_activations=false"] if "center" in override else []
        out = tmp_path / override.replace("=", "_")
        with pytest.raises(ConfigError, match=message):
            Trainer(_cfg(f"model.init_adapter={first_run}", *extra, override), out_dir=out)
    with pytest.raises(ConfigError, match=r"model.init_adapter='.*nowhere' lacks \['oracle_config.json'"):
        Trainer(_cfg(f"model.init_adapter={tmp_path / 'nowhere'}"), out_dir=tmp_path / "x")
