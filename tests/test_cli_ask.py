"""``ao ask``: answers and probabilities from the command line, typed errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import activation_oracles as ao
from activation_oracles.cli import main
from activation_oracles.tiny import tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_model")
    m = tiny_model(init_range=0.2)
    m.hf.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    return folder


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_ask_choices_json_matches_python_api(tiny_dir: Path, capsys) -> None:
    rc = main(["ask", "--target", str(tiny_dir), "--prompt", "Owls hunt at night.", "--untrained", "--layer", "2",
               "--question", "Is this about animals?", "--choices", "Yes,No", "--json"])
    assert rc == 0
    (record,) = _lines(capsys)
    target = ao.load_model(str(tiny_dir))
    acts = ao.capture(target, "Owls hunt at night.", layers=2)
    expected = ao.ActivationOracle.untrained(target).choose(acts, "Is this about animals?", ["Yes", "No"])
    assert record["probs"] == pytest.approx(expected)
    assert record["layer"] == 2 and record["mode"] == "full" and record["n_positions"] == len(acts)


def test_ask_text_tokens_mode_and_saved_acts(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "acts.safetensors"
    assert main(["capture", "--model", str(tiny_dir), "--prompt", "Owls hunt.", "--layers", "1",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    rc = main(["ask", "--acts", str(out), "--untrained", "--question", "What?", "--question", "Why?",
               "--mode", "tokens", "--max-new-tokens", "3", "--json"])
    assert rc == 0
    records = _lines(capsys)
    acts = ao.Activations.load(out)
    assert len(records) == 2 * len(acts)
    assert {r["question"] for r in records} == {"What?", "Why?"}
    assert all(r["n_positions"] == 1 and isinstance(r["answer"], str) for r in records)


def test_ask_segment_mode_human_output(tiny_dir: Path, capsys) -> None:
    rc = main(["ask", "--target", str(tiny_dir), "--prompt", "A long enough sentence about a cat and a dog.",
               "--untrained", "--mode", "segment", "--segment-len", "4", "--question", "What?",
               "--max-new-tokens", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("Q: What? [segment]\nA: ")


@pytest.mark.parametrize("argv, needle", [
    (["ask", "--question", "Q?", "--untrained"], "either --prompt"),
    (["ask", "--prompt", "x", "--acts", "a.safetensors", "--question", "Q?", "--untrained"], "either --prompt"),
    (["ask", "--prompt", "x", "--question", "Q?", "--untrained", "--choices", "Yes"], "at least two"),
    (["ask", "--prompt", "x", "--untrained"], "--question Q, or --describe"),
    (["ask", "--prompt", "x", "--untrained", "--describe", "--choices", "Yes,No"], "leave out --choices"),
])
def test_ask_usage_errors(argv: list[str], needle: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err


def test_ask_missing_shipped_oracle_or_bad_question(tiny_dir: Path, capsys) -> None:
    rc = main(["ask", "--target", str(tiny_dir), "--prompt", "hello", "--untrained", "--question", "  "])
    assert rc == 2 and "question is empty" in capsys.readouterr().err


def test_ask_out_writes_the_records_and_shows_the_captured_tokens(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "answers.jsonl"
    rc = main(["ask", "--target", str(tiny_dir), "--prompt", "Owls hunt at night.", "--untrained", "--layer", "2",
               "--positions", "last:2", "--question", "Is this about animals?", "--choices", "Yes,No", "--json",
               "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    printed = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == printed and len(written) == 1
    # The token strip: the whole rendered chat, template included, and exactly the 2 captured tokens in [ ].
    strip = "\n".join(line for line in captured.err.splitlines() if line.startswith(("text ", "     ")))
    assert "'<|im_start|>'" in strip and strip.count("['") == 2


def test_ask_out_into_a_missing_folder_fails_before_loading(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    rc = main(["ask", "--target", str(tiny_dir), "--prompt", "Owls.", "--untrained", "--question", "Q?",
               "--out", str(tmp_path / "nope" / "a.jsonl")])
    assert rc != 0 and "nope" in capsys.readouterr().err


def test_ask_a_tiny_run_without_a_target(tmp_path: Path, capsys) -> None:
    """`ao ask --oracle RUN` on a tiny run: its random base is rebuilt and read as the target."""
    from dataclasses import replace

    from activation_oracles.training.config import apply_overrides
    from activation_oracles.training.presets import preset
    from activation_oracles.training.trainer import Trainer

    cfg = apply_overrides(preset("tiny"), ["optim.steps=2", "eval.n_examples=0", "checkpoint.every=0"])
    run = Trainer(replace(cfg, output=replace(cfg.output, progress=False)), out_dir=tmp_path / "run").train().out_dir
    capsys.readouterr()
    rc = main(["ask", "--oracle", str(run), "--prompt", "The owl hunts.", "--question", "Is this about an animal?",
               "--choices", "Yes,No", "--json"])
    assert rc == 0
    (record,) = _lines(capsys)
    oracle = ao.load_oracle(run)
    acts = ao.capture(oracle.model, "The owl hunts.", layer_percent=50)
    expected = oracle.choose(acts, "Is this about an animal?", ["Yes", "No"])
    assert record["probs"] == pytest.approx(expected, abs=1e-6)


# -- answers cut at the budget, and the libraries' noise -------------------------------------------------

def test_ask_default_budget_is_64_tokens() -> None:
    from activation_oracles.cli import build_parser

    args = build_parser().parse_args(["ask", "--question", "Q?"])
    assert args.max_new_tokens == 64


def test_an_answer_cut_at_the_budget_is_marked_and_noted(tiny_dir: Path, capsys) -> None:
    """The random tiny model never ends its turn within 2 tokens: the answer is cut, and ao says so."""
    argv = ["ask", "--target", str(tiny_dir), "--prompt", "Owls hunt.", "--untrained", "--question", "What?",
            "--max-new-tokens", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.rstrip().endswith("[...]")
    assert "note: an answer reached --max-new-tokens 2" in captured.err
    assert main(argv + ["--json"]) == 0
    (record,) = _lines(capsys)
    assert record["truncated"] is True and not record["answer"].endswith("[...]")


def test_an_answer_the_oracle_ended_gets_no_note(tiny_dir: Path, capsys, monkeypatch) -> None:
    from activation_oracles.answer import Answer

    monkeypatch.setattr(ao.ActivationOracle, "ask", lambda self, sets, q, **kw: [Answer("An owl.")] * len(sets))
    assert main(["ask", "--target", str(tiny_dir), "--prompt", "Owls hunt.", "--untrained", "--question", "What?"]) == 0
    captured = capsys.readouterr()
    assert "A: An owl.\n" in captured.out and "[...]" not in captured.out and "note:" not in captured.err


def test_transformers_loading_bar_only_with_verbose(tiny_dir: Path, capsys) -> None:
    """transformers draws a "Loading weights" bar on every load; ao hides it unless -v."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # the library's default, whatever an earlier test did
    try:
        argv = ["ask", "--target", str(tiny_dir), "--prompt", "Owls.", "--untrained", "--question", "Q?",
                "--choices", "Yes,No"]
        assert main(argv) == 0
        assert "Loading weights" not in capsys.readouterr().err
        assert hf_logging.is_progress_bar_enabled()  # restored after the command
        assert main(["-v"] + argv) == 0
        assert "Loading weights" in capsys.readouterr().err
    finally:
        if not was_on:
            hf_logging.disable_progress_bar()


def test_describe_asks_the_describe_question_first(tiny_dir: Path, capsys) -> None:
    from activation_oracles.oracle import DESCRIBE_QUESTION

    rc = main(["ask", "--target", str(tiny_dir), "--prompt", "Owls hunt at night.", "--untrained", "--layer", "2",
               "--describe", "--question", "Why?", "--max-new-tokens", "4", "--json"])
    assert rc == 0
    records = _lines(capsys)
    assert [r["question"] for r in records] == [DESCRIBE_QUESTION, "Why?"]
    target = ao.load_model(str(tiny_dir))
    oracle = ao.ActivationOracle.untrained(target)
    acts = ao.capture(target, "Owls hunt at night.", layers=2)
    assert records[0]["answer"] == oracle.describe(acts, max_new_tokens=4)
    assert oracle.describe([acts, acts], max_new_tokens=4) == [records[0]["answer"]] * 2
