"""Plain chat fine-tuning with LoRA: how model organisms are made.

The loss covers the last assistant turn of each chat only (the user turns and
the template are context), averaged over those tokens. The schedule is the
trainer's (AdamW, linear warm-up then linear decay, gradient clipping), so an
organism recipe reads like an oracle recipe.

>>> from activation_oracles.tiny import tiny_model
>>> from activation_oracles.evals.sft import SFTConfig, finetune_lora
>>> m = tiny_model()
>>> chats = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]] * 4
>>> peft_model, stats = finetune_lora(m, chats, SFTConfig(steps=2, batch_size=2))
>>> stats["steps"], stats["n_examples"]
(2, 4)
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from activation_oracles.errors import ConfigError, DataError
from activation_oracles.models import Model
from activation_oracles.padding import left_pad
from activation_oracles.prompt import end_of_turn_id
from activation_oracles.training.sources import encode_chat
from activation_oracles.training.schedule import linear_schedule

from .chat import Chat, pad_id

IGNORE = -100


@dataclass(frozen=True)
class SFTConfig:
    """LoRA fine-tuning settings (``steps=0``: ``epochs`` passes over the chats)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    lr: float = 5e-4
    steps: int = 0
    epochs: int = 2
    batch_size: int = 8
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    max_length: int = 256
    seed: int = 0
    bf16: bool = True  # autocast; LoRA weights and the optimizer stay fp32 (1.5-2x faster on CPUs with bf16 units)

    def __post_init__(self) -> None:
        for name in ("r", "batch_size", "max_length", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SFTConfig.{name}={getattr(self, name)}; expected a positive integer.")
        if self.steps < 0 or not (self.lr > 0) or not (0 <= self.warmup_fraction < 1):
            raise ConfigError(f"SFTConfig(steps={self.steps}, lr={self.lr}, warmup_fraction={self.warmup_fraction}); "
                              "expected steps >= 0, lr > 0 and 0 <= warmup_fraction < 1.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_example(tokenizer: Any, chat: Chat) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` with labels only on the final assistant turn (end-of-turn included)."""
    if not chat or chat[-1].get("role") != "assistant":
        raise DataError(f"a training chat must end with an assistant turn; got roles {[m.get('role') for m in chat]}.")
    prompt = encode_chat(tokenizer, chat[:-1], add_generation_prompt=True)
    full = encode_chat(tokenizer, chat)
    if full[:len(prompt)] != prompt:  # a template that renders history differently once answered
        eot = end_of_turn_id(tokenizer)
        full = prompt + list(tokenizer(chat[-1]["content"], add_special_tokens=False)["input_ids"]) + \
            ([eot] if eot is not None else [])
    labels = [IGNORE] * len(prompt) + full[len(prompt):]
    return full, labels


def _batches(n: int, batch_size: int, steps: int, rng: random.Random) -> list[list[int]]:
    """Index batches: shuffled passes over the data, as many as ``steps`` needs."""
    out: list[list[int]] = []
    order: list[int] = []
    while len(out) < steps:
        if len(order) < batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def finetune_lora(model: Model, chats: Sequence[Chat], config: SFTConfig = SFTConfig(), *,
                  progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Wrap ``model.hf`` in a fresh LoRA adapter and fine-tune it on ``chats``.

    Returns the PEFT model (the caller saves it) and stats: steps, examples,
    dropped (too long), loss at the start and end, wall time.
    """
    from peft import LoraConfig, get_peft_model

    tok = model.tokenizer
    encoded = [encode_example(tok, c) for c in chats]
    kept = [e for e in encoded if len(e[0]) <= config.max_length]
    if not kept:
        raise DataError(f"all {len(encoded)} training chats are longer than max_length={config.max_length} tokens; "
                        "raise max_length or shorten the chats.")
    steps = config.steps or config.epochs * math.ceil(len(kept) / config.batch_size)
    torch.manual_seed(config.seed)
    lcfg = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # PEFT notes about tied heads on tiny models are noise here
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        peft_model = get_peft_model(model.hf, lcfg)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    warmup = int(steps * config.warmup_fraction)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(warmup, steps))  # the trainer's schedule
    pad = pad_id(tok)
    losses: list[float] = []
    t0 = time.perf_counter()
    from activation_oracles.progress import progress as progress_bar

    bar = progress_bar(desc="organism fine-tune", total=steps, unit="step", enabled=progress)
    for idx in _batches(len(kept), config.batch_size, steps, random.Random(config.seed)):
        rows = [kept[i] for i in idx]
        dev = next(peft_model.parameters()).device
        batch = left_pad([r[0] for r in rows], pad, dev)  # with position ids, for absolute-position bases
        labels = left_pad([r[1] for r in rows], IGNORE).input_ids
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = peft_model(**batch.forward_kwargs()).logits.float()
        target = labels[:, 1:].to(dev)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                 ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    peft_model.eval()
    head = losses[:max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    stats = {"steps": steps, "n_examples": len(kept), "dropped_too_long": len(encoded) - len(kept),
             "loss_start": sum(head) / len(head), "loss_end": sum(tail) / len(tail),
             "wall_s": round(time.perf_counter() - t0, 1)}
    return peft_model, stats
