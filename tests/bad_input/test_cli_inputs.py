"""The ``ao`` command line on bad input: one ``error:`` line, no traceback, exit 2 (usage) or 1 (runtime).

Cases call ``main(argv)`` in-process (fast); three run the installed ``ao`` script, for what
only a real process shows: exit statuses, undecodable argv bytes and a closed pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from activation_oracles.cli import main

from _support import snapshot, small_model

AO = Path(sys.executable).parent / "ao"
USAGE, RUNTIME = 2, 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_tokenizer: Any) -> Path:
    m = small_model(embedded_tokenizer, positions=256)
    folder = tmp_path_factory.mktemp("cli-model")
    m.hf.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Input files for --acts and --config: good and bad ones."""
    import torch
    from safetensors.torch import save_file

    from activation_oracles.activations import Activations

    d = tmp_path_factory.mktemp("inputs")
    acts = Activations({1: torch.ones(2, 32)}, positions=(0, 1), token_ids=(5, 6), tokens=("a", "b"),
                       model_name="x", n_layers=2, d_model=32)
    meta = acts.metadata()
    save_file({"layer_1": torch.ones(2, 32)}, str(d / "bad-meta.safetensors"), metadata={**meta, "layers": "[1"})
    save_file({"layer_1": torch.ones(2, 32)}, str(d / "foreign.safetensors"), metadata={"format": "other"})
    (d / "pickle.pt").write_bytes(b"\x80\x04\x95junk")
    (d / "binary.toml").write_bytes(b"\xff\xfe\x00\x01\x89PNG")
    (d / "bad.toml").write_text("[optim\nlr = ")
    (d / "unknown.toml").write_text("[optim]\nlrr = 1\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "conf.txt").write_text("[optim]\nlr = 1e-3\n")
    (d / "afile").write_text("x")
    (d / "adir").mkdir()
    return {p.name: p for p in d.iterdir()}


def run(argv: list[str], capsys: pytest.CaptureFixture[str], folder: Path, status: int, needle: str) -> str:
    before = snapshot(folder)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == status, (rc, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:") or "error: " in line]
    assert len(lines) == 1, err
    assert needle in lines[0], (needle, lines[0])
    assert snapshot(folder) == before, "the command changed a file"
    return lines[0]


# argparse's own checks (usage, exit 2)
ARGPARSE = [
    (["capture"], "--prompt"),
    (["capture", "--prompt", "x", "--layers", "1.5"], "'1.5'"),
    (["capture", "--prompt", "x", "--layers", "one"], "'one'"),
    (["capture", "--prompt", "x", "--layers"], "--layers"),
    (["capture", "--prompt", "x", "--layer-percent", "half"], "'half'"),
    (["capture", "--prompt", "x", "--layers", "3", "--layer-percent", "50"], "not allowed with"),
    (["capture", "--prompt", "x", "--backend", "jax"], "'jax'"),
    (["capture", "--prompt", "x", "--dtype", "fp12"], "'fp12'"),
    (["capture", "--prompt", "x", "--bogus"], "--bogus"),
    (["ask", "--prompt", "x"], "--question"),
    (["ask", "--prompt", "x", "--question", "q", "--mode", "words"], "'words'"),
    (["ask", "--prompt", "x", "--question", "q", "--max-new-tokens", "many"], "'many'"),
    (["ask", "--prompt", "x", "--question", "q", "--coeff", "big"], "'big'"),
    (["ask", "--prompt", "x", "--question", "q", "--oracle", "o", "--untrained"], "not allowed with"),
    (["train", "--preset", "huge"], "'huge'"),
    (["train", "--bogus"], "--bogus"),
    (["frobnicate"], "'frobnicate'"),
]


@pytest.mark.parametrize("argv, needle", ARGPARSE, ids=[" ".join(a)[:40] for a, _ in ARGPARSE])
def test_argparse_usage_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str],
                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert main(argv) == USAGE
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def _cases(files: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], int, str]]:
    f = {k: str(v) for k, v in files.items()}
    return {
        # capture: checked before any model loads
        "capture-prompt-surrogate": (["capture", "--prompt", "caf\udce9"], USAGE, "b'caf\\xe9'"),
        "capture-prompt-empty": (["capture", "--prompt", ""], USAGE, "''"),
        "capture-prompt-blank": (["capture", "--prompt", "  "], USAGE, "'  '"),
        "capture-out-dir": (["capture", "--prompt", "x", "--out", f["adir"]], USAGE, f["adir"]),
        "capture-out-missing-folder": (["capture", "--prompt", "x", "--out", str(tmp / "no" / "a.st")], USAGE,
                                       "does not exist"),
        "capture-out-under-file": (["capture", "--prompt", "x", "--out", f["afile"] + "/a.st"], USAGE, f["afile"]),
        "capture-device-cuda-99": (["capture", "--prompt", "x", "--device", "cuda:99"], USAGE, "'cuda:99'"),
        "capture-device-bogus": (["capture", "--prompt", "x", "--device", "gpu"], USAGE, "'gpu'"),
        "capture-device-empty": (["capture", "--prompt", "x", "--device", ""], USAGE, "''"),
        "capture-model-offline": (["capture", "--prompt", "x", "--model", "no-org/no-model"], RUNTIME,
                                  "no-org/no-model"),
        "capture-model-missing-dir": (["capture", "--prompt", "x", "--model", str(tmp / "nope")], USAGE, "nope"),
        # ask: checked before any model loads
        "ask-neither": (["ask", "--question", "q", "--untrained"], USAGE, "either --prompt"),
        "ask-both": (["ask", "--prompt", "x", "--acts", f["afile"], "--question", "q"], USAGE, "either --prompt"),
        "ask-max-new-tokens-0": (["ask", "--prompt", "x", "--question", "q", "--max-new-tokens", "0"], USAGE,
                                 "--max-new-tokens 0"),
        "ask-max-new-tokens-negative": (["ask", "--prompt", "x", "--question", "q", "--max-new-tokens", "-3"], USAGE,
                                        "--max-new-tokens -3"),
        "ask-segment-len-0": (["ask", "--prompt", "x", "--question", "q", "--segment-len", "0"], USAGE,
                              "--segment-len 0"),
        "ask-coeff-nan": (["ask", "--prompt", "x", "--question", "q", "--coeff", "nan"], USAGE, "--coeff nan"),
        "ask-coeff-inf": (["ask", "--prompt", "x", "--question", "q", "--coeff", "inf"], USAGE, "--coeff inf"),
        "ask-choices-one": (["ask", "--prompt", "x", "--question", "q", "--choices", "Yes"], USAGE, "'Yes'"),
        "ask-choices-trailing-comma": (["ask", "--prompt", "x", "--question", "q", "--choices", "Yes,"], USAGE,
                                       "'Yes,'"),
        "ask-choices-blank": (["ask", "--prompt", "x", "--question", "q", "--choices", " , "], USAGE, "' , '"),
        "ask-question-surrogate": (["ask", "--prompt", "x", "--question", "wh\udcffat"], USAGE, "\\udcff"),
        "ask-prompt-surrogate": (["ask", "--prompt", "\udc80x", "--question", "q"], USAGE, "b'\\x80x'"),
        "ask-prompt-empty": (["ask", "--prompt", "", "--question", "q"], USAGE, "''"),
        "ask-acts-missing": (["ask", "--acts", str(tmp / "none.safetensors"), "--question", "q"], USAGE,
                             "does not exist"),
        "ask-acts-directory": (["ask", "--acts", f["adir"], "--question", "q"], USAGE, "is a directory"),
        "ask-acts-bad-metadata": (["ask", "--acts", f["bad-meta.safetensors"], "--question", "q"], RUNTIME,
                                  "'[1'"),
        "ask-acts-foreign": (["ask", "--acts", f["foreign.safetensors"], "--question", "q"], USAGE, "'other'"),
        "ask-acts-pickle": (["ask", "--acts", f["pickle.pt"], "--question", "q"], RUNTIME, "pickle"),
        # train: the config is resolved and checked before anything loads or is written
        "train-nothing": (["train"], USAGE, "--config FILE or --preset"),
        "train-config-binary": (["train", "--config", f["binary.toml"]], USAGE, "not UTF-8"),
        "train-config-missing": (["train", "--config", str(tmp / "none.toml")], USAGE, "does not exist"),
        "train-config-directory": (["train", "--config", f["adir"]], USAGE, "is a directory"),
        "train-config-invalid-toml": (["train", "--config", f["bad.toml"]], USAGE, "invalid TOML"),
        "train-config-unknown-key": (["train", "--config", f["unknown.toml"]], USAGE, "'lrr'"),
        "train-config-yaml-list": (["train", "--config", f["list.yaml"]], USAGE, "list"),
        "train-config-suffix": (["train", "--config", f["conf.txt"]], USAGE, "'.txt'"),
        "train-out-proc": (["train", "--preset", "tiny", "--out", "/proc/ao-run"], RUNTIME, "/proc/ao-run"),
        "train-out-under-file": (["train", "--preset", "tiny", "--out", f["afile"] + "/run"], RUNTIME, f["afile"]),
        "train-device": (["train", "--preset", "tiny", "--out", str(tmp / "run"), "--set", "model.device=cuda:99"],
                         USAGE, "'cuda:99'"),
    }


SET = [
    ("lora.alpha=inf", "lora.alpha=inf"), ("lora.alpha=nan", "lora.alpha=nan"), ("lora.alpha=-1", "lora.alpha=-1"),
    ("lora.alpha=0", "lora.alpha=0"), ("lora.r=0", "lora.r=0"), ("lora.r=1.5", "1.5"), ("lora.dropout=1", "dropout=1"),
    ("lora.dropout=nan", "dropout=nan"), ("optim.lr=nan", "optim.lr=nan"), ("optim.lr=inf", "optim.lr=inf"),
    ("optim.lr=0", "optim.lr=0"), ("optim.lr=-1e-3", "optim.lr=-0.001"), ("optim.lr=fast", "'fast'"),
    ("optim.weight_decay=inf", "weight_decay=inf"), ("optim.weight_decay=-1", "weight_decay=-1"),
    ("optim.grad_clip=inf", "grad_clip=inf"), ("optim.grad_clip=nan", "grad_clip=nan"),
    ("optim.warmup_fraction=1", "warmup_fraction=1"), ("optim.betas=[0.9]", "betas"),
    ("optim.betas=[0.9, 1.5]", "1.5"), ("optim.batch_size=0", "batch_size=0"), ("optim.batch_size=abc", "'abc'"),
    ("optim.grad_accum=0", "grad_accum=0"), ("optim.steps=-1", "steps=-1"), ("optim.bf16=maybe", "'maybe'"),
    ("data.n_examples=0", "n_examples=0"), ("data.max_length=0", "max_length=0"),
    ("data.max_positions=0", "max_positions=0"), ("data.layer_percents=[0]", "0"),
    ("data.layer_percents=[50, 100]", "100"), ("data.layer_percents=[nan]", "nan"),
    ("data.group_batches=0", "group_batches=0"), ("data.prefetch=-2", "prefetch=-2"),
    ("data.sources.9.weight=1", "'9'"), ("data.sources.0.weight=0", "weight=0"),
    ("data.sources.0.weight=inf", "weight=inf"), ("data.sources=1", "data.sources"),
    ("model.injection_coeff=0", "injection_coeff=0"), ("model.injection_coeff=nan", "injection_coeff=nan"),
    ("model.injection_layer=-1", "injection_layer=-1"), ("model.dtype=fp12", "'fp12'"),
    ("model.standardize_activations=true", "standardize_activations"), ("model.name=", "model.name"),
    ("checkpoint.keep=0", "keep=0"), ("checkpoint.every=-1", "every=-1"), ("eval.every=-1", "every=-1"),
    ("eval.batch_size=0", "batch_size=0"), ("eval.max_new_tokens=0", "max_new_tokens=0"),
    ("output.log_every=0", "log_every=0"), ("output.dir=", "output.dir"), ("optim.lrr=1", "'lrr'"),
    ("optimizer.lr=1", "'optimizer'"), ("lr=1", "'lr'"), ("optim.lr", "no '='"), ("=1", "names no section"),
]


@pytest.mark.parametrize("setting, needle", SET, ids=[s for s, _ in SET])
def test_train_set_errors(setting: str, needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = run(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--set", setting], capsys, tmp_path,
               USAGE, needle)
    assert not (tmp_path / "run").exists()
    if setting.startswith("lora.alpha"):
        assert "lora.alpha" in line and "lr" not in line.replace("lora.alpha", "")


CASE_IDS = list(_cases({k: Path(k) for k in ["adir", "afile", "bad-meta.safetensors", "foreign.safetensors",
                                            "pickle.pt", "binary.toml", "bad.toml", "unknown.toml", "list.yaml",
                                            "conf.txt"]}, Path("t")))


@pytest.mark.parametrize("case", CASE_IDS)
def test_cli_errors(case: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id must fail fast, never wait on the network
    argv, status, needle = _cases(files, tmp_path)[case]
    run(argv, capsys, tmp_path, status, needle)
    assert not (tmp_path / "run").exists()


# with a real (tiny) model: errors found once the prompt is tokenized
MODEL_CASES = [
    (["--positions", "last:99"], USAGE, "last:99"),
    (["--positions", "0:999"], USAGE, "999"),
    (["--positions", "-999"], USAGE, "-999"),
    (["--positions", "first:3"], USAGE, "first:3"),
    (["--layers", "99"], USAGE, "layer 99"),
    (["--layers", "0", "--layers", "-9"], USAGE, "layer -9"),
    (["--layer-percent", "150"], USAGE, "150"),
    (["--layer-percent", "0"], USAGE, "0"),
    (["--out", "/proc/acts.safetensors"], RUNTIME, "/proc/acts.safetensors"),
]


@pytest.fixture(scope="module")
def loaded(embedded_tokenizer: Any) -> Any:
    return small_model(embedded_tokenizer, positions=256)


@pytest.mark.parametrize("extra, status, needle", MODEL_CASES, ids=[" ".join(e) for e, _, _ in MODEL_CASES])
def test_capture_errors_with_a_model(loaded: Any, extra: list[str], status: int, needle: str,
                                     capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The model is handed over already loaded (a load costs ~1 s a case), so its hooks can be checked too."""
    import activation_oracles.cli as cli
    from _support import hooks_on, logits

    before = logits(loaded)
    monkeypatch.setattr(cli, "_load_model", lambda args: loaded)
    monkeypatch.chdir(tmp_path)
    run(["capture", "--prompt", "Owls hunt at night."] + extra, capsys, tmp_path, status, needle)
    assert hooks_on(loaded) == [] and (logits(loaded) == before).all()


def test_capture_error_after_a_real_load(model_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run(["capture", "--model", str(model_dir), "--prompt", "Owls hunt at night.", "--positions", "last:99"], capsys,
        tmp_path, USAGE, "last:99")


def test_train_max_length_fails_before_writing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(["train", "--preset", "tiny", "--out", str(out), "--set", "data.max_length=1", "--set", "output.progress=false",
         "--set", "output.tensorboard=false"], capsys, tmp_path, RUNTIME, "data.max_length=1")
    assert not out.exists()  # neither the run folder nor config.toml


def test_traceback_flag_shows_the_typed_error(capsys: pytest.CaptureFixture[str]) -> None:
    from activation_oracles.errors import PromptError

    with pytest.raises(PromptError):
        main(["--traceback", "capture", "--prompt", "x\udcff"])


# -- real processes ------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1"}


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """A reader that closes the pipe (``| true``, ``| head -1``): no BrokenPipeError, no traceback.

    With ``| true`` the pipe is closed before ``ao`` has started, so the write fails for sure and
    the status is 141 (128 + SIGPIPE, as for `yes | head`); ``head -1`` may read everything first.
    """
    script = (f"'{AO}' train --list-keys | true; echo \"rc=${{PIPESTATUS[0]}}\"; "
              f"'{AO}' train --list-keys | head -1; echo \"rc=${{PIPESTATUS[0]}}\"")
    proc = subprocess.run(script, shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=_env())
    lines = proc.stdout.splitlines()
    assert lines[0] == "rc=141", proc.stdout[-300:]
    assert lines[1].startswith("model.") and lines[2] in ("rc=0", "rc=141"), proc.stdout[-300:]
    assert proc.stderr == "", proc.stderr


def test_broken_pipe_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from activation_oracles.cli import EXIT_BROKEN_PIPE, run_command

    # a stdout without a file descriptor: the handler must never point pytest's own fd 1 at /dev/null
    monkeypatch.setattr(sys, "stdout", io.StringIO())

    def handler(args: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    import argparse

    assert run_command(handler, argparse.Namespace()) == EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_non_utf8_argv_bytes_and_exit_statuses(tmp_path: Path) -> None:
    """Undecodable bytes in argv (usage: 2) and an unwritable --out (runtime: 1), each one line on stderr."""
    bad = subprocess.run([os.fsencode(str(AO)), b"capture", b"--prompt", b"caf\xe9"], capture_output=True,
                         timeout=120, cwd=tmp_path, env=_env())
    err = bad.stderr.decode()
    assert bad.returncode == USAGE and err.count("error:") == 1 and "Traceback" not in err, err
    assert "b'caf\\xe9'" in err
    proc = subprocess.run([str(AO), "train", "--preset", "tiny", "--out", "/proc/ao-run"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=_env())
    assert proc.returncode == RUNTIME and proc.stderr.count("error:") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "/proc/ao-run" in proc.stderr
    assert os.listdir(tmp_path) == []
