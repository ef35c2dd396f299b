"""A killed audit suite continues where it stopped, to the same results; other settings are refused."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from activation_oracles.errors import OutputDirError
from activation_oracles.evals import misalignment  # noqa: F401  (registers the organism tasks)
from activation_oracles.evals import organism as organism_mod
from activation_oracles.evals import suite as suite_mod
from activation_oracles.evals import truthfulqa_audit


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory) -> str:
    """A tiny trained oracle on disk: a spec string, so the suite can tell finished entries apart."""
    from activation_oracles.training.config import apply_overrides
    from activation_oracles.training.presets import preset
    from activation_oracles.training.trainer import Trainer

    cfg = apply_overrides(preset("tiny"), ["optim.steps=2", "eval.n_examples=0", "checkpoint.every=0"])
    out = tmp_path_factory.mktemp("oracle") / "run"
    return str(Trainer(replace(cfg, output=replace(cfg.output, progress=False)), out_dir=out).train().out_dir)


def _kw(oracle_dir: str, data_dir: Path, **changes) -> dict:
    kw = dict(oracle=oracle_dir, limit=2, seed=0, data_dir=data_dir, tasks=["classification", "truthfulqa"],
              methods=("oracle",), command="ao audit suite (test)")
    return {**kw, **changes}


def test_a_killed_suite_resumes_to_the_same_results(tmp_path, oracle_dir, data_dir, monkeypatch) -> None:
    suite_mod.run_suite(tmp_path / "whole", **_kw(oracle_dir, data_dir))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the machine went away during the second entry

    with monkeypatch.context() as m:
        m.setattr(truthfulqa_audit, "run_truthfulqa_audit", killed)
        with pytest.raises(KeyboardInterrupt):
            suite_mod.run_suite(tmp_path / "s", **_kw(oracle_dir, data_dir))
    assert (tmp_path / "s" / "classification" / "results.json").is_file()
    assert not (tmp_path / "s" / "suite.json").exists()
    first_entry = (tmp_path / "s" / "classification" / "results.json").read_bytes()
    timed = json.loads((tmp_path / "s" / suite_mod.TIMINGS_FILE).read_text())
    assert list(timed) == ["classification"] and timed["classification"]["wall_s"] > 0   # the killed entry: none

    real = truthfulqa_audit.run_truthfulqa_audit

    def noted_meanwhile(*args, **kwargs):
        # someone annotates an earlier entry's time while this entry runs: the suite must not write over it
        path = tmp_path / "s" / suite_mod.TIMINGS_FILE
        on_disk = json.loads(path.read_text())
        on_disk["classification"]["note"] = "built beside another job"
        path.write_text(json.dumps(on_disk))
        return real(*args, **kwargs)

    timed["classification"]["note"] = "built beside another job"
    with monkeypatch.context() as m:
        m.setattr(truthfulqa_audit, "run_truthfulqa_audit", noted_meanwhile)
        resumed = suite_mod.run_suite(tmp_path / "s", **_kw(oracle_dir, data_dir))
    assert "reused earlier results with the same settings for: classification" in resumed["markdown"]
    assert (tmp_path / "s" / "classification" / "results.json").read_bytes() == first_entry   # not run again
    timed_after = json.loads((tmp_path / "s" / suite_mod.TIMINGS_FILE).read_text())
    assert timed_after["classification"] == timed["classification"] and timed_after["truthfulqa"]["wall_s"] > 0
    summary = json.loads((tmp_path / "s" / "suite.json").read_text())
    assert summary["entry_wall_s"] == {k: v["wall_s"] for k, v in timed_after.items()}
    assert "Wall time per entry" in resumed["markdown"] and "classification" in resumed["markdown"]
    for entry in ("classification", "truthfulqa"):
        a = json.loads((tmp_path / "whole" / entry / "results.json").read_text())
        b = json.loads((tmp_path / "s" / entry / "results.json").read_text())
        assert a["aggregates"] == b["aggregates"] and a["config"] == b["config"], entry


def test_a_suite_resumed_with_other_settings_is_refused(tmp_path, oracle_dir, data_dir, monkeypatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(truthfulqa_audit, "run_truthfulqa_audit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            suite_mod.run_suite(tmp_path / "s", **_kw(oracle_dir, data_dir))
    before = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    with pytest.raises(OutputDirError, match=r"other settings \(limit: 2 then, 3 now\).*--overwrite"):
        suite_mod.run_suite(tmp_path / "s", **_kw(oracle_dir, data_dir, limit=3))
    assert {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()} == before


def test_a_suite_resumed_without_its_organism_cache_rebuilds_nothing(tmp_path, oracle_dir, data_dir,
                                                                     monkeypatch) -> None:
    # a results folder carried to a fresh machine: its finished entries' organisms are judged by the saved cards
    monkeypatch.setattr(organism_mod, "default_organism_dir",
                        lambda name, digest: tmp_path / "cache" / f"{name}-{digest[:6]}")
    small = organism_mod.Recipe(n_examples=8, steps=1, batch_size=4, fluency_fraction=0)
    monkeypatch.setattr(misalignment.BackdoorOrganism, "recipe", small)
    kw = _kw(oracle_dir, data_dir, tasks=["backdoor", "truthfulqa-mc"], allow_failing_organisms=True)
    first = suite_mod.run_suite(tmp_path / "s", **kw)
    cards = sorted(p.name for p in (tmp_path / "s" / suite_mod.CARDS_DIR).iterdir())
    assert any(c.startswith("trigger-backdoor-organism-") for c in cards), cards
    verdict_line = next(line for line in first["markdown"].splitlines() if line.startswith("Organisms' behaviour"))
    shutil.rmtree(tmp_path / "cache")
    (tmp_path / "s" / "suite.json").unlink()

    def no_build(*args, **kwargs):
        raise AssertionError("a reused entry rebuilt its organism")

    with monkeypatch.context() as m:
        m.setattr(organism_mod, "build_organism", no_build)
        again = suite_mod.run_suite(tmp_path / "s", **kw)
    assert "reused earlier results with the same settings for: backdoor, truthfulqa-mc" in again["markdown"]
    assert verdict_line in again["markdown"].splitlines()
    assert not (tmp_path / "cache").exists()
    # an entry still to run builds the organisms it needs: MC of every organism the suite used
    (tmp_path / "s" / "suite.json").unlink()
    (tmp_path / "s" / "truthfulqa-mc" / "results.json").unlink()
    third = suite_mod.run_suite(tmp_path / "s", **kw)
    assert "reused earlier results with the same settings for: backdoor)" in third["markdown"]
    mc = json.loads((tmp_path / "s" / "truthfulqa-mc" / "results.json").read_text())
    assert "trigger-backdoor-organism" in [r["model"] for r in mc["rows"]]
    assert any(p.name.startswith("trigger-backdoor-organism-") for p in (tmp_path / "cache").iterdir())
    # the organisms' recipe changed: the entry made with the old ones is run again, on the new ones
    (tmp_path / "s" / "suite.json").unlink()
    monkeypatch.setattr(misalignment.BackdoorOrganism, "recipe", replace(small, seed=small.seed + 1))
    fourth = suite_mod.run_suite(tmp_path / "s", **kw)
    assert "for: backdoor" not in fourth["markdown"]
    assert len([p for p in (tmp_path / "cache").iterdir() if p.name.startswith("trigger-backdoor-organism-")]) == 2
