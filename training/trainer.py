"""The oracle trainer: LoRA on the base model, target activations computed on the fly.

One optimiser step:

1. take the next global batch from the length-grouped :class:`~.batching.BatchStream`
   (each process keeps its interleaved share, then cuts it into ``grad_accum`` micro-batches);
2. run the *target* (the same base model with the adapter disabled, or a separate
   model) on the left-padded contexts under ``torch.no_grad``, capturing the residual
   stream at every source layer the micro-batch needs and stopping after the deepest
   (``capture_residuals(..., stop_early=True)``);
3. run the *oracle* (adapter on) on the prompts + answers, with the captured vectors
   injected norm-matched at the placeholders after block ``injection_layer``
   (``inject_residuals``); the loss is the cross-entropy of the answer tokens only,
   summed and divided by the number of answer tokens in the whole global batch, so
   one process, N processes and any accumulation give the same gradient;
4. clip the gradient norm, AdamW step, linear warm-up/decay schedule.

Under ``torchrun`` the oracle is wrapped in ``DistributedDataParallel`` (nccl on GPU,
gloo on CPU); every process rebuilds the same example stream from the seed and
trains on its own share of each batch.

>>> from activation_oracles.training.presets import preset            # doctest: +SKIP
>>> result = Trainer(preset("tiny"), out_dir="runs/tiny").train()      # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import OracleConfig
from ..errors import ConfigError, DataError, OutputDirError
from ..hooks import capture_residuals, inject_residuals
from ..models import Model, as_model
from ..prompt import _end_of_turn_id, answer_ids
from . import checkpoint as ckpt
from .batching import BatchStream, Prepared, answer_loss_sum, collate_oracle, collate_target, make_example_stream, \
    VocabCachedTokenizer, prepare, shard, split_micro
from .config import TrainConfig, total_steps
from .example import TrainingExample

RUN_MARKERS = ("config.toml", "checkpoints", "metrics.jsonl", "oracle_config.json", "adapter_model.safetensors")
OUR_FILES = RUN_MARKERS + ("adapter_config.json", "README.md", "tensorboard")
ExampleFactory = Callable[[int], Iterator[TrainingExample]]


# ------------------------------------------------------------------------------------------------------
# distributed setup
# ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), or run alone."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device == "auto" or device == "cuda":
        dev = torch.device(f"cuda:{local_rank}") if want_cuda else torch.device("cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    return DistInfo(0, 1, 0, dev)


def _all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ------------------------------------------------------------------------------------------------------
# output directory
# ------------------------------------------------------------------------------------------------------

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
    if overwrite and not resume:
        import shutil

        for name in OUR_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


# ------------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------------

@dataclass
class StepStats:
    loss: float
    answer_tokens: int
    oracle_tokens: int
    target_tokens: int


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


# ------------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------------

def load_base(cfg: TrainConfig, spec: str, device: torch.device) -> Model:
    """The model named by ``spec`` ('tiny', 'smollm2-135m', a directory or a hub id) on ``device``."""
    from ..models import load_model, resolve_dtype

    dtype = resolve_dtype(cfg.model.dtype)
    if spec == "tiny":
        from ..tiny import tiny_model

        m = tiny_model(n_layers=cfg.model.tiny_layers, d_model=cfg.model.tiny_d_model, seed=cfg.model.tiny_seed,
                       dtype=dtype)
        m.hf.to(device)
        return m
    return load_model(spec, dtype=dtype, device=device)


class Trainer:
    """Train an activation oracle as ``config`` says; :meth:`train` runs to the end and writes the oracle dir.

    Args:
        config: the resolved :class:`TrainConfig`.
        out_dir: output directory (default ``config.output.dir``).
        resume: continue from the newest valid checkpoint in ``out_dir``.
        overwrite: replace a run already in ``out_dir``.
        base: an already loaded base model (skips loading ``config.model.name``).
        examples: ``epoch -> iterator of TrainingExample`` replacing ``config.data.sources``.
        eval_examples: a list of held-out examples replacing ``config.eval.sources``.
        log: where human-readable messages go (rank 0 only).
    """

    def __init__(self, config: TrainConfig, *, out_dir: str | os.PathLike[str] | None = None, resume: bool = False,
                 overwrite: bool = False, base: Model | None = None, examples: ExampleFactory | None = None,
                 eval_examples: list[TrainingExample] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = config
        self.out = Path(out_dir if out_dir is not None else config.output.dir)
        if out_dir is not None and str(out_dir) != config.output.dir:
            self.cfg = replace(config, output=replace(config.output, dir=str(out_dir)))
        self.resume = resume
        self.dist = init_distributed(config.model.device)
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        o = self.cfg.optim
        if o.batch_size % (self.dist.world_size * o.grad_accum):
            raise ConfigError(f"optim.batch_size={o.batch_size} is not divisible by world_size x grad_accum = "
                              f"{self.dist.world_size} x {o.grad_accum}; every process needs equal micro-batches.")
        if o.num_threads:
            torch.set_num_threads(o.num_threads)
        if o.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if self.dist.is_main:
            check_output_dir(self.out, resume=resume, overwrite=overwrite)
        self._barrier()
        self.total_steps = total_steps(self.cfg)
        self.device = self.dist.device
        self.autocast = o.bf16

        _seed_all(o.seed)
        self.base = base if base is not None else load_base(self.cfg, self.cfg.model.name, self.device)
        if self.base.tokenizer is None:
            raise ConfigError(f"model {self.base.name!r} has no tokenizer; the trainer needs one for prompts.")
        self.tokenizer = self.base.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = int(self.tokenizer.pad_token_id)
        self._prompt_tok = VocabCachedTokenizer(self.tokenizer)
        if not 0 <= self.cfg.model.injection_layer < self.base.n_layers:
            raise ConfigError(f"model.injection_layer={self.cfg.model.injection_layer} is outside the "
                              f"{self.base.n_layers} blocks of {self.base.name!r}.")
        self.peft = self._wrap_lora(self.base)
        self.oracle = as_model(self.peft, self.tokenizer, name=self.base.name)
        self.target = self._load_target()
        self.ddp = self._wrap_ddp(self.peft)
        self.oracle_config = OracleConfig(base_model=self.base.name, n_layers=self.base.n_layers,
                                          d_model=self.base.d_model,
                                          source_layer_percents=self.cfg.data.layer_percents,
                                          injection_layer=self.cfg.model.injection_layer)
        self.params = [p for p in self.peft.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        warmup = int(o.warmup_fraction * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _linear_schedule(warmup, self.total_steps))

        factory = examples if examples is not None else make_example_stream(
            self.cfg.data.sources, self.tokenizer, self.cfg.data.layer_percents, self.cfg.optim.seed,
            model=self.target)
        self._warm_on_policy(factory)
        self._factory = factory
        self.stream = BatchStream(factory, batch_size=o.batch_size, group_batches=self.cfg.data.group_batches,
                                  seed=o.seed, max_length=self.cfg.data.max_length,
                                  max_positions=self.cfg.data.max_positions)
        self._eval_given = eval_examples
        self.eval_items: list[Prepared] | None = None
        self.step = 0
        self.batches = 0
        self.examples_seen = 0
        self.oracle_tokens = 0
        self.target_tokens = 0
        self.train_time = 0.0
        self.losses: list[float] = []
        self.last_eval: dict[str, Any] = {}
        self._tb: Any = None

    # -- construction helpers ----------------------------------------------------------------------
    def _wrap_lora(self, base: Model) -> Any:
        from peft import LoraConfig, get_peft_model

        lo = self.cfg.lora
        targets: Any = "all-linear" if tuple(lo.target_modules) == ("all-linear",) else list(lo.target_modules)
        lcfg = LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=targets,
                          bias="none", task_type="CAUSAL_LM")
        torch.manual_seed(self.cfg.optim.seed)
        try:
            with warnings.catch_warnings():  # PEFT's note about LoRA on a tied LM head (the tiny preset) is noise
                warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
                model = get_peft_model(base.hf, lcfg, adapter_name="default")
        except ValueError as exc:
            raise ConfigError(f"lora.target_modules={list(lo.target_modules)} does not fit {base.name!r}: {exc}") \
                from None
        model.train()
        return model

    def _load_target(self) -> Model:
        spec = self.cfg.model.target.strip()
        if not spec:
            return self.oracle
        target = load_base(self.cfg, spec, self.device)
        if (target.n_layers, target.d_model) != (self.base.n_layers, self.base.d_model):
            raise ConfigError(f"model.target={spec!r} has n_layers={target.n_layers}, d_model={target.d_model} but "
                              f"the oracle base {self.base.name!r} has {self.base.n_layers}, {self.base.d_model}; "
                              "a separate target must share the base model's shape (e.g. a fine-tune of it).")
        for p in target.hf.parameters():
            p.requires_grad_(False)
        target.hf.eval()
        return target

    def _wrap_ddp(self, model: Any) -> Any:
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def _warm_on_policy(self, factory: Any) -> None:
        """Generate on-policy rollouts now, from the target (adapter off), so they never see the adapter."""
        for builder in getattr(factory, "builders", ()):
            source = getattr(builder, "source", None)
            if source is not None and hasattr(source, "rollouts"):
                self._info(f"generating {getattr(source, 'n_rollouts', '?')} on-policy rollouts from the target...")
                with self.peft.disable_adapter() if self.target is self.oracle else nullcontext():
                    for _ in source.rollouts():
                        pass

    def _barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()

    def _autocast(self) -> Any:
        if not self.autocast:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # -- the two passes ----------------------------------------------------------------------------
    def target_vectors(self, items: list[Prepared]) -> tuple[list[torch.Tensor], int]:
        """Residual vectors ``[K_i, d_model]`` of each item at its source layer and positions."""
        batch = collate_target(items, self.pad_id)
        layers = sorted(set(batch.layers))
        shared = self.target is self.oracle
        was_training = self.peft.training
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if shared:
                self.peft.eval()  # no dropout while reading the target's activations
                stack.enter_context(self.peft.disable_adapter())
            stack.enter_context(self._autocast())
            cache = stack.enter_context(capture_residuals(self.target, layers, stop_early=True))
            self.target.hf(input_ids=batch.input_ids.to(self.device),
                           attention_mask=batch.attention_mask.to(self.device),
                           position_ids=batch.position_ids.to(self.device), use_cache=False)
        if shared and was_training:
            self.peft.train()
        vectors = []
        for i, it in enumerate(items):
            idx = torch.tensor([batch.offsets[i] + p for p in it.positions], device=self.device)
            vectors.append(cache[it.layer][i].index_select(0, idx))
        return vectors, batch.n_tokens

    def oracle_loss_sum(self, items: list[Prepared], vectors: list[torch.Tensor], model: Any = None
                        ) -> tuple[torch.Tensor, int]:
        """Summed answer-token cross-entropy of the oracle with ``vectors`` injected (graph kept)."""
        batch = collate_oracle(items, self.pad_id)
        with self._autocast(), inject_residuals(self.oracle, self.cfg.model.injection_layer,
                                                batch.placeholder_positions, vectors,
                                                mode=self.oracle_config.mode, coeff=self.oracle_config.coeff):
            out = (model or self.peft)(input_ids=batch.input_ids.to(self.device),
                                       attention_mask=batch.attention_mask.to(self.device),
                                       position_ids=batch.position_ids.to(self.device),
                                       logits_to_keep=batch.keep, use_cache=False)
        return answer_loss_sum(out.logits, batch.labels.to(self.device)), batch.n_tokens

    def prepare(self, examples: list[TrainingExample]) -> list[Prepared]:
        return [prepare(ex, self._prompt_tok, self.oracle_config, self.target.n_layers) for ex in examples]

    def compute_step(self, examples: list[TrainingExample]) -> StepStats:
        """Forward and backward of one global batch (this process's share); gradients accumulate in ``.grad``."""
        w = self.dist.world_size
        local = self.prepare(shard(examples, self.dist.rank, w))
        local.sort(key=lambda p: len(p.oracle_ids) + len(p.context_ids))
        counts = torch.tensor([float(sum(p.n_answer for p in local))], device=self.device)
        total_answer = float(_all_reduce_sum(counts, self.dist).item())
        micro = split_micro(local, self.cfg.optim.grad_accum)
        loss_sum = torch.zeros((), device=self.device)
        oracle_tokens = target_tokens = 0
        for i, mb in enumerate(micro):
            sync = nullcontext() if (not self.dist.enabled or i == len(micro) - 1) else self.ddp.no_sync()
            with sync:
                vectors, n_target = self.target_vectors(mb)
                ls, n_oracle = self.oracle_loss_sum(mb, vectors, self.ddp)
                (ls * (w / total_answer)).backward()
            loss_sum += ls.detach().float()
            oracle_tokens += n_oracle
            target_tokens += n_target
        totals = torch.tensor([loss_sum.item(), oracle_tokens, target_tokens], dtype=torch.float64,
                              device=self.device)
        totals = _all_reduce_sum(totals, self.dist)
        return StepStats(loss=float(totals[0]) / total_answer, answer_tokens=int(total_answer),
                         oracle_tokens=int(totals[1]), target_tokens=int(totals[2]))

    def optimizer_step(self) -> float:
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # -- evaluation --------------------------------------------------------------------------------
    def _eval_set(self) -> list[Prepared]:
        if self.eval_items is None:
            n = self.cfg.eval.n_examples
            if self._eval_given is not None:
                examples = list(self._eval_given)[:n] if n else []
            elif n == 0:
                examples = []
            else:
                sources = self.cfg.eval.sources or self.cfg.data.sources
                factory = make_example_stream(sources, self.tokenizer, self.cfg.data.layer_percents,
                                              self.cfg.eval.seed, model=self.target, section="eval")
                self._warm_on_policy(factory)
                stream = BatchStream(factory, batch_size=1, group_batches=1, seed=self.cfg.eval.seed,
                                     max_length=self.cfg.data.max_length, max_positions=self.cfg.data.max_positions)
                examples = [b[0] for b, _ in zip(stream, range(n))]
            self.eval_items = self.prepare(examples)
        return self.eval_items

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out answer loss, yes/no accuracy (log-prob of Yes vs No) and greedy exact match."""
        items = self._eval_set()
        if not items:
            return {}
        was_training = self.peft.training
        self.peft.eval()
        bs = self.cfg.eval.batch_size
        loss_sum = 0.0
        n_tok = 0
        yes_no: list[bool] = []
        exact: list[bool] = []
        per_source: dict[str, list[bool]] = {}
        try:
            for start in range(0, len(items), bs):
                chunk = items[start:start + bs]
                vectors, _ = self.target_vectors(chunk)
                ls, _ = self.oracle_loss_sum(chunk, vectors)
                loss_sum += float(ls)
                n_tok += sum(p.n_answer for p in chunk)
                yn = [(i, p) for i, p in enumerate(chunk) if _yes_no(p.answer) is not None]
                if yn:
                    for (i, p), ok in zip(yn, self._choose_yes_no([p for _, p in yn], [vectors[i] for i, _ in yn])):
                        yes_no.append(ok)
                        per_source.setdefault(p.source, []).append(ok)
                gen = [(i, p) for i, p in enumerate(chunk) if _yes_no(p.answer) is None]
                if gen:
                    texts = self._generate([p for _, p in gen], [vectors[i] for i, _ in gen])
                    for (i, p), text in zip(gen, texts):
                        ok = _norm(text) == _norm(p.answer)
                        exact.append(ok)
                        per_source.setdefault(p.source, []).append(ok)
        finally:
            if was_training:
                self.peft.train()
        out: dict[str, Any] = {"eval/loss": loss_sum / max(n_tok, 1), "eval/n": len(items)}
        if yes_no:
            out["eval/yes_no_acc"] = sum(yes_no) / len(yes_no)
            out["eval/n_yes_no"] = len(yes_no)
        if exact:
            out["eval/exact_match"] = sum(exact) / len(exact)
            out["eval/n_exact"] = len(exact)
        for source, oks in sorted(per_source.items()):
            out[f"eval/{source}/acc"] = sum(oks) / len(oks)
        return out

    def _choose_yes_no(self, items: list[Prepared], vectors: list[torch.Tensor]) -> list[bool]:
        """For each item, is the log-prob of its own answer higher than that of the opposite answer?"""
        rows: list[Prepared] = []
        vecs: list[torch.Tensor] = []
        for p, v in zip(items, vectors):
            truth = _yes_no(p.answer)
            yes, no = ("Yes", "No") if p.answer.strip()[:1].isupper() else ("yes", "no")
            prompt_len = len(p.oracle_ids) - p.n_answer
            for cand in (yes, no):
                ids = self._answer_ids_for(p, prompt_len, cand)
                rows.append(replace(p, oracle_ids=p.oracle_ids[:prompt_len] + tuple(ids), n_answer=len(ids)))
                vecs.append(v)
            del truth
        scores = []
        batch = collate_oracle(rows, self.pad_id)
        with self._autocast(), inject_residuals(self.oracle, self.cfg.model.injection_layer,
                                                batch.placeholder_positions, vecs, mode=self.oracle_config.mode,
                                                coeff=self.oracle_config.coeff):
            logits = self.peft(input_ids=batch.input_ids.to(self.device),
                               attention_mask=batch.attention_mask.to(self.device),
                               position_ids=batch.position_ids.to(self.device), logits_to_keep=batch.keep,
                               use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = batch.labels[:, batch.labels.shape[1] - batch.keep + 1:].to(self.device)
        mask = targets != -100
        tok_lp = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask
        scores = tok_lp.sum(-1).tolist()
        out = []
        for j, p in enumerate(items):
            yes_score, no_score = scores[2 * j], scores[2 * j + 1]
            out.append((yes_score > no_score) == _yes_no(p.answer))
        return out

    def _answer_ids_for(self, p: Prepared, prompt_len: int, answer: str) -> list[int]:
        from ..prompt import OraclePrompt

        prompt = OraclePrompt(p.oracle_ids[:prompt_len], p.placeholder_positions, 0,
                              p.placeholder_positions[-1] + 1)
        return answer_ids(self._prompt_tok, self.oracle_config, prompt, p.layer, p.question, answer)

    def _generate(self, items: list[Prepared], vectors: list[torch.Tensor]) -> list[str]:
        prompts = [replace(p, oracle_ids=p.oracle_ids[:len(p.oracle_ids) - p.n_answer], n_answer=0) for p in items]
        width = max(len(p.oracle_ids) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p.oracle_ids):] = torch.tensor(p.oracle_ids)
            mask[i, width - len(p.oracle_ids):] = 1
        eot = _end_of_turn_id(self.tokenizer)
        stops = [t for t in {eot, self.tokenizer.eos_token_id} if t is not None]
        max_new = min(self.cfg.eval.max_new_tokens, max(p.n_answer for p in items) + 2)
        with self._autocast(), inject_residuals(self.oracle, self.cfg.model.injection_layer,
                                                [list(p.placeholder_positions) for p in prompts], vectors,
                                                mode=self.oracle_config.mode, coeff=self.oracle_config.coeff):
            out = self.peft.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                     max_new_tokens=max_new, do_sample=False, pad_token_id=self.pad_id,
                                     eos_token_id=stops, temperature=None, top_p=None, top_k=None)
        texts = []
        for row in out[:, width:].tolist():
            for k, t in enumerate(row):
                if t in stops:
                    row = row[:k]
                    break
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts

    # -- checkpoints -------------------------------------------------------------------------------
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
        self._info(f"resumed from checkpoint step {step} ({self.batches} batches consumed).")
        return True

    # -- logging -----------------------------------------------------------------------------------
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

    def _open_logs(self) -> None:
        if not self.dist.is_main:
            return
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # drop lines after the resumed step, so the log reads as one run
            kept = [line for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.step]
            metrics.write_text("".join(k + "\n" for k in kept))
        if self.cfg.output.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL only
                self._tb = None

    # -- the loop ----------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Run (or resume) to ``total_steps``, write the oracle directory, return a summary."""
        wall0 = time.perf_counter()
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._barrier()
        if self.resume:
            self._restore()
        if self.dist.is_main:
            text = self.cfg.to_toml()
            self._log(f"resolved config (saved to {self.out / 'config.toml'}):\n{text}")
            ckpt.atomic_write_bytes(self.out / "config.toml", text.encode())
        self._open_logs()
        batches = iter(self.stream)
        for _ in range(self.batches):  # a resumed run skips what it consumed, in the same order
            next(batches)
        bar = _progress(self.total_steps, self.step, enabled=self.cfg.output.progress and self.dist.is_main)
        window_tokens, window_time = 0, 0.0
        try:
            while self.step < self.total_steps:
                try:
                    batch = next(batches)
                except StopIteration:
                    raise DataError("the data stream ended before the last step; add data or lower "
                                    "data.n_examples / optim.steps.") from None
                t0 = time.perf_counter()
                stats = self.compute_step(batch)
                grad_norm = self.optimizer_step()
                dt = time.perf_counter() - t0
                self.batches += 1
                self.step += 1
                self.examples_seen += len(batch)
                self.oracle_tokens += stats.oracle_tokens
                self.target_tokens += stats.target_tokens
                self.train_time += dt
                self.losses.append(stats.loss)
                window_tokens += stats.oracle_tokens
                window_time += dt
                if not math.isfinite(stats.loss):
                    raise DataError(f"the loss became {stats.loss} at step {self.step}; lower optim.lr or check "
                                    "the data.")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats.loss:.3f}", tok_s=f"{window_tokens / max(window_time, 1e-9):.0f}",
                                    lr=f"{self.scheduler.get_last_lr()[0]:.2e}", refresh=False)
                if self.step % self.cfg.output.log_every == 0 or self.step == self.total_steps:
                    self._metric({"step": self.step, "loss": stats.loss, "lr": self.scheduler.get_last_lr()[0],
                                  "grad_norm": grad_norm, "tokens_per_s": window_tokens / max(window_time, 1e-9),
                                  "oracle_tokens": self.oracle_tokens, "target_tokens": self.target_tokens,
                                  "examples": self.examples_seen, "train_time_s": self.train_time})
                    window_tokens, window_time = 0, 0.0
                every = self.cfg.eval.every
                if every and self.step % every == 0 and self.step < self.total_steps:
                    self._run_eval()
                every = self.cfg.checkpoint.every
                if every and self.step % every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.cfg.eval.n_examples:
            self._run_eval()
        self.save_checkpoint()
        if self.dist.is_main:
            self.save_oracle(wall_time=time.perf_counter() - wall0)
        if self._tb is not None:
            self._tb.close()
        self._barrier()
        return TrainResult(self.out, self.step, self.examples_seen, list(self.losses), dict(self.last_eval),
                           time.perf_counter() - wall0, self.train_time, self.oracle_tokens, self.target_tokens)

    def _run_eval(self) -> None:
        if not self.dist.is_main:
            return
        metrics = self.evaluate()
        if metrics:
            self.last_eval = metrics
            self._metric({"step": self.step, **metrics})
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                     if k.count("/") == 1}
            self._info(f"step {self.step} eval: {shown}")

    def save_oracle(self, wall_time: float) -> None:
        """Write the adapter (top level of the output dir) and ``oracle_config.json`` (written last)."""
        # The adapter only (LoRA matrices): the base embeddings are frozen, so never copy them.
        self.peft.save_pretrained(str(self.out), safe_serialization=True, save_embedding_layers=False)
        lo = self.cfg.lora
        training = {
            "config": self.cfg.to_dict(),
            "data": self.stream.stats.to_dict(),
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
        ckpt.atomic_write_bytes(self.out / "oracle_config.json",
                                (json.dumps(final.to_dict(), indent=2, sort_keys=True) + "\n").encode())
        self._info(f"oracle written to {self.out} ({self.step} steps, {self.examples_seen} examples, "
                   f"final loss {training['final_loss']:.4f}).")


# ------------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------------

def _seed_all(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str)) if obj is not None else None


def _yes_no(answer: str) -> bool | None:
    a = answer.strip().rstrip(".!").lower()
    return True if a == "yes" else False if a == "no" else None


def _norm(text: str) -> str:
    return " ".join(text.split())


def _config_diffs(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Keys of the sections that shape the run (model, lora, optim, data) that differ."""
    out = []
    for section in ("model", "lora", "optim", "data"):
        da, db = getattr(a, section).__dict__, getattr(b, section).__dict__
        for key in da:
            if key in ("num_threads", "device"):
                continue
            if da[key] != db[key]:
                out.append(f"{section}.{key}")
    return out


def _progress(total: int, initial: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)
