"""The audit engine end to end on tiny organisms, its statistics, and one test per bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from activation_oracles.errors import (BaseMismatchError, ConfigError, OrganismError, OutputDirError,
                                       UnknownTaskError)
from activation_oracles.evals.audit import ALL_METHODS, MODES, derange_by_truth, run_audit
from activation_oracles.evals.organism import Recipe, build_organism, load_organism, read_card
from activation_oracles.evals.stats import wilson_interval
from activation_oracles.oracle import ActivationOracle
from activation_oracles.tiny import tiny_model


@pytest.fixture(scope="module")
def organism_dir(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("org") / "personaqa"
    return build_organism("personaqa", base="tiny", options={"n_personas": 4}, data_dir=data_dir,
                          recipe=Recipe(n_examples=12, steps=2, batch_size=4), out=out, checks=False)


@pytest.fixture(scope="module")
def oracle() -> ActivationOracle:
    return ActivationOracle.untrained(tiny_model())


@pytest.fixture(scope="module")
def audit(tmp_path_factory, organism_dir, oracle, data_dir) -> dict:
    out = tmp_path_factory.mktemp("audit") / "personaqa"
    org = load_organism(organism_dir, base=oracle.model)
    return run_audit("personaqa", oracle=oracle, targets=[org], out=out, limit=2, seed=0, data_dir=data_dir,
                     max_new_tokens=4) | {"_out": out}


def test_every_method_mode_and_kind_is_reported(audit) -> None:
    methods = {r["method"] for r in audit["rows"]}
    assert {"oracle", "oracle:shuffled", "oracle:coeff0", "untrained_oracle", "blackbox:direct",
            "blackbox:prefill", "logit_lens", "probe"} <= methods
    for m in ("oracle", "oracle:shuffled", "oracle:coeff0", "untrained_oracle"):
        assert {(r["mode"], r["kind"]) for r in audit["rows"] if r["method"] == m} == \
            {(mode, kind) for mode in MODES for kind in ("open", "choice")}
    # only test items are scored
    test_ids = {r["id"] for r in audit["rows"]}
    assert test_ids and all(not i.endswith("val") for i in test_ids)


def test_aggregates_match_rows_and_wilson(audit) -> None:
    for agg in audit["aggregates"]:
        if agg["organism"] != "all":
            continue
        rows = [r for r in audit["rows"] if (r["method"], r["mode"], r["kind"]) ==
                (agg["method"], agg["mode"], agg["kind"])]
        assert agg["n"] == len(rows) and agg["correct"] == sum(r["correct"] for r in rows)
        assert (agg["ci_low"], agg["ci_high"]) == pytest.approx(wilson_interval(agg["correct"], agg["n"]))


def test_report_files(audit) -> None:
    out = audit["_out"]
    assert json.loads((out / "results.json").read_text())["task"] == "personaqa"
    md = (out / "report.md").read_text()
    assert "| oracle | full |" in md and "Chance" in md
    assert (out / "plot_choice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_rows(tmp_path, organism_dir, oracle, data_dir) -> None:
    org = load_organism(organism_dir, base=oracle.model)
    kw = dict(oracle=oracle, targets=[org], limit=2, data_dir=data_dir, methods=("oracle", "blackbox"),
              max_new_tokens=4)
    a = run_audit("personaqa", seed=3, **kw)["rows"]
    b = run_audit("personaqa", seed=3, **kw)["rows"]
    assert a == b


def test_derangement_prefers_other_truths() -> None:
    from random import Random

    truths = ["a", "a", "b", "b", "c"]
    perm = derange_by_truth(truths, Random(0))
    assert all(j != i and truths[j] != truths[i] for i, j in enumerate(perm))


# -- bad input: a typed error, nothing written --------------------------------------------------------

def test_unknown_task(tmp_path) -> None:
    with pytest.raises(UnknownTaskError, match="'nope'.*taboo"):
        run_audit("nope", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    from activation_oracles.cli import main

    assert main(["audit", "nope", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()


def test_limit_zero(tmp_path, oracle) -> None:
    with pytest.raises(ConfigError, match="limit=0"):
        run_audit("classification", oracle=oracle, out=tmp_path / "x", limit=0)
    assert not (tmp_path / "x").exists()


def test_unknown_method(tmp_path, oracle) -> None:
    with pytest.raises(ConfigError, match="unknown method.*'telepathy'"):
        run_audit("classification", oracle=oracle, methods=("telepathy",))


def test_out_dir_of_another_audit_is_kept(tmp_path, oracle, audit) -> None:
    out = tmp_path / "taken"
    shutil.copytree(audit["_out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputDirError, match="personaqa.*--overwrite"):
        run_audit("classification", oracle=oracle, out=out, limit=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_organism_on_another_base(organism_dir, data_dir) -> None:
    other = ActivationOracle.untrained(tiny_model(d_model=32))
    with pytest.raises(BaseMismatchError, match="d_model: 64 vs 32"):
        run_audit("personaqa", oracle=other, targets=[organism_dir], limit=1, data_dir=data_dir)


def test_organism_of_another_task(organism_dir, oracle, data_dir) -> None:
    with pytest.raises(OrganismError, match="personaqa.*organism.*'ssc'"):
        run_audit("ssc", oracle=oracle, targets=[organism_dir], limit=1, data_dir=data_dir)


def test_card_missing(tmp_path, organism_dir) -> None:
    broken = tmp_path / "org"
    shutil.copytree(organism_dir, broken)
    (broken / "organism.json").unlink()
    with pytest.raises(OrganismError, match="lacks organism.json"):
        read_card(broken)


def test_card_does_not_match_adapter(tmp_path, organism_dir) -> None:
    broken = tmp_path / "org"
    shutil.copytree(organism_dir, broken)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(broken / "adapter_model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(broken / "adapter_model.safetensors"))
    with pytest.raises(OrganismError, match="does not match its card"):
        load_organism(broken)


def test_cached_build_is_reused(organism_dir, data_dir) -> None:
    stamp = (organism_dir / "adapter_model.safetensors").stat().st_mtime_ns
    again = build_organism("personaqa", base="tiny", options={"n_personas": 4}, data_dir=data_dir,
                           recipe=Recipe(n_examples=12, steps=2, batch_size=4), out=organism_dir, checks=False)
    assert again == organism_dir and (organism_dir / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_build_refuses_a_folder_of_another_organism(organism_dir, data_dir) -> None:
    before = (organism_dir / "organism.json").read_bytes()
    with pytest.raises(OutputDirError, match="another organism"):
        build_organism("personaqa", base="tiny", options={"n_personas": 3}, data_dir=data_dir,
                       recipe=Recipe(n_examples=12, steps=2, batch_size=4), out=organism_dir, checks=False)
    assert (organism_dir / "organism.json").read_bytes() == before


def test_all_methods_listed() -> None:
    assert ALL_METHODS[0] == "oracle" and "probe" in ALL_METHODS


def test_suite_combines_and_reuses(tmp_path, oracle, data_dir) -> None:
    from activation_oracles.evals.suite import run_suite

    kw = dict(oracle=oracle, limit=1, data_dir=data_dir, tasks=["classification"], methods=("oracle",),
              command="ao audit suite (test)")
    first = run_suite(tmp_path / "s", evals_md=tmp_path / "EVALS.md", **kw)
    assert "classification" in first["markdown"] and (tmp_path / "s" / "suite.json").is_file()
    assert (tmp_path / "EVALS.md").read_text() == first["markdown"]
    with pytest.raises(OutputDirError, match="already holds a suite"):
        run_suite(tmp_path / "s", **kw)
    (tmp_path / "s" / "suite.json").unlink()
    # a loaded oracle has no spec to compare, so its results are never reused; with a spec they are
    assert run_suite(tmp_path / "s", **kw)["markdown"].count("classification") >= 1


def test_cli_task_limit_must_be_positive(tmp_path) -> None:
    from activation_oracles.cli import main

    assert main(["audit", "suite", "--out", str(tmp_path / "s"), "--task-limit", "taboo=0"]) == 2
    assert not (tmp_path / "s").exists()


def test_progress_bar_per_method_only_when_asked(oracle, data_dir, monkeypatch) -> None:
    """Each method gets a bar over its items (with an ETA) on a terminal; progress=False draws none."""
    import io

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    for enabled in (False, True):
        err = FakeTTY()
        monkeypatch.setattr("sys.stderr", err)
        run_audit("classification", oracle=oracle, limit=1, data_dir=data_dir, methods=("oracle", "oracle:coeff0"),
                  progress=enabled)
        shown = err.getvalue()
        assert ("classification oracle" in shown and "classification oracle:coeff0" in shown) is enabled, shown
