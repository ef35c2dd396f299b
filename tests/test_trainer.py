"""The trainer: config tree, batching, a tiny run whose loss falls, the oracle directory, and bad input.

The tiny run (``--preset tiny``: a 4-block random Llama, built-in sentences) is trained
once per module and shared by the tests that inspect its output.
"""

from __future__ import annotations

import json
from dataclasses import replace
from random import Random

import pytest
import torch

from activation_oracles.errors import ConfigError, DataError, OutputDirError
from activation_oracles.training.batching import (IGNORE, BatchStream, answer_loss_sum, collate_oracle,
                                                  collate_target, prepare, split_micro)
from activation_oracles.training.config import SourceSpec, TrainConfig, apply_overrides
from activation_oracles.training.example import TrainingExample
from activation_oracles.training.source_registry import make_example_stream
from activation_oracles.training.presets import TINY_TEXTS, preset


def quiet(cfg: TrainConfig, **eval_changes) -> TrainConfig:
    return replace(cfg, output=replace(cfg.output, progress=False),
                   eval=replace(cfg.eval, **eval_changes) if eval_changes else cfg.eval)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset trained once (in this process, one thread)."""
    from activation_oracles.training.trainer import Trainer

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("tiny") / "oracle"
    try:
        result = Trainer(quiet(preset("tiny")), out_dir=out).train()
    finally:
        torch.set_num_threads(threads)
    return result


# -- config ------------------------------------------------------------------------------------------

def test_config_round_trips_through_toml_and_yaml():
    cfg = apply_overrides(preset("tiny"), ["optim.lr=5e-4", "data.sources.1.weight=2", "lora.target_modules=q_proj"])
    assert cfg.optim.lr == 5e-4 and cfg.data.sources[1].weight == 2.0 and cfg.lora.target_modules == ("q_proj",)
    assert TrainConfig.from_toml(cfg.to_toml()) == cfg
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg


def test_config_file_applies_on_top_of_a_preset(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = 0.01\n\n[[data.sources]]\nkind = \"context_prediction\"\ntexts = [\"a b c d e\"]\n")
    cfg = TrainConfig.load(path, base=preset("tiny"))
    assert cfg.optim.lr == 0.01 and cfg.model.name == "tiny"
    assert [s.kind for s in cfg.data.sources] == ["context_prediction"]
    assert cfg.data.sources[0].params == {"texts": ["a b c d e"]}


def test_unknown_config_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'lrate' in \[optim\]; valid keys are: .*batch_size.*lr"):
        TrainConfig.from_toml("[optim]\nlrate = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'modle' in the top level; valid keys are: checkpoint"):
        apply_overrides(TrainConfig(), ["modle.name=x"])
    with pytest.raises(ConfigError, match="unknown key 'colour'.*valid keys are: .*directions.*n_positions"):
        make_example_stream([SourceSpec("context_prediction", 1.0, {"texts": ["a b c"], "colour": 1})],
                            None, (50.0,), 0)


def test_layer_percent_outside_0_100_raises():
    for bad in ("[0, 50]", "[50, 100]", "[-5]", "[150]"):
        with pytest.raises(ConfigError, match=r"outside \(0, 100\)"):
            apply_overrides(TrainConfig(), [f"data.layer_percents={bad}"])
    ex = TrainingExample((1, 2, 3), (2,), 100.0, "q?", "a", "s")
    with pytest.raises(DataError, match=r"layer_percent=100.0, outside \(0, 100\)"):
        prepare(ex, None, None, 4)  # type: ignore[arg-type]


def test_injection_coeff_is_checked_and_reaches_the_exported_oracle(tmp_path):
    from activation_oracles.config import OracleConfig
    from activation_oracles.training.trainer import Trainer

    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match=r"model.injection_coeff=.*expected a positive finite number"):
            apply_overrides(TrainConfig(), [f"model.injection_coeff={bad}"])
    cfg = apply_overrides(quiet(preset("tiny")), ["model.injection_coeff=4", "optim.steps=2", "eval.n_examples=0"])
    threads = torch.get_num_threads()
    try:
        out = Trainer(cfg, out_dir=tmp_path / "run").train().out_dir
    finally:
        torch.set_num_threads(threads)
    # the oracle must be asked with the strength it was trained with
    assert OracleConfig.load(out / "oracle_config.json").coeff == 4.0


def test_cli_reports_bad_config_with_exit_status_2(capsys):
    from activation_oracles.training.cli import main

    assert main(["--preset", "tiny", "--set", "optim.nope=1"]) == 2
    assert "valid keys are" in capsys.readouterr().err
    assert main(["--set", "optim.lr=1"]) == 2
    assert "--config FILE or --preset" in capsys.readouterr().err
    assert main(["--preset", "tiny", "--print-config", "--set", "optim.lr=0.5"]) == 0
    assert "lr = 0.5" in capsys.readouterr().out


# -- data errors -------------------------------------------------------------------------------------

def test_missing_and_empty_data_files_raise(tmp_path, embedded_tokenizer):
    with pytest.raises(DataError, match="does not exist"):
        make_example_stream([SourceSpec("context_prediction", 1.0, {"path": str(tmp_path / "nope.txt")})],
                            embedded_tokenizer, (50.0,), 0)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        make_example_stream([SourceSpec("context_prediction", 1.0, {"path": str(empty)})],
                            embedded_tokenizer, (50.0,), 0)


def test_missing_label_column_raises(tmp_path, embedded_tokenizer):
    (tmp_path / "gmt").mkdir()
    (tmp_path / "gmt" / "cities.csv").write_text("statement,truth\nParis is in France.,1\n")
    spec = SourceSpec("classification", 1.0, {"data_dir": str(tmp_path), "tasks": ["gmt/cities"]})
    with pytest.raises(DataError, match=r"no column\(s\) \['label'\]; its columns are \['statement', 'truth'\]"):
        next(make_example_stream([spec], embedded_tokenizer, (50.0,), 0)(0))


def test_all_contexts_longer_than_max_length_raises(tmp_path):
    from activation_oracles.training.trainer import Trainer

    cfg = apply_overrides(quiet(preset("tiny")), ["data.max_length=1"])
    trainer = Trainer(cfg, out_dir=tmp_path / "run")
    with pytest.raises(DataError, match="every example's context is longer than data.max_length=1"):
        trainer.train()
    assert not (tmp_path / "run").exists()  # found out before the run folder and config.toml were written


def test_output_dir_holding_another_run_is_refused_and_left_alone(tiny_run, tmp_path):
    from activation_oracles.training.trainer import Trainer

    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.out_dir.iterdir()}
    with pytest.raises(OutputDirError, match="already holds a run.*--resume.*--overwrite"):
        Trainer(quiet(preset("tiny")), out_dir=tiny_run.out_dir)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.out_dir.iterdir()} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty and holds no training run"):
        Trainer(quiet(preset("tiny")), out_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


# -- batching ----------------------------------------------------------------------------------------

def _examples(tok, n=12, seed=0):
    rng = Random(seed)
    out = []
    for i in range(n):
        ids = tuple(tok(TINY_TEXTS[i % len(TINY_TEXTS)], add_special_tokens=False)["input_ids"])
        k = rng.randint(1, 3)
        out.append(TrainingExample(ids, tuple(range(len(ids) - k, len(ids))), 50.0, "What is it?",
                                   rng.choice(["Yes", "a cat"]), "demo"))
    return out


def test_collation_left_pads_and_labels_only_answers(embedded_tokenizer):
    from activation_oracles.config import OracleConfig

    cfg = OracleConfig(base_model="tiny", n_layers=4, d_model=64)
    items = [prepare(ex, embedded_tokenizer, cfg, 4) for ex in _examples(embedded_tokenizer, 5)]
    tb = collate_target(items, 0)
    for i, p in enumerate(items):
        row = tb.input_ids[i, tb.offsets[i]:].tolist()
        assert row == list(p.context_ids) and tb.attention_mask[i, :tb.offsets[i]].sum() == 0
        assert tb.position_ids[i, tb.offsets[i]:].tolist() == list(range(len(p.context_ids)))
    ob = collate_oracle(items, 0)
    width = ob.input_ids.shape[1]
    for i, p in enumerate(items):
        labelled = (ob.labels[i] != IGNORE).nonzero().flatten().tolist()
        assert labelled == list(range(width - p.n_answer, width))
        assert ob.input_ids[i, width - len(p.oracle_ids):].tolist() == list(p.oracle_ids)
        assert ob.labels[i, labelled].tolist() == list(p.oracle_ids[-p.n_answer:])
    # The loss from the last `keep` logits equals the loss from all logits.
    logits = torch.randn(len(items), width, 50)
    labels = ob.labels.clamp(max=49).where(ob.labels != IGNORE, ob.labels)
    full = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    assert torch.allclose(answer_loss_sum(logits[:, -ob.keep:], labels), full)


def test_batch_stream_groups_lengths_deterministically(embedded_tokenizer):
    exs = _examples(embedded_tokenizer, 64)

    def factory(epoch):
        return iter(exs)

    a = [b for b, _ in zip(BatchStream(factory, batch_size=4, group_batches=4, seed=1), range(20))]
    b = [b for b, _ in zip(BatchStream(factory, batch_size=4, group_batches=4, seed=1), range(20))]
    assert a == b and all(len(x) == 4 for x in a)
    assert split_micro(list(range(5)), 2) == [[0, 1, 2], [3, 4]]


# -- the tiny run ------------------------------------------------------------------------------------

def test_tiny_run_loss_falls(tiny_run):
    losses = tiny_run.losses
    assert len(losses) == 60 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 2.0, (first, last)


def test_tiny_run_writes_an_oracle_directory(tiny_run):
    out = tiny_run.out_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "oracle_config.json", "config.toml",
                 "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "default").exists()  # adapter at the top level, not in a PEFT subfolder
    from activation_oracles.config import OracleConfig

    oc = OracleConfig.load(out / "oracle_config.json")
    assert (oc.n_layers, oc.d_model, oc.injection_layer) == (4, 64, 1)
    assert oc.lora["r"] == 8 and "lm_head" in oc.lora["target_modules"]
    t = oc.training
    assert t["steps"] == 60 and t["examples"] == 480 and t["wall_time_s"] > 0
    assert set(t["data"]["used"]) == {"context_prediction", "tiny_yes_no"}
    assert sum(t["data"]["used"].values()) == 480
    assert TrainConfig.from_dict(t["config"]) == TrainConfig.from_toml((out / "config.toml").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert all(r["tokens_per_s"] > 0 for r in train)
    assert [r["step"] for r in evals] == [30, 60]
    assert {"eval/yes_no_acc", "eval/exact_match"} <= set(evals[-1])
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] + 1.0


def test_trained_tiny_oracle_loads_and_answers(tiny_run, embedded_tokenizer):
    import activation_oracles as ao
    from activation_oracles.tiny import tiny_model

    target = tiny_model(tokenizer=embedded_tokenizer)
    oracle = ao.load_oracle(tiny_run.out_dir, base=target)
    acts = ao.capture(target, "The owl hunts mice at night.", layer_percent=50)
    answer = oracle.ask(acts, "Does this text mention an animal?", max_new_tokens=4)
    assert isinstance(answer, str)
    probs = oracle.choose(acts, "Does this text mention an animal?", ["Yes", "No"])
    assert set(probs) == {"Yes", "No"} and abs(sum(probs.values()) - 1) < 1e-5


def test_eval_scores_yes_no_and_exact_match(tiny_run, tmp_path):
    from activation_oracles.training.trainer import Trainer

    cfg = apply_overrides(quiet(preset("tiny")), ["optim.steps=1", "eval.n_examples=8"])
    trainer = Trainer(cfg, out_dir=tmp_path / "e")
    metrics = trainer.evaluate()
    assert metrics["eval/n"] == 8 and 0 <= metrics["eval/yes_no_acc"] <= 1 and 0 <= metrics["eval/exact_match"] <= 1
    assert metrics["eval/n_yes_no"] + metrics["eval/n_exact"] == 8


def test_separate_target_model_and_overwrite(tmp_path):
    from activation_oracles.training.trainer import Trainer

    cfg = apply_overrides(quiet(preset("tiny")), ["model.target=tiny", "optim.steps=3", "eval.n_examples=0"])
    first = Trainer(cfg, out_dir=tmp_path / "run")
    assert first.target is not first.oracle
    assert not any(p.requires_grad for p in first.target.hf.parameters())
    result = first.train()
    assert result.steps == 3 and (tmp_path / "run" / "oracle_config.json").is_file()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    again = Trainer(cfg, out_dir=tmp_path / "run", overwrite=True)  # replaces the run, keeps other files
    assert not (tmp_path / "run" / "oracle_config.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    del again


def test_training_loss_is_minus_choose_logprob_and_prompts_agree(tmp_path):
    """What the trainer optimises is what ``choose`` scores: same prompt tokens, same vectors, same loss."""
    import activation_oracles as ao
    from activation_oracles.tiny import tiny_model
    from activation_oracles.training.steps import make_micro
    from activation_oracles.training.trainer import Trainer

    # Standardised vectors: the transform the trainer applies (measured means and scales) must be the
    # one the exported oracle applies at inference.
    sets = ["optim.steps=3", "eval.n_examples=0", "checkpoint.every=0", "model.center_activations=true",
            "model.standardize_activations=true"]
    trainer = Trainer(apply_overrides(quiet(preset("tiny")), sets), out_dir=tmp_path / "run")
    result = trainer.train()  # a few steps, so the adapter is not the zero update it starts as
    text, question = "A fox crossed the snowy road at dawn.", "Does this text mention an animal?"
    ids = tuple(trainer.tokenizer(text, add_special_tokens=False)["input_ids"])
    positions = (len(ids) - 3, len(ids) - 1)
    target = tiny_model(n_layers=4, d_model=64, tokenizer=trainer.tokenizer)  # the trainer's target, rebuilt
    oracle = ao.load_oracle(result.out_dir, base=target)
    for answer in ("Yes", "No"):
        ex = TrainingExample(context_ids=ids, positions=positions, layer_percent=50, question=question,
                             answer=answer, source="check")
        (item,) = trainer.prepare([ex])
        trainer.peft.eval()
        with torch.no_grad():
            mb = make_micro([item], trainer.pad_id)
            loss = float(trainer.oracle_loss_sum(mb, trainer.target_vectors(mb)))
        acts = ao.capture(target, text, chat=False, layers=item.layer, positions=list(positions))
        assert acts.token_ids == ids
        built = oracle._item(acts, question, None)
        prompt_len = len(item.oracle_ids) - item.n_answer
        assert tuple(built.prompt.input_ids) == item.oracle_ids[:prompt_len]
        assert tuple(built.prompt.positions) == item.placeholder_positions
        logp = oracle.choice_logprobs(acts, question, ["Yes", "No"])[answer]
        assert abs(loss + logp) < 1e-4, (answer, loss, logp)


def test_a_full_disk_at_the_first_write_leaves_no_run_folder(tmp_path, monkeypatch):
    import errno

    from activation_oracles.errors import OutputWriteError
    from activation_oracles.training import checkpoint as ckpt
    from activation_oracles.training.trainer import Trainer

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = apply_overrides(quiet(preset("tiny")), ["optim.steps=1", "eval.n_examples=0"])
    trainer = Trainer(cfg, out_dir=tmp_path / "run")
    monkeypatch.setattr(ckpt, "atomic_write_bytes", full)
    with pytest.raises(OutputWriteError, match="No space left"):
        trainer.train()
    assert not (tmp_path / "run").exists()


def test_a_tiny_run_loads_without_its_base_and_answers_as_with_it(tiny_run, embedded_tokenizer):
    """The tiny preset's random base exists nowhere: load_oracle rebuilds it from the run's settings."""
    import activation_oracles as ao
    from activation_oracles.tiny import tiny_model

    alone = ao.load_oracle(tiny_run.out_dir)
    target = tiny_model(tokenizer=embedded_tokenizer)
    with_base = ao.load_oracle(tiny_run.out_dir, base=target)
    for name, (a, b) in {"embed": (alone.model.hf.get_input_embeddings().weight,
                                   target.hf.get_input_embeddings().weight)}.items():
        assert torch.equal(a, b), name
    acts = ao.capture(target, "The owl hunts mice at night.", layer_percent=50)
    q = "Does this text mention an animal?"
    assert alone.choose(acts, q, ["Yes", "No"]) == pytest.approx(with_base.choose(acts, q, ["Yes", "No"]), abs=1e-6)


def test_tiny_run_readme_is_our_run_card(tiny_run):
    """PEFT's blank template is replaced by a card built from the run's own config and metrics."""
    from activation_oracles.training.run_card import MARKER

    out = tiny_run.out_dir
    card = (out / "README.md").read_text()
    assert card.startswith(MARKER + "\n# Activation oracle for `tiny-llama`")
    assert "More Information Needed" not in card and "Model Card" not in card  # PEFT's template markers
    cfg = preset("tiny")
    assert "| steps | 60 x batch 8 |" in card
    assert f"AdamW lr {cfg.optim.lr:g}" in card and f"r {cfg.lora.r}, alpha {cfg.lora.alpha:g}" in card
    assert "25% (block 1), 50% (block 2), 75% (block 3)" in card and "| centring | none" in card
    for spec in cfg.data.sources:  # every mixture source with its weight
        assert f" | {spec.kind} | {spec.weight:g} | " in card
    assert "| context_prediction | context_prediction |" in card and "| tiny_yes_no |" in card
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 60 and "eval/yes_no_acc" in last
    acc = [f"{100 * last[f'eval/yes_no_acc{s}']:.1f}%" for s in ("", "_shuffled", "_coeff0")]
    assert f"| yes/no accuracy | {last['eval/n_yes_no']} | {' | '.join(acc)} |" in card  # the final figures and controls
    assert f"ao.load_oracle({str(out)!r})" in card and f"ao ask --oracle {out}" in card


def test_the_constructor_is_cheap_and_start_prepares_the_data(tmp_path):
    """Building a trainer wires its parts only: no rollouts, no activation statistics, no folder until start()."""
    from activation_oracles.training.trainer import Trainer

    cfg = quiet(preset("tiny"))
    on_policy = SourceSpec("on_policy", 0.5, {"n_rollouts": 3, "max_new_tokens": 6, "rollout_batch_size": 2,
                                              "n_positions": [1, 2], "n_tokens": [1, 2]})
    cfg = replace(cfg, data=replace(cfg.data, sources=cfg.data.sources + (on_policy,)),
                  model=replace(cfg.model, center_activations=True))
    cfg = apply_overrides(cfg, ["optim.steps=1", "eval.n_examples=0", "checkpoint.every=0", "optim.bf16=false"])
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg, out_dir=tmp_path / "run", log=lambda _msg: None)
        (source,) = [b.source for b in trainer._factory.builders if hasattr(getattr(b, "source", None), "rollouts")]
        assert source._rollouts == [] and trainer.oracle_config.activation_means is None
        assert not (tmp_path / "run").exists()
        trainer.start()
        try:
            assert len(source._rollouts) == 3
            assert sorted(trainer.oracle_config.activation_means) == sorted(
                {trainer.base.layer_at(p) for p in cfg.data.layer_percents})
            assert (tmp_path / "run" / "config.toml").exists()
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(threads)
