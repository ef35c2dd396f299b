"""Checkpoints: atomic and checksummed, safe to load, and a killed run resumes exactly.

The kill test runs the tiny preset in a subprocess, sends SIGKILL once a checkpoint
exists, resumes it in a new process, and compares the final adapter with an
uninterrupted run's (max abs diff <= 1e-6; in practice bit-identical, one thread).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from activation_oracles.errors import CheckpointError
from activation_oracles.training import checkpoint as ckpt
from activation_oracles.training.config import apply_overrides
from activation_oracles.training.presets import preset

STEPS, EVERY = 60, 5  # many steps after the kill point: the kill must land mid-run even on a loaded machine
OVERRIDES = [f"optim.steps={STEPS}", f"checkpoint.every={EVERY}", "checkpoint.keep=3", "eval.n_examples=0",
             "output.progress=false"]


def test_save_and_load_round_trip(tmp_path):
    state = {"w": torch.arange(4.0), "step": 7, "nested": {"a": [1, 2.5, "x", None], "t": (1, 2)}}
    path = ckpt.save_checkpoint(tmp_path, 7, state)
    assert path.name == "step_00000007.safetensors" and path.with_suffix(".json").is_file()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files left
    step, loaded = ckpt.load_latest(tmp_path)
    assert step == 7 and torch.equal(loaded["w"], state["w"]) and loaded["nested"]["a"] == [1, 2.5, "x", None]
    assert loaded["nested"]["t"] == (1, 2)
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["step"] == 7 and len(manifest["sha256"]) == 64 and manifest["bytes"] == path.stat().st_size


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, {"step": step})
    ckpt.prune(tmp_path, 2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 3]


def test_corrupted_latest_falls_back_to_the_previous(tmp_path):
    for step in (10, 20):
        ckpt.save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((64,), float(step))})
    latest = tmp_path / "checkpoints" / "step_00000020.safetensors"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    reports: list[str] = []
    step, state = ckpt.load_latest(tmp_path, report=reports.append)
    assert step == 10 and state["w"][0] == 10
    assert any("step_00000020.safetensors is corrupted" in r for r in reports)
    assert any("previous valid checkpoint, step 10" in r for r in reports)


def test_incomplete_checkpoint_without_manifest_is_skipped(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1})
    ckpt.save_checkpoint(tmp_path, 2, {"step": 2})
    (tmp_path / "checkpoints" / "step_00000002.json").unlink()  # killed between data file and manifest
    reports: list[str] = []
    assert ckpt.load_latest(tmp_path, report=reports.append)[0] == 1
    assert "no manifest" in reports[0]


def test_no_valid_checkpoint_raises(tmp_path):
    assert ckpt.load_latest(tmp_path) is None
    ckpt.save_checkpoint(tmp_path, 5, {"step": 5})
    (tmp_path / "checkpoints" / "step_00000005.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no valid checkpoint.*corrupted"):
        ckpt.load_latest(tmp_path, report=lambda msg: None)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_old_pickle_checkpoint_is_refused_unopened(tmp_path):
    """A ``step_*.pt`` (torch.save) checkpoint of an older version is reported, never unpickled."""
    buf = io.BytesIO()
    torch.save({"step": 1, "x": OrderedDict(a=Evil())}, buf)
    ckpt.atomic_write_bytes(tmp_path / "checkpoints" / "step_00000001.pt", buf.getvalue())
    import hashlib

    manifest = {"format": 1, "step": 1, "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                "bytes": len(buf.getvalue())}
    (tmp_path / "checkpoints" / "step_00000001.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="older version.*cannot be resumed safely"):
        ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_00000001.pt")
    with pytest.raises(CheckpointError, match="no valid checkpoint.*older version"):
        ckpt.load_latest(tmp_path, report=lambda msg: None)


def test_rng_state_round_trips(tmp_path):
    import random

    import numpy as np

    state = ckpt.rng_state()
    before = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.save_checkpoint(tmp_path, 1, {"rng": state})
    ckpt.set_rng_state(ckpt.load_latest(tmp_path)[1]["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == before


# -- kill -9 and resume ------------------------------------------------------------------------------

def _cli(out: Path, *extra: str) -> list[str]:
    """The subprocess runs build batches on the prefetch thread; the in-process ones inline: same result."""
    args = [sys.executable, "-m", "activation_oracles.training", "--preset", "tiny", "--out", str(out),
            "--set", "data.prefetch=2"]
    for o in OVERRIDES:
        args += ["--set", o]
    return args + list(extra)


def _in_process(out: Path, resume: bool = False, extra: tuple[str, ...] = ()):
    from activation_oracles.training.trainer import Trainer

    threads = torch.get_num_threads()
    try:
        cfg = apply_overrides(preset("tiny"), [*OVERRIDES, *extra])
        return Trainer(cfg, out_dir=out, resume=resume, overwrite=not resume).train()
    finally:
        torch.set_num_threads(threads)


def _max_diff(a: Path, b: Path) -> float:
    ta, tb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert ta.keys() == tb.keys() and ta
    return max(float((ta[k] - tb[k]).abs().max()) for k in ta)


def _kill_after_checkpoint(proc: subprocess.Popen, marker: Path, outcome: dict) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            outcome["error"] = f"no checkpoint appeared (exit status {proc.poll()})"
            proc.kill()
            return
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    import threading

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    outcome: dict = {}
    watcher = threading.Thread(target=_kill_after_checkpoint,
                               args=(proc, killed / "checkpoints" / f"step_{2 * EVERY:08d}.json", outcome))
    watcher.start()
    # Meanwhile, the reference: the same run uninterrupted, in this process (one thread each).
    reference = _in_process(tmp_path / "reference")
    watcher.join()
    _, err = proc.communicate()
    assert "error" not in outcome, outcome["error"] + err.decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "oracle_config.json").exists(), "the run finished before the kill; it must be interrupted"
    assert max(s for s, _ in ckpt.list_checkpoints(killed)) < STEPS

    # Resume in a fresh process: it must end exactly where the uninterrupted run did.
    copy = tmp_path / "killed_copy"
    shutil.copytree(killed, copy)
    resumed = subprocess.Popen(_cli(killed, "--resume"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)

    # Meanwhile (one thread each): corrupt the newest checkpoint of the copy; the resume reports it, uses
    # the previous one, and still ends exactly where the uninterrupted run did.
    newest = ckpt.list_checkpoints(copy)[0][1]
    newest.write_bytes(newest.read_bytes()[:-100] + b"\0" * 100)
    result = _in_process(copy, resume=True)
    assert result.steps == STEPS
    assert _max_diff(reference.out_dir, copy) <= 1e-6

    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed from checkpoint step" in err
    assert _max_diff(reference.out_dir, killed) <= 1e-6
    metrics = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(5, STEPS + 1, 5))  # no duplicated steps after resume
    ref_metrics = [json.loads(x) for x in (reference.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in metrics] == [m["loss"] for m in ref_metrics]


def test_resume_after_a_kill_during_the_final_save_logs_each_step_once(tmp_path):
    """Killed after the final checkpoint, while the oracle was being written: resuming finishes the
    oracle without evaluating (and logging) the last step a second time; a line cut short is dropped."""
    out, evaluating = tmp_path / "run", ("eval.n_examples=8",)
    first = _in_process(out, extra=evaluating)
    for name in ("adapter_model.safetensors", "oracle_config.json"):
        (out / name).unlink()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 0.')  # a write the kill cut short
    result = _in_process(out, resume=True, extra=evaluating)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], "eval/loss" in r) for r in records]
    assert len(keys) == len(set(keys)), keys
    assert sum(has_eval for _, has_eval in keys) >= 1
    assert (out / "oracle_config.json").is_file() and result.eval == first.eval
