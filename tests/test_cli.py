"""The ``ao`` command line: instant help, typed errors as one line, and captures that round-trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import activation_oracles as ao
from activation_oracles.cli import format_summary, main
from activation_oracles.errors import LayerNotFoundError

AO_SCRIPT = Path(sys.executable).parent / "ao"


def _run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, **kw)


# -- no torch for --help -------------------------------------------------------------------------------

_HELP_PROBE = """
import contextlib, io, sys, time
t0 = time.perf_counter()
from activation_oracles.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main({argv!r})
print(json.dumps({{"rc": rc, "seconds": time.perf_counter() - t0, "torch": "torch" in sys.modules,
                  "transformers": "transformers" in sys.modules, "help": out.getvalue()}}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["capture", "--help"], ["demo", "--help"], ["--version"]])
def test_help_is_instant_and_imports_no_torch(argv: list[str]) -> None:
    proc = _run([sys.executable, "-c", "import json\n" + _HELP_PROBE.format(argv=argv)])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    assert result["torch"] is False and result["transformers"] is False
    assert result["seconds"] < 1.0, result["seconds"]
    assert result["help"].strip()


def test_importtime_of_help_has_no_torch() -> None:
    """The same fact from the interpreter's own import log (``-X importtime``)."""
    proc = _run([sys.executable, "-X", "importtime", "-m", "activation_oracles", "--help"])
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "activation_oracles.cli" in imported
    assert not any(name == "torch" or name.startswith("torch.") for name in imported)


def test_console_script_and_module_entry_points() -> None:
    assert AO_SCRIPT.is_file(), f"{AO_SCRIPT} missing: is the package installed (pip install -e .)?"
    proc = _run([str(AO_SCRIPT), "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "capture" in proc.stdout and "demo" in proc.stdout
    proc = _run([sys.executable, "-m", "activation_oracles", "--version"])
    assert proc.returncode == 0 and proc.stdout.strip() == f"ao {ao.__version__}"


# -- usage errors --------------------------------------------------------------------------------------

def test_unknown_subcommand_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    proc = _run([str(AO_SCRIPT), "frobnicate"])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr


def test_no_subcommand_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "capture" in capsys.readouterr().err


def test_unknown_option_and_conflicting_layers_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "--prompt", "x", "--bogus"]) == 2
    assert main(["capture", "--prompt", "x", "--layers", "3", "--layer-percent", "50"]) == 2
    assert main(["capture", "--prompt", "x", "--backend", "jax"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_missing_output_folder_fails_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["capture", "--model", "no/such-model", "--prompt", "hi", "--out", str(tmp_path / "nope" / "a.st")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: --out") and "does not exist" in err
    assert "loading" not in err  # checked before the (slow) model load


# -- captures on a tiny model saved to a folder (fast) ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, embedded_tokenizer) -> Path:
    from activation_oracles.tiny import tiny_model

    m = tiny_model(tokenizer=embedded_tokenizer)
    folder = tmp_path_factory.mktemp("tiny-model")
    m.hf.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    return folder


def test_bad_layer_is_one_error_line_and_exit_2(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["capture", "--model", str(tiny_dir), "--prompt", "hi", "--layers", "99"])
    err = capsys.readouterr().err
    assert rc == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "layer 99 is out of range" in error_lines[0]
    assert "Traceback" not in err


def test_bad_layer_in_a_subprocess(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "acts.safetensors"
    proc = _run([str(AO_SCRIPT), "capture", "--model", str(tiny_dir), "--prompt", "hi", "--layers", "4",
                 "--out", str(out)])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: layer 4 is out of range")
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_positions_is_a_typed_error(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "--model", str(tiny_dir), "--prompt", "hi", "--layers", "1", "--positions", "5:3"]) == 2
    assert "error: positions='5:3'" in capsys.readouterr().err


def test_single_index_position(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.safetensors"
    assert main(["capture", "--model", str(tiny_dir), "--prompt", "hi", "--layers", "1", "--positions", "-1",
                 "--out", str(out)]) == 0
    acts = ao.Activations.load(out)
    assert acts.positions == (len(acts.token_ids) - 1,)


def test_traceback_flag_reraises(tiny_dir: Path) -> None:
    with pytest.raises(LayerNotFoundError):
        main(["--traceback", "capture", "--model", str(tiny_dir), "--prompt", "hi", "--layers", "99"])


def test_capture_writes_what_the_model_computes(tiny_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "acts.safetensors"
    rc = main(["capture", "--model", str(tiny_dir), "--prompt", "Tell me about owls.", "--layers", "1",
               "--layers", "-2", "--positions", "last:3", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    acts = ao.Activations.load(out)
    assert acts.model_name == str(tiny_dir)
    assert (acts.n_layers, acts.d_model) == (4, 64)
    assert acts.layers == (-2, 1)
    assert acts.positions == tuple(range(len(acts.token_ids) - 3, len(acts.token_ids)))
    assert acts.meta["prompt"] == "Tell me about owls." and acts.meta["chat"] is True
    # Independent truth: block i's output is hidden_states[i + 1] of a plain forward pass (not for the
    # last block: transformers applies the final norm to the last hidden state).
    model = ao.load_model(str(tiny_dir))
    with torch.no_grad():
        hidden = model.hf(torch.tensor([acts.token_ids]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts.vectors[1], hidden[2][0, -3:], rtol=0, atol=1e-5)
    torch.testing.assert_close(acts.vectors[-2], hidden[3][0, -3:], rtol=0, atol=1e-5)
    assert "[3, 64]" in stdout and "saved" in stdout


def test_no_chat_feeds_raw_text(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw.safetensors"
    assert main(["capture", "--model", str(tiny_dir), "--prompt", "The cat sat", "--no-chat", "--layers", "0",
                 "--out", str(out)]) == 0
    acts = ao.Activations.load(out)
    tok = ao.load_model(str(tiny_dir)).tokenizer
    assert list(acts.token_ids) == tok("The cat sat")["input_ids"]
    assert acts.meta["chat"] is False


def test_summary_reports_shape_and_norms() -> None:
    vectors = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])  # norms 5 and 1
    acts = ao.Activations({2: vectors}, positions=(0, 2), token_ids=(7, 8, 9), tokens=("a", "b", "c"),
                          model_name="toy", n_layers=4, d_model=3)
    text = format_summary(acts, prompt="abc")
    assert "toy (4 layers, d_model 3" in text
    assert "tokens     3 (captured 2 positions: 0, 2)" in text
    row = [line for line in text.splitlines() if line.strip().startswith("2 ")][0].split()
    assert row[1:] == ["[2,", "3]", "3.00", "1.00", "5.00"]


# -- the embedded model (slow) -------------------------------------------------------------------------

@pytest.mark.slow
def test_capture_embedded_end_to_end(tmp_path: Path, smollm) -> None:
    out = tmp_path / "acts.safetensors"
    proc = _run([str(AO_SCRIPT), "capture", "--model", "smollm2-135m", "--prompt", "Tell me about owls.",
                 "--layers", "15", "--layers", "7", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-135m (30 layers, d_model 576" in proc.stdout
    acts = ao.Activations.load(out)
    assert acts.model_name == "smollm2-135m"
    assert (acts.n_layers, acts.d_model, acts.layers, acts.kind) == (30, 576, (7, 15), "residual")
    from activation_oracles.capturing import render

    assert list(acts.token_ids) == render(smollm, "Tell me about owls.")
    assert acts.positions == tuple(range(len(acts.token_ids)))
    assert acts.meta["prompt"] == "Tell me about owls."
    with torch.no_grad():
        hidden = smollm.hf(torch.tensor([acts.token_ids]), output_hidden_states=True).hidden_states
    for layer in (7, 15):
        assert f"[{len(acts.token_ids)}, 576]" in proc.stdout
        torch.testing.assert_close(acts.vectors[layer], hidden[layer + 1][0], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "reading block 15 (50% depth)" in out
    from activation_oracles.demo import DEMO_CASES

    # One verdict per contrast, and their count in the summary agrees with them.
    verdicts = [line for line in out.splitlines() if "-> the oracle's margin" in line]
    assert len(verdicts) == len(DEMO_CASES)
    wins = sum("exceeds" in line for line in verdicts)
    assert f"{wins} of {len(DEMO_CASES)} contrasts read" in out
    assert out.count("   A: ") == 1
