"""What a run writes and reports: the guarded output directory, per-step and whole-run numbers, the
metrics log (JSONL, optionally TensorBoard), the progress bar and the final oracle directory.

:class:`RunOutputs` is a mixin of :class:`~.trainer.Trainer`; only rank 0 writes.
"""

from __future__ import annotations

import json
import math
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


class RunOutputs:
    """Messages, metrics and the oracle directory (mixed into the Trainer)."""

    cfg: Any
    out: Path

    @property
    def _progress_on(self) -> bool:
        """Progress bars for this run's slow phases: ``output.progress``, rank 0 only (on a terminal)."""
        return bool(self.cfg.output.progress) and self.dist.is_main

    def _info(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    def _metric(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def _logged_eval(self, step: int) -> dict[str, Any] | None:
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

    def _open_logs(self) -> None:
        if not self.dist.is_main:
            return
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # drop lines after the resumed step (and a line cut by a kill): one run's log
            kept = [line for line in metrics.read_text().splitlines()
                    if (rec := _record(line)) is not None and rec.get("step", 0) <= self.step]
            metrics.write_text("".join(k + "\n" for k in kept))
        if self.cfg.output.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL only
                self._tb = None

    def save_oracle(self, wall_time: float) -> None:
        """Write the adapter (top level of the output dir), the run card ``README.md`` and
        ``oracle_config.json`` (written last: its presence marks a finished oracle)."""
        # The adapter only (LoRA matrices): the base embeddings are frozen, so never copy them.
        self.peft.save_pretrained(str(self.out), safe_serialization=True, save_embedding_layers=False)
        lo = self.cfg.lora
        training = {
            "config": self.cfg.to_dict(),
            "data": {"used": dict(sorted(self._used.items())), "skipped": dict(sorted(self._skipped.items()))},
            "mixture": _jsonable(getattr(getattr(self._factory, "mixture", None), "summary", lambda: None)()),
            "steps": self.step, "examples": self.examples_seen, "oracle_tokens": self.oracle_tokens,
            "target_tokens": self.target_tokens, "wall_time_s": round(wall_time, 2),
            "train_time_s": round(self.train_time, 2), "world_size": self.dist.world_size,
            "final_loss": self.losses[-1] if self.losses else None,
            "eval": self.last_eval,
        }
        final = replace(self.oracle_config, training=training,
                        lora={"r": lo.r, "alpha": lo.alpha, "dropout": lo.dropout,
                              "target_modules": list(lo.target_modules)})
        # Our run card replaces the blank model-card template PEFT's save_pretrained just wrote.
        from .run_card import run_card_markdown

        ckpt.atomic_write_bytes(self.out / "README.md", run_card_markdown(self.out, self.cfg, final, training).encode())
        ckpt.atomic_write_bytes(self.out / "oracle_config.json",
                                (json.dumps(final.to_dict(), indent=2, sort_keys=True) + "\n").encode())
        self._info(f"oracle written to {self.out} ({self.step} steps, {self.examples_seen} examples, "
                   f"final loss {training['final_loss']:.4f}).")

    def _nonfinite(self, step: int, loss: float, norm: float) -> None:
        """A step with a NaN/inf loss or gradient: stop (``optim.skip_nonfinite = false``, or 10 in a
        row), else log it; :meth:`optimizer_step` has already kept it from changing the weights."""
        self.nonfinite_steps += 1
        self._nonfinite_run += 1
        if not self.cfg.optim.skip_nonfinite or self._nonfinite_run >= 10:
            many = f" ({self._nonfinite_run} steps in a row)" if self._nonfinite_run > 1 else ""
            raise DataError(f"the loss became {loss} (gradient norm {norm}) at step {step}{many}; lower optim.lr "
                            "or check the data.")
        self._log(f"step {step}: loss {loss}, gradient norm {norm}: not applied (optim.skip_nonfinite; "
                  f"{self.nonfinite_steps} so far).")

    def _flush(self, pending: list[tuple[StepStats, torch.Tensor]], elapsed: float, *, write: bool) -> None:
        """Read the pending steps' numbers (this waits for the GPU), update counters, log."""
        first = self.step - len(pending) + 1
        norms = [float(n) for _, n in pending]
        for k, (stats, _) in enumerate(pending):
            loss = stats.loss
            if not (math.isfinite(loss) and math.isfinite(norms[k])):
                self._nonfinite(first + k, loss, norms[k])
                continue
            self._nonfinite_run = 0
            self.losses.append(loss)
            self.oracle_tokens += stats.oracle_tokens
            self.target_tokens += stats.target_tokens
            self._window["loss"] += loss
            self._window["n"] += 1
            self._window["tokens"] += stats.oracle_tokens
        elapsed = max(elapsed, 1e-9)
        self.train_time += elapsed
        self._window["time"] += elapsed
        w = self._window
        tok_s = w["tokens"] / max(w["time"], 1e-9)
        lr = self.scheduler.get_last_lr()[0]
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{self.losses[-1] if self.losses else float('nan'):.3f}", tok_s=f"{tok_s:.0f}", lr=f"{lr:.2e}", refresh=False)
        if write:
            self._metric({"step": self.step, "loss": w["loss"] / max(1, w["n"]), "lr": lr, "grad_norm": norms[-1],
                          "tokens_per_s": tok_s, "oracle_tokens": self.oracle_tokens,
                          "target_tokens": self.target_tokens, "examples": self.examples_seen,
                          "train_time_s": self.train_time, "nonfinite_steps": self.nonfinite_steps})
            self._window = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}


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
