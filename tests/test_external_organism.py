"""Organisms from anywhere: audits of a bare LoRA adapter (made elsewhere) given the secret it holds.

The organism adapters are written with plain PEFT (``get_peft_model`` + ``save_pretrained``) on the tiny
random Llama, with no card; the oracle is a reference-format adapter on the same tiny base, so the
test also runs both features of issue 18 together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import activation_oracles as ao
from activation_oracles.adapters import adapter_names, tuner_layers
from activation_oracles.errors import (AdapterError, BaseMismatchError, ConfigError, OfflineError, OrganismError,
                                       UnsafeFileError)
from activation_oracles.evals.audit import run_audit
from activation_oracles.evals.audit_task import get_audit_task
from activation_oracles.evals.external import (ExternalOrganism, load_external_organism, parse_cli_pairs,
                                               unload_external_organism)
from activation_oracles.tiny import TINY_NAME, tiny_model

from test_reference_format import assert_untouched, snapshot, write_reference_adapter


@pytest.fixture(scope="module")
def organism_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reference_adapter(tmp_path_factory.mktemp("ext") / "taboo-lora", seed=7)


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reference_adapter(tmp_path_factory.mktemp("ext") / "oracle", seed=3)


@pytest.fixture
def oracle(oracle_dir: Path) -> Any:
    return ao.load_oracle(oracle_dir, base=tiny_model())


# -- secrets -> options ----------------------------------------------------------------------------------------

def test_secrets_map_to_each_audits_options() -> None:
    assert get_audit_task("taboo").secret_options(" Harbor ") == {"word": "harbor"}  # no hint list needed
    assert get_audit_task("gender").secret_options("Female") == {"gender": "female"}
    assert get_audit_task("ssc").secret_options("all_caps") == {"constraints": "all_caps"}
    assert get_audit_task("subliminal").secret_options("owl") == {"trait": "owl", "variant": "organism"}
    assert get_audit_task("backdoor").secret_options("control") == {"variant": "control"}
    assert get_audit_task("personaqa").secret_options("fantasy")["variant"] == "fantasy"


@pytest.mark.parametrize("task,secret,error,pattern", [
    ("taboo", "two words", OrganismError, r"not a single word.*--secret ship"),
    ("gender", "robot", OrganismError, r"gender 'robot' is not valid.*male, female"),
    ("classification", "x", ConfigError, r"takes no external organism.*base model itself"),
])
def test_bad_secrets(task: str, secret: str, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        get_audit_task(task).secret_options(secret)


def test_external_organism_arguments() -> None:
    with pytest.raises(ConfigError, match=r"secret=''.*secret='ship'"):
        ExternalOrganism("dir", secret="")
    with pytest.raises(ConfigError, match=r"2 --organism-adapter and 1 --secret"):
        parse_cli_pairs(["a", "b"], ["ship"])
    assert parse_cli_pairs(["a"], ["ship"]) == [ExternalOrganism("a", secret="ship")]


# -- loading ---------------------------------------------------------------------------------------------------

def test_load_attaches_under_its_own_name_and_unloads(organism_dir: Path, tiny, hooks_of) -> None:
    ids = torch.tensor([tiny.tokenizer("Give me a hint.")["input_ids"]])
    with torch.no_grad():
        base_logits = tiny.hf(ids).logits
    before = snapshot(tiny, hooks_of)
    org = load_external_organism(ExternalOrganism(organism_dir, secret="Ship"), get_audit_task("taboo"), tiny)
    assert org.name == "taboo-ship" and org.options == {"word": "ship"}
    assert org.card["source"] == "external" and org.card["secret"] == "Ship" and org.card["task"] == "taboo"
    assert org.card["base_model"] == TINY_NAME and org.adapter.startswith("organism_ext_taboo_ship_")
    assert adapter_names(tiny.hf) == {org.adapter}
    with torch.no_grad():
        plain = tiny.hf(ids).logits  # parked: the base acts as the base
        with org.active():
            active = tiny.hf(ids).logits
    assert torch.allclose(plain, base_logits, atol=1e-6)
    assert not torch.allclose(plain, active, atol=1e-3)
    unload_external_organism(org)
    assert_untouched(tiny, before, hooks_of)
    with pytest.raises(AdapterError, match="already unloaded"):
        unload_external_organism(org)


def test_adapter_of_another_base_is_refused_with_the_fix(tmp_path: Path, tiny, hooks_of) -> None:
    narrow = write_reference_adapter(tmp_path / "narrow", d_model=32, base_name="org/other-model")
    before = snapshot(tiny, hooks_of)
    with pytest.raises(BaseMismatchError, match=r"names 'org/other-model'.*does not fit the oracle's base model "
                                                r"'tiny-llama'.*widths differ.*--oracle DIR_OR_HUB_ID"):
        load_external_organism(ExternalOrganism(narrow, secret="ship"), get_audit_task("taboo"), tiny)
    assert_untouched(tiny, before, hooks_of)


def test_missing_or_pickled_weights(tmp_path: Path, tiny, hooks_of) -> None:
    folder = write_reference_adapter(tmp_path / "org")
    (folder / "adapter_model.safetensors").unlink()
    before = snapshot(tiny, hooks_of)
    with pytest.raises(AdapterError, match=r"lacks adapter_model\.safetensors"):
        load_external_organism(ExternalOrganism(folder, secret="ship"), get_audit_task("taboo"), tiny)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeFileError, match=r"never unpickles"):
        load_external_organism(ExternalOrganism(folder, secret="ship"), get_audit_task("taboo"), tiny)
    assert_untouched(tiny, before, hooks_of)


def test_hub_id_offline(monkeypatch: pytest.MonkeyPatch, tiny, hooks_of) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = snapshot(tiny, hooks_of)
    with pytest.raises(OfflineError, match=r"organism adapter 'nobody-ao-tests/taboo-lora-7f3a'.*HF_HUB_OFFLINE"):
        load_external_organism(ExternalOrganism("nobody-ao-tests/taboo-lora-7f3a", secret="ship"),
                               get_audit_task("taboo"), tiny)
    assert_untouched(tiny, before, hooks_of)


def test_bad_secret_reads_no_file(tmp_path: Path, tiny) -> None:
    with pytest.raises(OrganismError, match="not a single word"):  # the folder does not even exist
        load_external_organism(ExternalOrganism(tmp_path / "nowhere", secret="a b"), get_audit_task("taboo"), tiny)


# -- audits ----------------------------------------------------------------------------------------------------

def test_taboo_audit_of_an_external_organism(organism_dir: Path, oracle: Any, data_dir: Path, hooks_of) -> None:
    adapters, hooks = adapter_names(oracle.model.hf), hooks_of(oracle.model)
    res = run_audit("taboo", oracle=oracle, targets=[ExternalOrganism(organism_dir, secret="harbor")], limit=1,
                    data_dir=data_dir, methods=("oracle", "oracle:coeff0"), max_new_tokens=2)
    rows = res["rows"]
    assert rows and {r["organism"] for r in rows} == {"taboo-harbor"} and {r["truth"] for r in rows} == {"harbor"}
    assert {r["method"] for r in rows} == {"oracle", "oracle:coeff0"}
    choice = [r for r in rows if r["kind"] == "choice"]
    assert choice and all(0.0 <= r["p_truth"] <= 1.0 for r in choice)  # 'harbor' joined the candidates
    assert res["config"]["targets"] == ["taboo-harbor"]
    assert res["extra"]["targets"]["taboo-harbor"]["card"]["options"] == {"word": "harbor"}
    # the organism's adapter lived for the run only; the oracle's own is still there
    assert adapter_names(oracle.model.hf) == adapters == {"oracle"} and hooks_of(oracle.model) == hooks


def test_gender_audit_of_an_external_organism(organism_dir: Path, oracle: Any, data_dir: Path) -> None:
    res = run_audit("gender", oracle=oracle, targets=[ExternalOrganism(organism_dir, secret="female")], limit=1,
                    data_dir=data_dir, methods=("oracle",), max_new_tokens=2)
    assert {r["truth"] for r in res["rows"]} == {"Female"} and {r["organism"] for r in res["rows"]} == {
        "gender-female"}
    assert adapter_names(oracle.model.hf) == {"oracle"}


def test_audit_refusal_leaves_the_oracle_as_it_was(tmp_path: Path, oracle: Any, data_dir: Path, hooks_of) -> None:
    narrow = write_reference_adapter(tmp_path / "narrow", d_model=32)
    good = write_reference_adapter(tmp_path / "good", seed=11)
    n_tuners, hooks = len(tuner_layers(oracle.model.hf)), hooks_of(oracle.model)
    with pytest.raises(BaseMismatchError):  # the second target fails after the first was attached
        run_audit("taboo", oracle=oracle, targets=[ExternalOrganism(good, secret="ship"),
                                                   ExternalOrganism(narrow, secret="moon")],
                  limit=1, data_dir=data_dir, methods=("oracle",))
    assert adapter_names(oracle.model.hf) == {"oracle"} and len(tuner_layers(oracle.model.hf)) == n_tuners
    assert hooks_of(oracle.model) == hooks


def test_two_targets_with_one_name_are_refused(organism_dir: Path, oracle: Any, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"both named 'taboo-ship'.*name=\.\.\."):
        run_audit("taboo", oracle=oracle, targets=[ExternalOrganism(organism_dir, secret="ship")] * 2, limit=1,
                  data_dir=data_dir, methods=("oracle",))


def test_cli_audits_an_adapter_with_a_reference_oracle(organism_dir: Path, oracle_dir: Path, data_dir: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from activation_oracles.cli import main

    out = tmp_path / "audit"
    status = main(["audit", "taboo", "--organism-adapter", str(organism_dir), "--secret", "ship", "--oracle",
                   str(oracle_dir), "--out", str(out), "--limit", "1", "--methods", "oracle",
                   "--data-dir", str(data_dir)])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["targets"] == ["taboo-ship"] and results["config"]["oracle"] == str(oracle_dir)
    assert "taboo" in capsys.readouterr().out


@pytest.mark.parametrize("argv,pattern", [
    (["audit", "taboo", "--organism-adapter", "x", "--out", "o"], "1 --organism-adapter and 0 --secret"),
    (["audit", "suite", "--organism-adapter", "x", "--secret", "ship", "--out", "o"], "not 'suite'"),
])
def test_cli_usage_errors(argv: list[str], pattern: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    from activation_oracles.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert pattern in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
