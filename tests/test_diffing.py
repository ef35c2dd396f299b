"""Model-diffing and TruthfulQA oracle audits end to end on tiny models, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activation_oracles.errors import BaseMismatchError, ConfigError, DataError, OrganismError
from activation_oracles.evals import misalignment  # noqa: F401  (registers the em-* organism tasks)
from activation_oracles.evals.diffing import run_diffing
from activation_oracles.evals.organism import Recipe, build_organism
from activation_oracles.evals.truthfulqa_audit import run_truthfulqa_audit
from activation_oracles.oracle import ActivationOracle
from activation_oracles.tiny import tiny_model
from activation_oracles.training.classification import find_shared_data

RECIPE = Recipe(n_examples=12, steps=2, batch_size=4, fluency_fraction=0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("diff")
    return tuple(build_organism("em-narrow-advice", base="tiny", options={"variant": v}, recipe=RECIPE,
                                out=root / v, checks=False, data_dir=data_dir) for v in ("organism", "control"))


@pytest.fixture(scope="module")
def oracle() -> ActivationOracle:
    return ActivationOracle.untrained(tiny_model())


def test_diffing_reports_auroc_per_method_and_mode(tmp_path, pair, oracle) -> None:
    res = run_diffing([pair], oracle=oracle, out=tmp_path / "d", n_prompts=4, n_boot=50)
    got = {(a["method"], a["mode"]) for a in res["aggregates"]}
    for m in ("oracle", "oracle:shuffled", "oracle:coeff0", "untrained_oracle", "logit_lens"):
        assert {(m, mode) for mode in ("full", "segment", "token")} <= got
    assert ("blackbox", "-") in got
    for a in res["aggregates"]:
        assert 0 <= a["ci_low"] <= a["auroc"] <= a["ci_high"] <= 1 and a["n_pos"] == a["n_neg"] == 4
    # coeff=0 carries no activation information: every difference gets the same score
    for a in res["aggregates"]:
        if a["method"] == "oracle:coeff0" and a["mode"] != "full":
            assert a["auroc"] == 0.5
    saved = json.loads((tmp_path / "d" / "results.json").read_text())
    assert saved["task"] == "diffing" and saved["open_answers"]
    assert "| oracle | full |" in (tmp_path / "d" / "report.md").read_text()
    assert (tmp_path / "d" / "plot_auroc.png").read_bytes().startswith(b"\x89PNG")


def test_diffing_pair_of_two_tasks(tmp_path, pair, oracle, data_dir) -> None:
    other = build_organism("em-reward-hacks", base="tiny", options={"variant": "control"}, recipe=RECIPE,
                           out=tmp_path / "rh", checks=False, data_dir=data_dir)
    with pytest.raises(OrganismError, match="one task's organism and its control"):
        run_diffing([(pair[0], other)], oracle=oracle, n_prompts=2)


def test_diffing_other_base(pair) -> None:
    with pytest.raises(BaseMismatchError, match="d_model"):
        run_diffing([pair], oracle=ActivationOracle.untrained(tiny_model(d_model=32)), n_prompts=2)


def test_diffing_needs_prompts_and_pairs(pair, oracle, tmp_path) -> None:
    with pytest.raises(ConfigError, match="n_prompts=1"):
        run_diffing([pair], oracle=oracle, n_prompts=1, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="no \\(organism, control\\) pairs"):
        run_diffing([], oracle=oracle)


def test_truthfulqa_audit(tmp_path, oracle, data_dir) -> None:
    res = run_truthfulqa_audit(oracle=oracle, data_dir=data_dir, out=tmp_path / "t", limit=4, probe_per_file=8,
                               n_boot=50)
    methods = {a["method"] for a in res["aggregates"]}
    assert {"oracle", "oracle:shuffled", "oracle:coeff0", "untrained_oracle", "probe (GoT)"} <= methods
    assert all(a["n_pos"] == a["n_neg"] == 4 for a in res["aggregates"])
    assert (tmp_path / "t" / "report.md").is_file()


def test_truthfulqa_audit_needs_data(oracle, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("AO_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="shared data folder"):
        run_truthfulqa_audit(oracle=oracle, data_dir=None)
    with pytest.raises(DataError, match="classification/gmt"):
        (tmp_path / "truthfulqa").mkdir()
        src = find_shared_data()
        if src is None:
            pytest.skip("shared data folder not found")
        (tmp_path / "truthfulqa" / "TruthfulQA.csv").write_bytes((src / "truthfulqa" / "TruthfulQA.csv").read_bytes())
        run_truthfulqa_audit(oracle=oracle, data_dir=tmp_path, limit=2)


def test_the_benign_twin_control_tells_a_planted_trait_from_any_difference() -> None:
    """Scores made by hand: a trait only the organism has is trait-specific; a shift every fine-tune has is not."""
    import random

    from activation_oracles.evals.diffing import beyond_benign_row

    rng = random.Random(0)
    base = [rng.gauss(0, 0.3) for _ in range(40)]
    planted = [rng.gauss(1, 0.3) for _ in range(40)]
    benign = [rng.gauss(0, 0.3) for _ in range(40)]
    shifted = [rng.gauss(1, 0.3) for _ in range(40)]
    trait = beyond_benign_row(planted, base, benign, n_boot=200)
    assert trait["passed"] and trait["ci_low"] > 0
    anything = beyond_benign_row(planted, base, shifted, n_boot=200)
    assert not anything["passed"] and anything["benign_auroc"] > 0.9
    # the twin's direction does not matter: a twin scored far *below* the control separates as much
    below = beyond_benign_row(planted, base, [x - 2 for x in benign], n_boot=200)
    assert not below["passed"]


def test_the_off_trait_control_tells_a_trait_from_a_readout_that_leans_on_any_change() -> None:
    """Scores made by hand: (trait question, two off-trait questions) per prompt. An organism that moves only
    the trait question passes; one whose every answer leans the same way (the oracle saying "Yes" to
    anything about it) does not, though its trait AUROC is as high."""
    import random

    from activation_oracles.evals.diffing import off_trait_row

    rng = random.Random(0)
    ctl = [(rng.gauss(0, 0.3), rng.gauss(0, 0.3), rng.gauss(0, 0.3)) for _ in range(40)]
    trait_only = [(rng.gauss(1, 0.3), rng.gauss(0, 0.3), rng.gauss(0, 0.3)) for _ in range(40)]
    leans = [(rng.gauss(1, 0.3), rng.gauss(0, 0.3), rng.gauss(1, 0.3)) for _ in range(40)]
    ok = off_trait_row(trait_only, ctl, ["sports?", "cooking?"], n_boot=200)
    assert ok["passed"] and ok["aurocs"][0] < 0.8 and ok["beyond_off_trait"] > 0.2
    bad = off_trait_row(leans, ctl, ["sports?", "cooking?"], n_boot=200)
    assert not bad["passed"] and bad["aurocs"][1] > 0.9
    # moving the other way on an off-trait question is a change read just as surely
    back = [(rng.gauss(1, 0.3), rng.gauss(0, 0.3), rng.gauss(-1, 0.3)) for _ in range(40)]
    worse = off_trait_row(back, ctl, ["sports?", "cooking?"], n_boot=200)
    assert not worse["passed"] and worse["aurocs"][1] < 0.1


def test_diffing_with_a_benign_twin(tmp_path, pair, oracle, data_dir) -> None:
    from dataclasses import replace

    from activation_oracles.evals.diffing import beyond_off_trait

    twin = build_organism("em-narrow-advice", base="tiny", options={"variant": "control"},
                          recipe=replace(RECIPE, seed=1), out=tmp_path / "twin", checks=False, data_dir=data_dir)
    res = run_diffing([pair], oracle=oracle, out=tmp_path / "d", n_prompts=4, n_boot=50, twins=[twin])
    assert res["config"]["twins"] == ["twin"]
    for a in res["aggregates"]:
        t = a["benign_twin"]
        assert 0 <= t["benign_auroc"] <= 1 and t["ci_low"] <= t["beyond_benign"] <= t["ci_high"]
        assert t["passed"] == (t["ci_low"] > 0)
        o = a.get("off_trait")
        assert (o is not None) == (a["method"] in ("oracle", "untrained_oracle", "logit_lens"))
        if o is not None:
            assert len(o["aurocs"]) == 2 and o["ci_low"] <= o["beyond_off_trait"] <= o["ci_high"]
            # the rows keep every off-trait score: the control can be recomputed from results.json alone
            per = {m: [(r["score"], *r["off_trait_scores"]) for r in res["rows"] if r["pair"] == a["pair"]
                       and r["method"] == a["method"] and r["mode"] == a["mode"] and r["model"] == m]
                   for m in ("organism", "control")}
            assert beyond_off_trait(per["organism"], per["control"]) == pytest.approx(o["beyond_off_trait"])
        assert a["trait_specific"] == (t["passed"] and (o is None or o["passed"]))
    assert {r["model"] for r in res["rows"]} == {"organism", "control", "twin"}
    assert "| trait-specific |" in (tmp_path / "d" / "report.md").read_text()
    with pytest.raises(OrganismError, match="same adapter"):
        run_diffing([pair], oracle=oracle, n_prompts=2, twins=[pair[1]])
    with pytest.raises(OrganismError, match="must be another build"):
        run_diffing([pair], oracle=oracle, n_prompts=2, twins=[pair[0]])
    with pytest.raises(ConfigError, match="2 benign twins for 1 pairs"):
        run_diffing([pair], oracle=oracle, n_prompts=2, twins=[twin, twin])


def test_cli_pair_takes_an_optional_twin(tmp_path, pair, capsys) -> None:
    from activation_oracles.cli import main

    assert main(["audit", "diffing", "--pair", "a,b,c,d", "--out", str(tmp_path / "d")]) == 2
    assert "ORGANISM_DIR,CONTROL_DIR,TWIN_DIR" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
