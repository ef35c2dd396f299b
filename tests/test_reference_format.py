"""Oracles in the reference's published format: a bare PEFT LoRA adapter folder, no oracle_config.json.

The adapter is written the way the reference publishes its oracles (``get_peft_model`` + ``save_pretrained``
on the base model, LoRA on all linear layers, ``task_type="CAUSAL_LM"``), on a tiny random Llama. The
reference's prompt is rebuilt here from its conventions, independently of the library, and compared
token for token.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import activation_oracles as ao
from activation_oracles.adapter_source import BaseNameWarning, looks_like_repo_id
from activation_oracles.adapters import adapter_names, tuner_layers
from activation_oracles.errors import AdapterError, AOError, OfflineError, UnsafeFileError
from activation_oracles.prompt import build_prompt
from activation_oracles.tiny import TINY_NAME, tiny_model

QUESTION = "What is the secret word in this text?"


def write_reference_adapter(folder: Path, *, d_model: int = 64, base_name: str | None = TINY_NAME, seed: int = 1,
                            hf: Any = None) -> Path:
    """A LoRA adapter saved exactly as the reference saves its oracles, with non-zero B matrices."""
    from peft import LoraConfig, get_peft_model

    model = hf if hf is not None else tiny_model(d_model=d_model, seed=seed, tokenizer=None).hf
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules="all-linear", bias="none",
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: a trained adapter is not
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(str(folder))
    cfg_path = folder / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = base_name  # what the reference's adapters carry: their base's hub id
    cfg_path.write_text(json.dumps(data, indent=2))
    for ours in ("oracle_config.json", "organism.json"):
        (folder / ours).unlink(missing_ok=True)
    return folder


@pytest.fixture
def ref_dir(tmp_path: Path) -> Path:
    return write_reference_adapter(tmp_path / "reference_oracle")


def snapshot(model: Any, hooks_of: Any) -> dict[str, Any]:
    hf = model.hf
    return {"state": {k: v.detach().clone() for k, v in hf.state_dict().items()}, "hooks": hooks_of(model),
            "tuners": len(tuner_layers(hf)), "peft_config": "peft_config" in vars(hf),
            "flags": [p.requires_grad for p in hf.parameters()], "modules": [type(m) for m in hf.modules()]}


def assert_untouched(model: Any, before: dict[str, Any], hooks_of: Any) -> None:
    after = snapshot(model, hooks_of)
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    for key in ("hooks", "tuners", "peft_config", "flags", "modules"):
        assert after[key] == before[key], key
    assert adapter_names(model.hf) == set()


def reference_ids(tok: Any, layer: int, k: int, question: str) -> list[int]:
    """The reference's oracle prompt: prefix + question as one user turn, generation prompt, no thinking."""
    user = f"Layer: {layer}\n" + " ?" * k + " \n" + question
    text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


# -- loading and the assumed settings ----------------------------------------------------------------------------

def test_folder_holds_only_the_reference_files(ref_dir: Path) -> None:
    assert {p.name for p in ref_dir.iterdir()} <= {"adapter_config.json", "adapter_model.safetensors", "README.md"}


def test_loads_with_the_reference_conventions(ref_dir: Path, tiny) -> None:
    oracle = ao.load_oracle(ref_dir, base=tiny)
    c = oracle.config
    assert (c.injection_layer, c.mode, c.coeff, c.placeholder) == (1, "norm_add", 1.0, " ?")
    assert c.prompt_template == "Layer: {layer}\n{placeholders} \n{question}"
    assert c.system_prompt is None and c.chat_template_kwargs == {"enable_thinking": False}
    assert c.source_layer_percents == (25.0, 50.0, 75.0) and c.activation_means is None
    assert (c.base_model, c.n_layers, c.d_model) == (TINY_NAME, 4, 64)
    assert c.lora["r"] == 4 and c.lora["lora_alpha"] == 8
    # the record of what was assumed
    assert c.origin["format"] == "reference" and c.origin["adapter"] == str(ref_dir)
    assert c.origin["base_model_name_or_path"] == TINY_NAME
    assert oracle.assumed["injection_layer"] == 1 and oracle.assumed["placeholder"] == " ?"
    assert set(oracle.assumed) == set(c.origin["why"])
    assert "format='reference'" in repr(oracle)
    # the record survives derived views (controls keep the same injection)
    assert oracle.with_config(coeff=0.0).assumed == oracle.assumed
    assert oracle.as_untrained().config.injection_layer == 1


def test_layer_at_50_percent_is_the_read_depth(ref_dir: Path, tiny) -> None:
    oracle = ao.load_oracle(ref_dir, base=tiny)
    acts = ao.capture(tiny, "Owls hunt at night.")
    assert acts.layer == int(tiny.n_layers * 0.5) == tiny.layer_at(50)
    assert 50.0 in oracle.config.source_layer_percents


def test_prompt_equals_the_reference_token_for_token(ref_dir: Path, tiny) -> None:
    oracle = ao.load_oracle(ref_dir, base=tiny)
    tok = tiny.tokenizer
    ph = tok(" ?", add_special_tokens=False)["input_ids"]
    assert len(ph) == 1
    for layer, k in ((2, 1), (2, 5), (13, 3)):
        want = reference_ids(tok, layer, k, QUESTION)
        got = build_prompt(tok, oracle.config, layer, k, QUESTION)
        assert list(got.input_ids) == want
        # the reference injects at the first K placeholder tokens, which must be consecutive
        firsts = [i for i, t in enumerate(want) if t == ph[0]][:k]
        assert list(got.positions) == firsts == list(range(firsts[0], firsts[0] + k))
    # what ask() builds from real activations is the same prompt
    acts = ao.capture(tiny, "Owls hunt at night.")
    item = oracle._item(acts.last(3), QUESTION, None)
    assert list(item.prompt.input_ids) == reference_ids(tok, acts.layer, 3, QUESTION)


def test_prompt_passes_enable_thinking_false_like_the_reference(ref_dir: Path, tiny) -> None:
    """A Qwen3-style template adds an empty thinking block only when enable_thinking is False."""
    from transformers import AutoTokenizer

    from activation_oracles.embedded import embedded_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_dir()), local_files_only=True)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
        "{% endif %}")
    oracle = ao.load_oracle(ref_dir, base=tiny)
    got = build_prompt(tok, oracle.config, 2, 3, QUESTION)
    assert list(got.input_ids) == reference_ids(tok, 2, 3, QUESTION)
    assert tok.decode(list(got.input_ids)).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_ask_and_choose_run_and_the_adapter_matters(ref_dir: Path, tiny, hooks_of) -> None:
    ids = torch.tensor([tiny.tokenizer("Owls hunt at night.")["input_ids"]])
    with torch.no_grad():
        base_logits = tiny.hf(ids).logits
    hooks = hooks_of(tiny)
    oracle = ao.load_oracle(ref_dir, base=tiny)
    acts = ao.capture(tiny, "Owls hunt at night.")
    answer = oracle.ask(acts, QUESTION, max_new_tokens=3)
    probs = oracle.choose(acts, "Is this about an animal?", ["Yes", "No"])
    assert isinstance(answer, str)
    assert set(probs) == {"Yes", "No"} and sum(probs.values()) == pytest.approx(1.0)
    untrained = oracle.as_untrained().choose(acts, "Is this about an animal?", ["Yes", "No"])
    assert abs(untrained["Yes"] - probs["Yes"]) > 1e-6  # the adapter is active inside oracle calls
    assert hooks_of(tiny) == hooks  # nothing left registered after ask/choose
    with torch.no_grad():  # outside oracle calls the shared base still acts as the base model
        assert torch.allclose(tiny.hf(ids).logits, base_logits, atol=1e-6)
    ao.unload_oracle(oracle)
    assert adapter_names(tiny.hf) == set() and tuner_layers(tiny.hf) == []


def test_injection_is_at_block_1(ref_dir: Path, tiny) -> None:
    """Block 0's output is the same with and without the vectors; block 1's output differs at the placeholders."""
    oracle = ao.load_oracle(ref_dir, base=tiny)
    acts = ao.capture(tiny, "Owls hunt at night.").last(2)
    item = oracle._item(acts, QUESTION, None)
    ids = torch.tensor([list(item.prompt.input_ids)])

    def hidden(o: Any) -> tuple[torch.Tensor, ...]:
        with o._session([item]):
            return tiny.hf(ids, output_hidden_states=True).hidden_states

    on, off = hidden(oracle), hidden(oracle.with_config(coeff=0.0))
    pos = list(item.prompt.positions)
    assert torch.equal(on[1], off[1])  # output of block 0
    assert not torch.allclose(on[2][0, pos], off[2][0, pos])  # output of block 1
    assert torch.equal(on[2][0, : pos[0]], off[2][0, : pos[0]])  # nothing before the first placeholder


def test_notice_lists_the_assumptions_once(ref_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="activation_oracles.reference_format"):
        ao.load_oracle(ref_dir, base=tiny_model())
        ao.load_oracle(ref_dir, base=tiny_model())
    notes = [r.getMessage() for r in caplog.records if r.name == "activation_oracles.reference_format"]
    assert len(notes) == 1
    for text in ("reference format", "injection_layer = 1", "placeholder = ' ?'", "coeff = 1.0", "enable_thinking"):
        assert text in notes[0]


def test_without_base_the_declared_base_is_loaded(ref_dir: Path) -> None:
    oracle = ao.load_oracle(ref_dir)  # base_model_name_or_path names the tiny test model
    assert oracle.model.name == TINY_NAME and oracle.adapter == "oracle"


# -- bad input: typed errors, nothing attached --------------------------------------------------------------------

def test_missing_weights(ref_dir: Path, tiny, hooks_of) -> None:
    (ref_dir / "adapter_model.safetensors").unlink()
    before = snapshot(tiny, hooks_of)
    with pytest.raises(AdapterError, match=r"lacks adapter_model\.safetensors.*save_pretrained") as exc:
        ao.load_oracle(ref_dir, base=tiny)
    assert isinstance(exc.value, ValueError) and str(ref_dir) in str(exc.value)
    assert_untouched(tiny, before, hooks_of)


def test_pickle_only_weights_are_never_read(ref_dir: Path, tiny, hooks_of) -> None:
    (ref_dir / "adapter_model.safetensors").unlink()
    (ref_dir / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    before = snapshot(tiny, hooks_of)
    with pytest.raises(UnsafeFileError, match=r"adapter_model\.bin.*never unpickles.*safe_serialization"):
        ao.load_oracle(ref_dir, base=tiny)
    assert_untouched(tiny, before, hooks_of)


def test_adapter_for_another_width(tmp_path: Path, tiny, hooks_of) -> None:
    folder = write_reference_adapter(tmp_path / "narrow", d_model=32)
    before = snapshot(tiny, hooks_of)
    with pytest.raises(AdapterError, match=r"has shape \[4, \d+\] but .tiny-llama.*needs \[4, \d+\] \(the widths differ\).*another base model"):
        ao.load_oracle(folder, base=tiny)
    assert_untouched(tiny, before, hooks_of)


def test_adapter_for_another_architecture(tmp_path: Path, tiny, hooks_of, build_arch) -> None:
    folder = write_reference_adapter(tmp_path / "gpt2", hf=build_arch("gpt2"), base_name="gpt2")
    before = snapshot(tiny, hooks_of)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseNameWarning)  # refused for its modules: no "shapes fit" warning first
        with pytest.raises(AdapterError, match=r"targets module 'transformer\.h\.0\..*does not have.*another base"):
            ao.load_oracle(folder, base=tiny)
    assert_untouched(tiny, before, hooks_of)


def test_declared_base_of_another_name_warns_and_is_recorded(ref_dir: Path, tiny) -> None:
    """Shapes decide; a differing name alone (a local copy, an -it vs base checkpoint) is a warning + a note."""
    cfg = ref_dir / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": "google/gemma-2-9b-it"}))
    with pytest.warns(BaseNameWarning, match=r"gemma-2-9b-it.*tiny-llama.*shapes fit"):
        oracle = ao.load_oracle(ref_dir, base=tiny)
    assert oracle.config.base_model == "google/gemma-2-9b-it"
    assert any("gemma-2-9b-it" in n for n in oracle.config.origin["notes"])


def test_same_base_under_another_path_does_not_warn(ref_dir: Path, tiny, recwarn: pytest.WarningsRecorder) -> None:
    cfg = ref_dir / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": "/models/TINY-LLAMA/"}))
    ao.load_oracle(ref_dir, base=tiny)
    assert not [w for w in recwarn if issubclass(w.category, BaseNameWarning)]


def test_no_declared_base_and_none_given(ref_dir: Path) -> None:
    cfg = ref_dir / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": None}))
    with pytest.raises(AdapterError, match=r"names no base model.*base=ao\.load_model"):
        ao.load_oracle(ref_dir)


def test_the_existing_lora_checks_apply(ref_dir: Path, tiny, hooks_of) -> None:
    cfg = ref_dir / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "init_lora_weights": "pissa"}))
    before = snapshot(tiny, hooks_of)
    with pytest.raises(AdapterError, match=r"init_lora_weights='pissa' is not accepted"):
        ao.load_oracle(ref_dir, base=tiny)
    assert_untouched(tiny, before, hooks_of)


def test_placeholder_split_by_the_tokenizer_is_refused_before_attaching(ref_dir: Path, hooks_of) -> None:
    from transformers import AutoTokenizer

    from activation_oracles.embedded import embedded_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_dir()), local_files_only=True)
    real = tok.__class__.__call__

    def split_question_mark(self: Any, text: Any, *a: Any, **kw: Any) -> Any:
        out = real(self, text, *a, **kw)
        if text == " ?":
            out["input_ids"] = list(out["input_ids"]) * 2
        return out

    tok.__class__ = type("SplitTok", (tok.__class__,), {"__call__": split_question_mark})
    base = tiny_model(tokenizer=tok)
    before = snapshot(base, hooks_of)
    with pytest.raises(AdapterError, match=r"placeholder ' \?' tokenizes to 2 tokens"):
        ao.load_oracle(ref_dir, base=base)
    assert_untouched(base, before, hooks_of)


def test_hub_id_while_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tiny, hooks_of) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = snapshot(tiny, hooks_of)
    start = time.perf_counter()
    with pytest.raises(OfflineError) as exc:
        ao.load_oracle("nobody-ao-tests/no-such-oracle-7f3a", base=tiny)
    assert time.perf_counter() - start < 10
    assert isinstance(exc.value, ConnectionError) and isinstance(exc.value, AOError)
    msg = str(exc.value)
    assert "'nobody-ao-tests/no-such-oracle-7f3a'" in msg and "HF_HUB_OFFLINE" in msg
    assert "--include '*.json' '*.safetensors'" in msg and "DIR" in msg
    assert_untouched(tiny, before, hooks_of)


def test_spec_that_is_neither_a_folder_nor_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"neither a shipped oracle.*existing directory.*hub id"):
        ao.load_oracle(tmp_path / "no" / "such" / "oracle")
    assert looks_like_repo_id("adamkarvonen/checkpoints_latentqa_cls_past_lens_addition_Qwen3-8B")
    assert not looks_like_repo_id("oracles/run1/")


def test_our_own_format_is_unchanged(ref_dir: Path, tiny) -> None:
    """A folder with oracle_config.json is still read as ours (nothing assumed)."""
    cfg = ao.OracleConfig(base_model=TINY_NAME, n_layers=4, d_model=64, system_prompt="")
    cfg.save(ref_dir / "oracle_config.json")
    oracle = ao.load_oracle(ref_dir, base=tiny)
    assert oracle.config.origin is None and oracle.assumed == {} and "format=" not in repr(oracle)
    assert oracle.config.chat_template_kwargs is None and oracle.config.system_prompt == ""


def test_chat_template_kwargs_are_checked_config_data() -> None:
    from activation_oracles.config import OracleConfig
    from activation_oracles.errors import ConfigError

    cfg = OracleConfig(base_model=TINY_NAME, chat_template_kwargs={"enable_thinking": False})
    assert OracleConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match=r"\['add_generation_prompt'\].*sets itself"):
        OracleConfig(chat_template_kwargs={"add_generation_prompt": False})
    with pytest.raises(ConfigError, match=r"'chat_template_kwargs' is 'yes'.*null or an object"):
        OracleConfig.from_dict({"chat_template_kwargs": "yes"})
    with pytest.raises(ConfigError, match=r"'origin' is 3"):
        OracleConfig.from_dict({"origin": 3})
