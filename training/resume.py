"""Saving and restoring the full training state (adapter, optimiser, schedule, RNG, counters) for ``--resume``.

The file format and atomic writes live in :mod:`.checkpoint`; :class:`Checkpointing` is a mixin of
:class:`~.trainer.Trainer` that decides what goes into a checkpoint and puts it back.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from . import checkpoint as ckpt
from .config import TrainConfig


class Checkpointing:
    """Periodic checkpoints and resuming from the newest valid one (mixed into the Trainer)."""

    cfg: TrainConfig

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in self.peft.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        rng = ckpt.rng_state()
        if self.dist.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if self.dist.is_main:
            state = {"step": self.step, "batches": self.batches, "examples": self.examples_seen,
                     "oracle_tokens": self.oracle_tokens, "target_tokens": self.target_tokens,
                     "train_time": self.train_time, "losses": list(self.losses), "world_size": self.dist.world_size,
                     "window": dict(self._window), "used": dict(self._used),
                     "config": self.cfg.to_toml(), "adapter": self._adapter_state(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "rng": rngs}
            ckpt.save_checkpoint(self.out, self.step, state)
            ckpt.prune(self.out, self.cfg.checkpoint.keep)
        self._barrier()

    def _restore(self) -> bool:
        found = ckpt.load_latest(self.out, report=self._info)
        if found is None:
            self._info(f"--resume: no checkpoint in {self.out}; starting from the beginning.")
            return False
        step, state = found
        saved = TrainConfig.from_toml(state["config"])
        diffs = _config_diffs(saved, self.cfg)
        if diffs:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {', '.join(diffs)}; resume "
                              "with the same config (see config.toml in the output directory) or pass --overwrite.")
        params = dict(self.peft.named_parameters())
        with torch.no_grad():
            for name, value in state["adapter"].items():
                if name not in params:
                    raise ConfigError(f"checkpoint tensor {name!r} has no parameter in this model; the checkpoint "
                                      "was made with another LoRA configuration.")
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        if len(rngs) != self.dist.world_size:
            self._info(f"checkpoint was written by {len(rngs)} processes, resuming with {self.dist.world_size}; "
                       "dropout randomness will differ from an uninterrupted run.")
        ckpt.set_rng_state(rngs[self.dist.rank % len(rngs)])
        self.step, self.batches = int(state["step"]), int(state["batches"])
        self.examples_seen = int(state["examples"])
        self.oracle_tokens, self.target_tokens = int(state["oracle_tokens"]), int(state["target_tokens"])
        self.train_time = float(state["train_time"])
        self.losses = [float(x) for x in state["losses"]]
        self._resumed_window = {k: float(v) for k, v in state.get("window", {}).items()}
        self._used = {str(k): int(v) for k, v in state.get("used", {}).items()}
        self._info(f"resumed from checkpoint step {step} ({self.batches} batches consumed).")
        return True


def _config_diffs(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Keys of the sections that shape the run (model, lora, optim, data) that differ."""
    out = []
    for section in ("model", "lora", "optim", "data"):
        da, db = getattr(a, section).__dict__, getattr(b, section).__dict__
        for key in da:
            if key in ("num_threads", "device", "prefetch"):
                continue
            if da[key] != db[key]:
                out.append(f"{section}.{key}")
    return out
