"""Loading never runs untrusted code or pickles, and a failed load never changes the caller's model.

Covers issue 17: model folders (safetensors only, no remote code, refused before
transformers is asked), custom data-source kinds (resolved, never called, unless they
are data-source classes), checkpoints (safetensors + JSON, never unpickled) and oracle
loading (every JSON field and tensor shape checked first; a failure mid-attach is
rolled back to a bit-identical base, and a retry works).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

import activation_oracles as ao
from activation_oracles.adapters import adapter_names, tuner_layers
from activation_oracles.errors import (
    AdapterError, AOError, CheckpointError, ConfigError, RemoteCodeError, UnsafeFileError,
)
from activation_oracles.tiny import tiny_model
from activation_oracles.training import checkpoint as ckpt
from activation_oracles.training.source_registry import build_builder
from activation_oracles.training.config import SourceSpec

IDS = torch.tensor([[1, 17, 42, 5, 99, 7]])


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256: "nothing on disk changed" is equality of two of these."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fingerprint(model, hooks_of) -> dict:
    hf = model.hf
    with torch.no_grad():
        logits = hf(IDS).logits.clone()
    return {"state": {k: v.detach().clone() for k, v in hf.state_dict().items()}, "logits": logits,
            "hooks": hooks_of(model), "lora": [(type(m).__name__, sorted(adapter_names(m))) for m in tuner_layers(hf)],
            "modules": [(n, id(m)) for n, m in hf.named_modules()],
            "grad": [(n, p.requires_grad) for n, p in hf.named_parameters()], "attrs": sorted(vars(hf))}


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert torch.equal(before["logits"], after["logits"])
    for key in ("hooks", "lora", "modules", "grad", "attrs"):
        assert before[key] == after[key], key


@pytest.fixture
def forbid_unpickling(monkeypatch):
    """Any torch.load / pickle load during the test fails it."""
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


# -- 1. model folders: tensors only -------------------------------------------------------------------

@pytest.fixture
def no_transformers_load(monkeypatch):
    """Record (and refuse) every from_pretrained call; the checks must come before any of them."""
    import transformers

    calls: list[str] = []

    def record(name):
        def fake(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name}.from_pretrained was called")
        return classmethod(lambda cls, *a, **k: fake(*a, **k))

    for cls in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", record(cls))
    monkeypatch.setattr(builtins, "input", lambda *a: (_ for _ in ()).throw(AssertionError("prompted")))
    return calls


def _saved(bare_tiny, folder: Path) -> Path:
    bare_tiny.hf.save_pretrained(folder)
    return folder


def test_pickle_only_model_folder_is_refused_before_transformers(bare_tiny, tmp_path, no_transformers_load,
                                                                 forbid_unpickling):
    folder = _saved(bare_tiny, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")  # never opened anyway
    before = tree_digest(folder)
    with pytest.raises(UnsafeFileError) as err:
        ao.load_model(folder)
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "save_pretrained(dir, safe_serialization=True)" in msg
    assert isinstance(err.value, AOError) and isinstance(err.value, ValueError)
    assert no_transformers_load == [] and tree_digest(folder) == before


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json", "text_config"])
def test_remote_code_config_is_refused_without_a_prompt(bare_tiny, tmp_path, no_transformers_load, where):
    folder = _saved(bare_tiny, tmp_path / "m")
    marker = tmp_path / "imported"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    auto_map = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    if where == "tokenizer_config.json":
        (folder / where).write_text(json.dumps({"auto_map": {"AutoTokenizer": ["modeling_evil.Tok", None]}}))
    else:
        cfg = json.loads((folder / "config.json").read_text())
        if where == "text_config":
            cfg["text_config"] = {"auto_map": auto_map}
        else:
            cfg["auto_map"] = auto_map
        (folder / "config.json").write_text(json.dumps(cfg))
    before = tree_digest(folder)
    with pytest.raises(RemoteCodeError, match="auto_map=.*modeling_evil|auto_map=.*Auto") as err:
        ao.load_model(folder)
    assert isinstance(err.value, UnsafeFileError) and "trust_remote_code" in str(err.value)
    assert no_transformers_load == [] and not marker.exists() and tree_digest(folder) == before


def test_explicit_pickle_weights_in_config_are_refused(bare_tiny, tmp_path, no_transformers_load):
    folder = _saved(bare_tiny, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["transformers_weights"] = "pytorch_model.bin"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeFileError, match="transformers_weights='pytorch_model.bin'"):
        ao.load_model(folder)
    assert no_transformers_load == []


def test_safe_folder_loads_with_safetensors_and_no_remote_code(tiny, tmp_path, monkeypatch, forbid_unpickling):
    import transformers

    folder = tmp_path / "m"
    tiny.hf.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    seen: list[dict] = []
    for cls_name in ("AutoModelForCausalLM", "AutoTokenizer"):
        cls = getattr(transformers, cls_name)
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _orig=original, **kwargs):
            seen.append(kwargs)
            return _orig(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    loaded = ao.load_model(folder)
    assert all(kw["trust_remote_code"] is False for kw in seen) and len(seen) == 2
    assert [kw.get("use_safetensors") for kw in seen] == [None, True]  # the tokenizer has no weights
    with torch.no_grad():
        assert torch.equal(loaded.hf(IDS).logits, tiny.hf(IDS).logits)


# -- 2. training configs: only data-source classes ------------------------------------------------------

@pytest.fixture
def plugins(monkeypatch):
    """A fake plugin module: a function, a class without examples(), and a real data-source class."""
    calls: list[str] = []
    mod = types.ModuleType("ao_fake_plugins")

    def make_source(**kw):
        calls.append("make_source")

    class NoExamples:
        def __init__(self, **kw):
            calls.append("NoExamples")

    class BadSignature:
        def __init__(self, **kw):
            calls.append("BadSignature")

        def examples(self):
            return iter(())

    class Good:
        name = "good"

        def __init__(self, n: int = 1, layer_percents=(50.0,)):
            self.n = n

        def examples(self, tokenizer, rng):
            return iter(())

    for obj in (make_source, NoExamples, BadSignature, Good):
        setattr(mod, obj.__name__, obj)
    monkeypatch.setitem(sys.modules, "ao_fake_plugins", mod)
    system_calls: list[str] = []
    monkeypatch.setattr(os, "system", lambda cmd: system_calls.append(cmd) or 0)
    return calls, system_calls


@pytest.mark.parametrize("kind, match", [
    ("os:system", "names a .*not a class"),
    ("ao_fake_plugins:make_source", "names a function, not a class"),
    ("ao_fake_plugins:NoExamples", "no examples\\(\\) method"),
    ("ao_fake_plugins:BadSignature", "cannot be called as examples\\(tokenizer, rng\\)"),
    ("ao_fake_plugins:Missing", "cannot be imported"),
    ("no_such_module_xyz:Thing", "cannot be imported"),
])
def test_custom_kind_must_be_a_data_source_class_and_is_never_called(plugins, kind, match):
    calls, system_calls = plugins
    spec = SourceSpec(kind=kind, params={"command": "echo pwned > /tmp/ao_pwned"})
    with pytest.raises(ConfigError, match=match) as err:
        build_builder(spec, (50.0,), where="data.sources[0]")
    assert repr(kind) in str(err.value) and "examples(tokenizer, rng)" in str(err.value)
    assert calls == [] and system_calls == []


def test_custom_data_source_class_is_built(plugins):
    builder = build_builder(SourceSpec(kind="ao_fake_plugins:Good", params={"n": 3}), (50.0,))
    assert type(builder).__name__ == "Good" and builder.n == 3


# -- 3. checkpoints: safetensors + JSON ----------------------------------------------------------------

def _train_state():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        layer(torch.randn(2, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return layer, opt, sched


def test_checkpoint_is_safetensors_plus_json_and_resumes_exactly(tmp_path, forbid_unpickling):
    import random

    import numpy as np

    layer, opt, sched = _train_state()
    state = {"step": 3, "adapter": {k: v.detach().clone() for k, v in layer.state_dict().items()},
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": [ckpt.rng_state()],
             "losses": [0.5, float("nan")], "used": {"a": 2}}
    path = ckpt.save_checkpoint(tmp_path, 3, state)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["step_00000003.json", "step_00000003.safetensors"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:  # the tensors: moments, step counts, RNG states
        keys = set(fh.keys())
    assert {"optimizer/state/0/exp_avg", "rng/0/torch", "rng/0/numpy/1", "adapter/weight"} <= keys
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["state"]["scheduler"]["base_lrs"] == [0.01]  # the structure is plain JSON
    assert len(manifest["state"]["rng"][0]["python"][1]) == 625  # random.getstate() as ints

    expected_next = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    x = torch.randn(2, 4)
    layer(x).pow(2).sum().backward()
    opt.step()
    reference = [p.detach().clone() for p in layer.parameters()]

    step, loaded = ckpt.load_latest(tmp_path)
    assert step == 3 and loaded["used"] == {"a": 2} and loaded["losses"][0] == 0.5
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    ckpt.set_rng_state(loaded["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_next
    layer2, opt2, sched2 = _train_state()
    for _ in range(2):  # move the fresh copy away from the saved state, so loading has to do the work
        layer2(torch.randn(2, 4)).sum().backward()
        opt2.step()
    layer2.load_state_dict(loaded["adapter"])
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    opt2.zero_grad()
    layer2(x).pow(2).sum().backward()
    opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(reference, layer2.parameters()))


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_old_pickle_checkpoint_is_reported_not_unpickled(tmp_path, forbid_unpickling):
    import io

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    pickle.dump({"step": 1, "x": _Evil(str(marker))}, buf)
    folder = tmp_path / "run" / "checkpoints"
    ckpt.atomic_write_bytes(folder / "step_00000001.pt", buf.getvalue())
    (folder / "step_00000001.json").write_text(json.dumps({"format": 1, "step": 1, "sha256": "0" * 64}))
    before = tree_digest(tmp_path / "run")
    with pytest.raises(CheckpointError, match="step_00000001.pt is a checkpoint from an older version.*cannot be "
                                              "resumed safely"):
        ckpt.load_latest(tmp_path / "run", report=lambda msg: None)
    assert not marker.exists() and tree_digest(tmp_path / "run") == before


def test_checkpoint_refuses_values_it_cannot_store(tmp_path):
    with pytest.raises(CheckpointError, match="at /x is a object"):
        ckpt.save_checkpoint(tmp_path, 1, {"x": object()})
    assert not list((tmp_path / "checkpoints").glob("step_*")) if (tmp_path / "checkpoints").exists() else True


# -- 4. oracle loading: all or nothing -----------------------------------------------------------------

@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A real tiny PEFT LoRA oracle (q_proj and v_proj, r=4, non-zero B so it matters)."""
    from peft import LoraConfig, get_peft_model

    donor = tiny_model(tokenizer=embedded_tokenizer)
    torch.manual_seed(1)
    peft = get_peft_model(donor.hf, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
    out = tmp_path_factory.mktemp("oracle") / "oracle"
    peft.save_pretrained(out)
    ao.OracleConfig(base_model="tiny-llama", n_layers=4, d_model=64).save(out / "oracle_config.json")
    return out


@pytest.fixture
def folder(oracle_dir, tmp_path) -> Path:
    dest = tmp_path / "oracle"
    shutil.copytree(oracle_dir, dest)
    return dest


@pytest.fixture
def base(embedded_tokenizer):
    return tiny_model(tokenizer=embedded_tokenizer)


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


ADAPTER_CASES = [
    ({"peft_type": "IA3"}, "peft_type='IA3'"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
    ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights='pissa_niter_4'"),
    ({"init_lora_weights": "olora"}, "init_lora_weights='olora'"),
    ({"init_lora_weights": "loftq"}, "init_lora_weights='loftq'"),
    ({"init_lora_weights": "corda"}, "init_lora_weights='corda'"),
    ({"init_lora_weights": "eva"}, "init_lora_weights='eva'"),
    ({"init_lora_weights": "orthogonal"}, "init_lora_weights='orthogonal'"),
    ({"use_dora": True}, "use_dora=True"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save=\\['lm_head'\\]"),
    ({"bias": "all"}, "bias='all'"),
    ({"layer_replication": [[0, 2]]}, "layer_replication"),
    ({"some_future_feature": {"x": 1}}, "some_future_feature="),
    ({"r": "4"}, "r='4'"),
    ({"r": 8}, "r=8 needs .*the rank differs"),
    ({"target_modules": ["q_proj", "v_proj", "k_proj"]}, "no weights for .*k_proj"),
    ({"target_modules": ["q_proj"]}, "weights for untargeted .*v_proj"),
    ({"target_modules": ["qq_proj"]}, "target_modules=\\['qq_proj'\\] selects 0 modules"),
    ({"target_modules": 5}, "target_modules=5"),
]
ORACLE_CASES = [
    ({"n_layers": "4"}, "'n_layers' is '4'"),
    ({"coeff": "1.0"}, "'coeff' is '1.0'"),
    ({"injection_layer": 1.5}, "'injection_layer' is 1.5"),
    ({"adapter_name": "a.b"}, "'adapter_name' is 'a.b'"),
    ({"placeholder": 5}, "'placeholder' is 5"),
    ({"source_layer_percents": "50"}, "'source_layer_percents' is '50'"),
    ({"activation_means": [1, 2]}, "'activation_means' is \\[1, 2\\]"),
    ({"max_positions": True}, "'max_positions' is True"),
]


def test_bad_adapter_and_oracle_configs_are_refused_before_the_model_is_touched(folder, base, hooks_of):
    before = fingerprint(base, hooks_of)
    original = {name: (folder / name).read_text() for name in ("adapter_config.json", "oracle_config.json")}
    for file, cases, error in (("adapter_config.json", ADAPTER_CASES, AdapterError),
                               ("oracle_config.json", ORACLE_CASES, ConfigError)):
        for changes, match in cases:
            (folder / file).write_text(original[file])
            _edit(folder / file, **changes)
            on_disk = tree_digest(folder)
            with pytest.raises(error, match=match):
                ao.load_oracle(folder, base=base)
            assert tree_digest(folder) == on_disk, changes
            assert_same(before, fingerprint(base, hooks_of))
        (folder / file).write_text(original[file])
    (folder / "oracle_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        ao.load_oracle(folder, base=base)
    assert_same(before, fingerprint(base, hooks_of))


def test_adapter_tensors_for_missing_modules_and_pickles_are_refused(folder, base, hooks_of, forbid_unpickling):
    from safetensors.torch import load_file, save_file

    before = fingerprint(base, hooks_of)
    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    renamed = {k.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.qq_proj"): v for k, v in tensors.items()}
    save_file(renamed, str(path))
    with pytest.raises(AdapterError, match="targets module 'model.layers.0.self_attn.qq_proj'"):
        ao.load_oracle(folder, base=base)
    extra = dict(tensors, **{"base_model.model.model.norm.weight": torch.zeros(64)})
    save_file(extra, str(path))
    with pytest.raises(AdapterError, match="'base_model.model.model.norm.weight' is not a LoRA matrix"):
        ao.load_oracle(folder, base=base)
    path.unlink()
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeFileError, match="adapter_model.bin.*safe_serialization=True"):
        ao.load_oracle(folder, base=base)
    assert_same(before, fingerprint(base, hooks_of))


def test_failed_attach_is_rolled_back_and_a_retry_works(folder, base, hooks_of, monkeypatch, embedded_tokenizer):
    import peft

    from safetensors.torch import load_file, save_file

    # A first adapter already on the shared base (on q_proj only): the rollback must leave it exactly as it
    # is, and unwrap only the v_proj layers the failed load added.
    first = folder.parent / "first"
    shutil.copytree(folder, first)
    _edit(first / "oracle_config.json", adapter_name="first")
    _edit(first / "adapter_config.json", target_modules=["q_proj"])
    q_only = {k: v for k, v in load_file(str(first / "adapter_model.safetensors")).items() if "q_proj" in k}
    save_file(q_only, str(first / "adapter_model.safetensors"))
    other = ao.load_oracle(first, base=base)
    acts = ao.capture(base, "Owls hunt at night.", layers=2)
    first_answer = other.choose(acts, "Is it?", ["Yes", "No"])
    before = fingerprint(base, hooks_of)

    real = peft.set_peft_model_state_dict

    def boom(*args, **kwargs):
        real(*args, **kwargs)  # half done: layers injected and filled, then a failure
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(peft, "set_peft_model_state_dict", boom)
    with pytest.raises(RuntimeError, match="disk vanished"):
        ao.load_oracle(folder, base=base)
    assert_same(before, fingerprint(base, hooks_of))
    assert adapter_names(base.hf) == {"first"}
    assert other.choose(acts, "Is it?", ["Yes", "No"]) == first_answer

    monkeypatch.setattr(peft, "set_peft_model_state_dict", real)
    oracle = ao.load_oracle(folder, base=base)  # the retry attaches cleanly
    assert adapter_names(base.hf) == {"first", "oracle"}
    reference = ao.load_oracle(folder, base=tiny_model(tokenizer=embedded_tokenizer))
    assert oracle.choose(acts, "Is it?", ["Yes", "No"]) == reference.choose(acts, "Is it?", ["Yes", "No"])

    ao.unload_oracle(oracle)  # detaching gives the base back as it was with only the first adapter
    assert_same(before, fingerprint(base, hooks_of))
    with pytest.raises(AdapterError, match="not loaded"):
        oracle.choose(acts, "Is it?", ["Yes", "No"])
    with pytest.raises(AdapterError, match="not loaded"):
        ao.unload_oracle(oracle)


def test_unload_restores_the_bare_base(folder, base, hooks_of):
    before = fingerprint(base, hooks_of)
    rng = torch.get_rng_state()
    oracle = ao.load_oracle(folder, base=base)
    assert torch.equal(rng, torch.get_rng_state())  # loading draws no random numbers from the caller's stream
    assert tuner_layers(base.hf)
    ao.unload_oracle(oracle)
    assert_same(before, fingerprint(base, hooks_of))
    with pytest.raises(AdapterError, match="no adapter to unload"):
        ao.unload_oracle(ao.ActivationOracle.untrained(base))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_load_model_on_a_missing_device_is_a_typed_error_before_loading():
    import activation_oracles as ao
    from activation_oracles.errors import AOError

    with pytest.raises(AOError, match="'cuda'") as info:
        ao.load_model("smollm2-135m", device="cuda")
    assert isinstance(info.value, ValueError)


def test_a_placeholder_the_tokenizer_splits_is_refused_before_attaching(folder, base, hooks_of):
    before = fingerprint(base, hooks_of)
    _edit(folder / "oracle_config.json", placeholder=" question mark here")
    with pytest.raises(AdapterError, match="question mark here"):
        ao.load_oracle(folder, base=base)
    assert_same(before, fingerprint(base, hooks_of))


@pytest.mark.parametrize("breakage", ["config_not_json", "no_tokenizer", "weights_garbage"])
def test_broken_model_folders_are_a_typed_error(tiny, tmp_path, breakage):
    from activation_oracles.errors import ModelSpecError

    folder = tmp_path / "m"
    tiny.hf.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    if breakage == "config_not_json":
        (folder / "config.json").write_text('{"model_type": "llama"')
    elif breakage == "no_tokenizer":
        for f in folder.glob("*token*"):
            f.unlink()
    else:
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    before = tree_digest(folder)
    with pytest.raises(ModelSpecError, match=str(folder.name)):
        ao.load_model(folder)
    assert tree_digest(folder) == before
