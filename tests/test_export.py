"""Exporting an oracle for shipping: bf16 weights, no machine paths, still loads and answers alike."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import activation_oracles as ao
from activation_oracles.errors import AdapterError, OutputDirError
from activation_oracles.tiny import tiny_model
from activation_oracles.training.export import export_oracle


def _run_dir(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(init_range=0.2)
    torch.manual_seed(1)
    peft = get_peft_model(base.hf, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                              init_lora_weights=False))
    run = tmp_path / "run"
    peft.save_pretrained(run)
    data_root = tmp_path / "data"
    cfg = ao.OracleConfig(base_model="tiny-llama", n_layers=4, d_model=64,
                          training={"sources": [str(data_root / "classification")]})
    cfg.save(run / "oracle_config.json")
    return run, data_root


def test_export_is_bf16_scrubbed_and_equivalent(tmp_path):
    run, data_root = _run_dir(tmp_path)
    out = export_oracle(run, tmp_path / "shipped", data_root=str(data_root))
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.bfloat16 for t in weights.values())
    text = (out / "oracle_config.json").read_text()
    assert str(tmp_path) not in text and "$AO_DATA_DIR/classification" in json.loads(text)["training"]["sources"][0]
    acts = ao.capture(tiny_model(init_range=0.2), "Owls hunt at night.", layers=2)
    full = ao.load_oracle(run, base=tiny_model(init_range=0.2)).choose(acts, "Is it?", ["Yes", "No"])
    half = ao.load_oracle(out, base=tiny_model(init_range=0.2)).choose(acts, "Is it?", ["Yes", "No"])
    assert half["Yes"] == pytest.approx(full["Yes"], abs=2e-2)  # bf16 rounding of the LoRA matrices only


def test_export_refuses_incomplete_runs_and_non_empty_targets(tmp_path):
    run, _ = _run_dir(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(OutputDirError):
        export_oracle(run, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"
    (run / "oracle_config.json").unlink()
    with pytest.raises(AdapterError, match="oracle_config.json"):
        export_oracle(run, tmp_path / "out2")
