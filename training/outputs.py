"""What a run writes and reports: the guarded output directory, per-step and whole-run numbers, the
metrics log (JSONL, optionally TensorBoard), the progress bar and the final oracle directory.

:class:`RunState` holds the run's counters, :class:`RunLog` writes its log (rank 0 only) and
:func:`write_oracle` the finished oracle: parts of :class:`~.trainer.Trainer`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, OutputDirError
from . import checkpoint as ckpt

RUN_MARKERS = ("config.toml", "checkpoints", "metrics.jsonl", "oracle_config.json", "adapter_model.safetensors")
OUR_FILES = RUN_MARKERS + ("adapter_config.json", "README.md", "tensorboard")


def check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; with ``overwrite``, remove only this trainer's own files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputDirError(f"output path {str(out)!r} is a file; pass a directory for --out.")
    found = [m for m in RUN_MARKERS if (out / m).exists()]
    if found and not (resume or overwrite):
        raise OutputDirError(f"output directory {str(out)!r} already holds a run (found {', '.join(found)}); pass "
                             "--resume to continue it, --overwrite to replace it, or choose another --out. "
                             "Nothing was changed.")
    if not found and any(out.iterdir()) and not overwrite:
        raise OutputDirError(f"output directory {str(out)!r} is not empty and holds no training run; choose an "
                             "empty or new directory, or pass --overwrite to write into it anyway.")
    if overwrite and not resume and found:  # only a previous run's own files; nothing else is touched
        import shutil

        for name in OUR_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


class StepStats:
    """Loss and token counts of one step, summed over processes; read lazily (no GPU sync until asked)."""

    def __init__(self, loss_sum: torch.Tensor, counts: tuple[int, int, int] | torch.Tensor, n_examples: int) -> None:
        self.loss_sum = loss_sum        # summed answer-token cross-entropy (0-d tensor)
        self._counts = counts           # (answer, oracle, target) tokens: ints, or an all-reduced tensor
        self.n_examples = n_examples

    def _count(self, i: int) -> int:
        c = self._counts
        return int(c[i]) if isinstance(c, tuple) else int(c[i].item())

    @property
    def answer_tokens(self) -> int:
        return self._count(0)

    @property
    def oracle_tokens(self) -> int:
        return self._count(1)

    @property
    def target_tokens(self) -> int:
        return self._count(2)

    @property
    def loss(self) -> float:
        """Mean cross-entropy per answer token over the global batch."""
        return float(self.loss_sum.item()) / max(1, self.answer_tokens)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    examples: int
    losses: list[float] = field(default_factory=list)
    eval: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    oracle_tokens: int = 0
    target_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.oracle_tokens / self.train_time_s if self.train_time_s else 0.0


@dataclass
class RunState:
    """The run's counters: what a checkpoint saves and ``--resume`` puts back (``skipped`` and the
    non-finite run length excepted: they describe the latest batches only)."""

    step: int = 0
    batches: int = 0
    examples: int = 0
    oracle_tokens: int = 0
    target_tokens: int = 0
    train_time: float = 0.0
    losses: list[float] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)      # examples drawn per source
    skipped: dict[str, int] = field(default_factory=dict)   # examples the stream filtered out, per reason
    window: dict[str, float] = field(default_factory=lambda: dict(EMPTY_WINDOW))  # since the last metrics line
    nonfinite_steps: int = 0  # steps whose NaN/inf loss or gradient was not applied (optim.skip_nonfinite)
    nonfinite_run: int = 0

    def saved(self) -> dict[str, Any]:
        return {"step": self.step, "batches": self.batches, "examples": self.examples,
                "oracle_tokens": self.oracle_tokens, "target_tokens": self.target_tokens,
                "train_time": self.train_time, "losses": list(self.losses), "window": dict(self.window),
                "used": dict(self.used)}

    def restore(self, state: dict[str, Any]) -> None:
        self.step, self.batches = int(state["step"]), int(state["batches"])
        self.examples = int(state["examples"])
        self.oracle_tokens, self.target_tokens = int(state["oracle_tokens"]), int(state["target_tokens"])
        self.train_time = float(state["train_time"])
        self.losses = [float(x) for x in state["losses"]]
        self.window = {**EMPTY_WINDOW, **{k: float(v) for k, v in state.get("window", {}).items()}}
        self.used = {str(k): int(v) for k, v in state.get("used", {}).items()}


EMPTY_WINDOW = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}


class RunLog:
    """Messages and the metrics log (``metrics.jsonl``, optionally TensorBoard) of one run; only rank 0 writes.

    Args:
        out: the run's output directory.
        cfg: the run's :class:`~.config.TrainConfig`.
        state: the run's counters (updated by :meth:`flush`).
        is_main: whether this process is rank 0.
        log: where human-readable messages go.
    """

    def __init__(self, out: Path, cfg: Any, state: RunState, *, is_main: bool, log: Callable[[str], None]) -> None:
        self.out, self.cfg, self.state, self.is_main, self.log = out, cfg, state, is_main, log
        self.tb: Any = None

    @property
    def progress_on(self) -> bool:
        """Progress bars for this run's slow phases: ``output.progress``, rank 0 only (on a terminal)."""
        return bool(self.cfg.output.progress) and self.is_main

    def info(self, msg: str) -> None:
        if self.is_main:
            self.log(msg)

    def metric(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def logged_eval(self, step: int) -> dict[str, Any] | None:
        """The evaluation already logged at ``step`` (a run resumed after its final checkpoint), if any."""
        metrics = self.out / "metrics.jsonl"
        if not metrics.exists():
            return None
        found = None
        for line in metrics.read_text().splitlines():
            rec = _record(line)
            if rec is not None and rec.get("step") == step and any(k.startswith("eval/") for k in rec):
                found = {k: v for k, v in rec.items() if k != "step"}
        return found

    def open(self) -> None:
        """Keep the log's lines up to the (resumed) step; open TensorBoard when asked and installed."""
        if not self.is_main:
            return
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # drop lines after the resumed step (and a line cut by a kill): one run's log
            kept = [line for line in metrics.read_text().splitlines()
                    if (rec := _record(line)) is not None and rec.get("step", 0) <= self.state.step]
            metrics.write_text("".join(k + "\n" for k in kept))
        if self.cfg.output.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def nonfinite(self, step: int, loss: float, norm: float) -> None:
        """A step with a NaN/inf loss or gradient: stop (``optim.skip_nonfinite = false``, or 10 in a
        row), else log it; the optimiser step has already kept it from changing the weights."""
        st = self.state
        st.nonfinite_steps += 1
        st.nonfinite_run += 1
        if not self.cfg.optim.skip_nonfinite or st.nonfinite_run >= 10:
            many = f" ({st.nonfinite_run} steps in a row)" if st.nonfinite_run > 1 else ""
            raise DataError(f"the loss became {loss} (gradient norm {norm}) at step {step}{many}; lower optim.lr "
                            "or check the data.")
        self.log(f"step {step}: loss {loss}, gradient norm {norm}: not applied (optim.skip_nonfinite; "
                 f"{st.nonfinite_steps} so far).")

    def flush(self, pending: list[tuple[StepStats, torch.Tensor]], elapsed: float, *, lr: float, write: bool
              ) -> float:
        """Read the pending steps' numbers (this waits for the GPU), update the counters, log; returns tokens/s."""
        st = self.state
        first = st.step - len(pending) + 1
        norms = [float(n) for _, n in pending]
        for k, (stats, _) in enumerate(pending):
            loss = stats.loss
            if not (math.isfinite(loss) and math.isfinite(norms[k])):
                self.nonfinite(first + k, loss, norms[k])
                continue
            st.nonfinite_run = 0
            st.losses.append(loss)
            st.oracle_tokens += stats.oracle_tokens
            st.target_tokens += stats.target_tokens
            st.window["loss"] += loss
            st.window["n"] += 1
            st.window["tokens"] += stats.oracle_tokens
        elapsed = max(elapsed, 1e-9)
        st.train_time += elapsed
        st.window["time"] += elapsed
        w = st.window
        tok_s = w["tokens"] / max(w["time"], 1e-9)
        if write:
            self.metric({"step": st.step, "loss": w["loss"] / max(1, w["n"]), "lr": lr, "grad_norm": norms[-1],
                         "tokens_per_s": tok_s, "oracle_tokens": st.oracle_tokens, "target_tokens": st.target_tokens,
                         "examples": st.examples, "train_time_s": st.train_time,
                         "nonfinite_steps": st.nonfinite_steps})
            st.window = dict(EMPTY_WINDOW)
        return tok_s


def write_oracle(out: Path, cfg: Any, peft: Any, oracle_config: Any, state: RunState, *, mixture: Any,
                 world_size: int, wall_time: float, last_eval: dict[str, Any]) -> dict[str, Any]:
    """Write the adapter (top level of ``out``), the run card ``README.md`` and ``oracle_config.json``
    (written last: its presence marks a finished oracle); returns the ``training`` record it stored."""
    # The adapter only (LoRA matrices): the base embeddings are frozen, so never copy them.
    peft.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    lo = cfg.lora
    training = {
        "config": cfg.to_dict(),
        "data": {"used": dict(sorted(state.used.items())), "skipped": dict(sorted(state.skipped.items()))},
        "mixture": _jsonable(getattr(mixture, "summary", lambda: None)()),
        "steps": state.step, "examples": state.examples, "oracle_tokens": state.oracle_tokens,
        "target_tokens": state.target_tokens, "wall_time_s": round(wall_time, 2),
        "train_time_s": round(state.train_time, 2), "world_size": world_size,
        "final_loss": state.losses[-1] if state.losses else None,
        "eval": last_eval,
    }
    final = replace(oracle_config, training=training,
                    lora={"r": lo.r, "alpha": lo.alpha, "dropout": lo.dropout, "target_modules": list(lo.target_modules)})
    # Our run card replaces the blank model-card template PEFT's save_pretrained just wrote.
    from .run_card import run_card_markdown

    ckpt.atomic_write_bytes(out / "README.md", run_card_markdown(out, cfg, final, training).encode())
    ckpt.atomic_write_bytes(out / "oracle_config.json",
                            (json.dumps(final.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return training


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str)) if obj is not None else None


def _progress(total: int, initial: int, *, enabled: bool) -> Any:
    """The step bar (loss, tokens/s, ETA), or None when it would not be drawn (see activation_oracles.progress)."""
    from ..progress import progress, progress_enabled

    if not progress_enabled(enabled):
        return None
    return progress(desc="training", total=total, initial=initial, unit="step", enabled=enabled)


def _record(line: str) -> dict[str, Any] | None:
    """One metrics line as a dict; None for a blank line or one cut short by a kill."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None
