"""Probe ceilings: chance on shuffled labels, near-perfect on a planted feature, typed errors on too little data."""

from __future__ import annotations

import pytest
import torch

from activation_oracles.errors import ConfigError, DataError
from activation_oracles.training.probe import all_task_names, fit_logistic, probe_ceiling, task_rows


def test_fit_logistic_finds_a_planted_direction_and_not_noise():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 64, generator=g)
    y = torch.randint(0, 2, (400,), generator=g)
    X[:, 3] += 1.5 * (2 * y - 1)  # a planted direction, as a feature a model carries would be
    X[:, 7] += 0.75 * (2 * y - 1)
    acc = fit_logistic(X[:280], y[:280], 2).predict(X[280:]).eq(y[280:]).float().mean().item()
    assert acc > 0.9
    y_rand = torch.randint(0, 2, (400,), generator=g)
    chance = fit_logistic(X[:280], y_rand[:280], 2).predict(X[280:]).eq(y_rand[280:]).float().mean().item()
    assert 0.3 < chance < 0.7


ANIMALS = ["owl", "cat", "horse", "dog", "tiger", "rabbit", "fox", "wolf", "bear", "eagle"]
OBJECTS = ["table", "spoon", "laptop", "bridge", "pencil", "bottle", "window", "ladder", "hammer", "carpet"]


@pytest.mark.slow
def test_probe_reads_a_feature_the_model_carries(smollm):
    # A trivially present feature: does the sentence end on an animal or an object noun?
    starts = ["Yesterday I saw a", "My neighbour bought a", "There was a big", "She drew a", "We talked about the",
              "Look at that", "He painted a", "They found an old"]
    rows = [(f"{s} {w}", "animal" if w in ANIMALS else "object") for s in starts for w in ANIMALS + OBJECTS]
    r = probe_ceiling(smollm, rows, task="planted", n=160)
    assert r.accuracy > 0.9, r
    assert r.shuffled < 0.75, r  # permuted training labels: no better than a guess
    assert r.n_test == 48 and r.interval[0] <= r.accuracy <= r.interval[1]


def test_too_few_rows_is_a_typed_error(tiny):
    rows = [("a b c", "x"), ("d e f", "y")] * 5
    with pytest.raises(DataError, match="at least 40"):
        probe_ceiling(tiny, rows, task="small")
    with pytest.raises(DataError, match="at least two"):
        probe_ceiling(tiny, [("a", "x")] * 50, task="one")


def test_unknown_task_names_are_typed_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown task"):
        task_rows(tmp_path, "gmt/nope")
    with pytest.raises(ConfigError, match="unknown family"):
        task_rows(tmp_path, "family/nope")
    assert "family/language" in all_task_names() and "gmt/cities" in all_task_names()


def test_cli_refuses_bad_input_before_loading_a_model(tmp_path, capsys):
    from activation_oracles.cli import main

    assert main(["data", "probe", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["data", "probe", "--data-dir", str(tmp_path), "--n", "5"]) == 2
    assert "at least 40" in capsys.readouterr().err
    assert main(["data", "probe", "--data-dir", str(tmp_path), "--tasks", "gmt/nope"]) == 2
    assert "unknown tasks" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
