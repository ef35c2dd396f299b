"""Centred (and standardised) injection: the stored layer statistics, the oracle applying them, the trainer measuring them."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import islice

import pytest
import torch

import activation_oracles as ao
from activation_oracles.config import OracleConfig
from activation_oracles.errors import ActivationsMismatchError, ConfigError
from activation_oracles.training.centring import activation_means
from activation_oracles.training.config import apply_overrides
from activation_oracles.training.example import TrainingExample
from activation_oracles.training.presets import preset

PROMPTS = ["The owl hunts at night.", "A red car stopped at the corner."]


def test_config_round_trips_means_and_checks_their_width():
    cfg = OracleConfig(base_model="m", n_layers=4, d_model=3, activation_means={2: [1.0, 2.0, 3.0]})
    again = OracleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.activation_means == {2: (1.0, 2.0, 3.0)}
    with pytest.raises(ConfigError, match=r"activation_means has vectors of length \{2: 2\}.*d_model=3"):
        OracleConfig(base_model="m", n_layers=4, d_model=3, activation_means={2: [1.0, 2.0]})


def test_config_checks_scales_against_the_means():
    means = {2: [1.0, 2.0, 3.0]}
    cfg = OracleConfig(base_model="m", n_layers=4, d_model=3, activation_means=means, activation_scales={"2": [1, 2, 4]})
    again = OracleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.activation_scales == {2: (1.0, 2.0, 4.0)}
    with pytest.raises(ConfigError, match=r"activation_scales has layers \[2\] but activation_means has \[\]"):
        OracleConfig(base_model="m", n_layers=4, d_model=3, activation_scales={2: [1.0, 1.0, 1.0]})
    with pytest.raises(ConfigError, match=r"activation_scales has layers \[1\] but activation_means has \[2\]"):
        OracleConfig(base_model="m", n_layers=4, d_model=3, activation_means=means, activation_scales={1: [1.0] * 3})
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"non-positive or non-finite"):
            OracleConfig(base_model="m", n_layers=4, d_model=3, activation_means=means,
                         activation_scales={2: [1.0, bad, 1.0]})
    with pytest.raises(ConfigError, match=r"activation_scales has vectors of length \{2: 2\}"):
        OracleConfig(base_model="m", n_layers=4, d_model=3, activation_means=means, activation_scales={2: [1.0, 1.0]})


def test_training_config_refuses_standardising_without_centring():
    with pytest.raises(ConfigError, match=r"model.standardize_activations=True; expected false unless "
                                          r"model.center_activations = true"):
        apply_overrides(preset("tiny"), ["model.standardize_activations=true"])
    both = apply_overrides(preset("tiny"), ["model.center_activations=true", "model.standardize_activations=true"])
    assert both.model.standardize_activations


def test_oracle_injects_standardised_residuals(tiny):
    acts = ao.capture(tiny, PROMPTS, layers=2)
    torch.manual_seed(1)
    mean, scale = torch.randn(tiny.d_model), torch.rand(tiny.d_model) + 0.5
    plain = ao.ActivationOracle.untrained(tiny)
    standardised = plain.with_config(activation_means={2: mean.tolist()}, activation_scales={2: scale.tolist()})
    for a in acts:
        by_hand = replace(a, vectors={2: (a.vectors[2] - mean) / scale})
        want = plain.choice_logprobs(by_hand, "Is it an animal?", ["Yes", "No"])
        assert standardised.choice_logprobs(a, "Is it an animal?", ["Yes", "No"]) == pytest.approx(want, abs=1e-5)
    assert standardised.as_untrained().config.activation_scales == standardised.config.activation_scales


def test_oracle_injects_residuals_minus_the_mean(tiny):
    acts = ao.capture(tiny, PROMPTS, layers=2)
    mean = torch.randn(tiny.d_model)
    plain = ao.ActivationOracle.untrained(tiny)
    centred = plain.with_config(activation_means={2: mean.tolist()})
    for a in acts:
        by_hand = replace(a, vectors={2: a.vectors[2] - mean})  # independent: centre the vectors ourselves
        got = centred.choice_logprobs(a, "Is it an animal?", ["Yes", "No"])
        want = plain.choice_logprobs(by_hand, "Is it an animal?", ["Yes", "No"])
        assert got == pytest.approx(want, abs=1e-5)
        assert got != pytest.approx(plain.choice_logprobs(a, "Is it an animal?", ["Yes", "No"]), abs=1e-5)
    # a difference of two models' residuals is left alone
    diff = acts[0] - replace(acts[0], vectors={2: acts[0].vectors[2] * 0.5})
    assert diff.kind == "difference"
    assert centred.choice_logprobs(diff, "Q?", ["Yes", "No"]) == pytest.approx(
        plain.choice_logprobs(diff, "Q?", ["Yes", "No"]), abs=1e-6)
    # the untrained control keeps the centring
    assert centred.as_untrained().config.activation_means == centred.config.activation_means


def test_a_layer_without_a_mean_is_refused(tiny):
    acts = ao.capture(tiny, PROMPTS[0], layers=1)
    oracle = ao.ActivationOracle.untrained(tiny, activation_means={2: [0.0] * tiny.d_model})
    with pytest.raises(ActivationsMismatchError, match=r"means of layers \[2\] but was given layer 1"):
        oracle.ask(acts, "What is it?", max_new_tokens=2)


def test_activation_means_equal_hidden_state_means(tiny):
    tok = tiny.tokenizer
    examples = [TrainingExample(tuple(tok(p)["input_ids"]), (1, 2, 3), pct, "q?", "a", "s")
                for p in PROMPTS for pct in (25.0, 50.0)]
    means = activation_means(tiny, examples)
    assert sorted(means) == [1, 2]
    for layer, pct in ((1, 25.0), (2, 50.0)):
        rows = []
        for ex in examples:
            if ex.layer_percent == pct:
                out = tiny.hf(input_ids=torch.tensor([ex.context_ids]), output_hidden_states=True)
                rows.append(out.hidden_states[layer + 1][0, list(ex.positions)])
        assert torch.allclose(means[layer], torch.cat(rows).mean(0), atol=1e-5)


def test_trainer_measures_means_and_the_oracle_keeps_them(tmp_path, embedded_tokenizer):
    from activation_oracles.training.source_registry import make_example_stream
    from activation_oracles.training.trainer import Trainer

    cfg = apply_overrides(preset("tiny"), ["model.center_activations=true", "optim.steps=2", "eval.n_examples=0",
                                           "optim.bf16=false", "output.progress=false"])
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg, out_dir=tmp_path / "run")
        out = trainer.train().out_dir
    finally:
        torch.set_num_threads(threads)
    saved = OracleConfig.load(out / "oracle_config.json").activation_means
    layers = sorted({int(trainer.base.n_layers * p / 100) for p in cfg.data.layer_percents})
    assert saved is not None and sorted(saved) == layers
    # recomputed from the same stream on the same (adapter-free) base weights
    fresh = Trainer(apply_overrides(cfg, ["optim.steps=1"]), out_dir=tmp_path / "again")
    stream = make_example_stream(cfg.data.sources, fresh.tokenizer, cfg.data.layer_percents, cfg.optim.seed)
    again = activation_means(fresh.target, islice(stream(2 * 10 ** 6), 256))
    for layer in layers:
        assert torch.allclose(torch.tensor(saved[layer]), again[layer], atol=1e-4)
    from activation_oracles.tiny import tiny_model

    oracle = ao.load_oracle(out, base=tiny_model(tokenizer=embedded_tokenizer))
    assert oracle.config.activation_means == saved


def test_trainer_stores_scales_equal_to_the_spread_of_the_same_activations(tmp_path):
    from activation_oracles.training.source_registry import make_example_stream
    from activation_oracles.training.centring import robust_scale, source_activations
    from activation_oracles.training.trainer import Trainer

    cfg = apply_overrides(preset("tiny"), ["model.center_activations=true", "model.standardize_activations=true",
                                           "optim.steps=1", "eval.n_examples=0", "optim.bf16=false",
                                           "output.progress=false"])
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg, out_dir=tmp_path / "run")
        saved = OracleConfig.load(trainer.train().out_dir / "oracle_config.json")
    finally:
        torch.set_num_threads(threads)
    assert saved.activation_scales is not None and sorted(saved.activation_scales) == sorted(saved.activation_means)
    stream = make_example_stream(cfg.data.sources, trainer.tokenizer, cfg.data.layer_percents, cfg.optim.seed)
    fresh = Trainer(cfg, out_dir=tmp_path / "again")
    for layer, x in source_activations(fresh.target, islice(stream(2 * 10 ** 6), 256)).items():
        # independent of robust_scale's floor: where no channel was floored, the scale is the plain std
        sd = x[x.norm(dim=-1) <= 5 * x.norm(dim=-1).median()].std(0)
        stored = torch.tensor(saved.activation_scales[layer])
        unfloored = sd >= 0.1 * sd.median()
        assert torch.allclose(stored[unfloored], sd[unfloored], rtol=1e-4)
        assert torch.allclose(stored, robust_scale(x), rtol=1e-4)
        assert (stored >= 0.1 * sd.median() * (1 - 1e-5)).all()


def test_robust_scale_floors_quiet_channels_and_ignores_sinks():
    from activation_oracles.training.centring import robust_scale

    torch.manual_seed(0)
    x = torch.randn(200, 6) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 0.0])  # channel 5 never varies
    sink = torch.zeros(1, 6)
    sink[0, 0] = 1e4
    got = robust_scale(torch.cat([x, sink]))
    sd = x.std(0)
    assert torch.allclose(got[:5], sd[:5], atol=1e-5)
    assert got[5] == pytest.approx(0.1 * sd.median().item(), rel=1e-5)  # floored, not 0
    assert torch.equal(robust_scale(x[:1]), torch.ones(6))  # one row: no spread, scale 1


def test_robust_mean_leaves_out_attention_sink_rows():
    from activation_oracles.training.centring import robust_mean

    torch.manual_seed(0)
    ordinary = torch.randn(50, 8) + 3.0
    sink = torch.zeros(1, 8)
    sink[0, 5] = 1e4  # one position with a norm ~1000x the others
    got = robust_mean(torch.cat([ordinary[:20], sink, ordinary[20:]]))
    assert torch.allclose(got, ordinary.mean(0), atol=1e-6)
    assert torch.allclose(robust_mean(ordinary), ordinary.mean(0), atol=1e-6)  # nothing dropped without outliers


def test_prefix_reuse_works_for_a_standardised_oracle(tiny, monkeypatch):
    """Several questions about one activation set share one prefix pass, also when vectors are transformed."""
    from activation_oracles.oracle import ActivationOracle

    acts = ao.capture(tiny, PROMPTS[0], layers=2)
    torch.manual_seed(2)
    oracle = ao.ActivationOracle.untrained(tiny).with_config(
        activation_means={2: torch.randn(tiny.d_model).tolist()},
        activation_scales={2: (torch.rand(tiny.d_model) + 0.5).tolist()})
    calls = []
    real = ActivationOracle._generate_with_prefix
    monkeypatch.setattr(ActivationOracle, "_generate_with_prefix",
                        lambda self, items, *a, **k: calls.append(len(items)) or real(self, items, *a, **k))
    questions = ["What is it?", "Is this about a city?", "Describe the text."]
    reused = oracle.ask(acts, questions, max_new_tokens=5)
    assert calls == [3]  # one prefix pass for the three questions
    assert reused == oracle.ask(acts, questions, max_new_tokens=5, reuse_prefix=False)
    assert reused == [oracle.ask(acts, q, max_new_tokens=5) for q in questions]


def test_centre_is_one_cached_transform_and_a_replaced_config_gets_its_own():
    import dataclasses

    import torch

    cfg = OracleConfig(base_model="m", n_layers=4, d_model=3, activation_means={2: [1.0, 2.0, 3.0]},
                       activation_scales={2: [1.0, 2.0, 4.0]})
    v = torch.tensor([[2.0, 4.0, 7.0]])
    assert cfg.centre(v, 2).tolist() == [[1.0, 1.0, 1.0]]
    assert cfg.centre(v, 2).tolist() == [[1.0, 1.0, 1.0]]
    assert sorted(cfg.__dict__["_stat_tensors"]) == [("mean", 2, "cpu"), ("scale", 2, "cpu")]  # built once
    assert cfg == dataclasses.replace(cfg) and "_stat_tensors" not in cfg.to_dict()
    other = dataclasses.replace(cfg, activation_means={2: [0.0, 0.0, 0.0]}, activation_scales=None)
    assert other.centre(v, 2).tolist() == [[2.0, 4.0, 7.0]]  # not the first config's cached tensors
