"""Saving and restoring the full training state (adapter, optimiser, schedule, RNG, counters) for ``--resume``.

The file format and atomic writes live in :mod:`.checkpoint`; :class:`Checkpointer`, a part of
:class:`~.trainer.Trainer`, decides what goes into a checkpoint and puts it back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import DistInfo, barrier
from .outputs import RunState


class Checkpointer:
    """Periodic checkpoints of a run and resuming from the newest valid one (a part of the trainer).

    Args:
        out: the run's output directory (checkpoints go to ``out/checkpoints``).
        cfg: the run's config (saved with each checkpoint; a resume must match it).
        dist: the process group's facts (every process's RNG state is saved; rank 0 writes).
        peft: the model whose trainable (adapter) parameters are saved.
        optimizer, scheduler: saved and restored with the adapter.
        state: the run's counters.
        info: where messages go.
    """

    def __init__(self, out: Path, cfg: TrainConfig, dist: DistInfo, peft: Any, optimizer: Any, scheduler: Any,
                 state: RunState, info: Callable[[str], None]) -> None:
        self.out, self.cfg, self.dist, self.peft = out, cfg, dist, peft
        self.optimizer, self.scheduler, self.state, self.info = optimizer, scheduler, state, info

    def save(self) -> None:
        rng = ckpt.rng_state()
        if self.dist.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if self.dist.is_main:
            adapter = {n: p.detach().to("cpu", copy=True) for n, p in self.peft.named_parameters() if p.requires_grad}
            state = {**self.state.saved(), "world_size": self.dist.world_size, "config": self.cfg.to_toml(),
                     "adapter": adapter, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng": rngs}
            ckpt.save_checkpoint(self.out, self.state.step, state)
            ckpt.prune(self.out, self.cfg.checkpoint.keep)
        barrier(self.dist)

    def restore(self) -> bool:
        """Load the newest valid checkpoint into the adapter, optimiser, schedule, RNG and counters."""
        found = ckpt.load_latest(self.out, report=self.info)
        if found is None:
            self.info(f"--resume: no checkpoint in {self.out}; starting from the beginning.")
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
            self.info(f"checkpoint was written by {len(rngs)} processes, resuming with {self.dist.world_size}; "
                      "dropout randomness will differ from an uninterrupted run.")
        ckpt.set_rng_state(rngs[self.dist.rank % len(rngs)])
        self.state.restore(state)
        self.info(f"resumed from checkpoint step {step} ({self.state.batches} batches consumed).")
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
