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

The trainer is a short loop over parts built in its constructor, each in its own module: the data
(:class:`~.batching.BatchStream` over the :mod:`.source_registry`'s mixture, cut into micro-batches by
:mod:`.steps`), the two passes (:class:`~.passes.TargetReader`, :class:`~.passes.OracleLoss`), the
adapter (:mod:`.lora`), AdamW with the :mod:`.schedule`, the :class:`~.resume.Checkpointer`, the
:class:`~.outputs.RunLog` over the run's counters (:class:`~.outputs.RunState`) and the
:class:`~.evaluate.Evaluator`. The constructor loads the models and wires these parts; the data's
expensive preparation (on-policy rollouts, activation statistics) waits for :meth:`Trainer.start`.
Why ~500 lines: the constructor and the loop hold the run's set-up in one place (DDP, precision,
the order in which parts are built), which splitting further would only scatter.

>>> import tempfile
>>> from activation_oracles.training.config import apply_overrides
>>> from activation_oracles.training.presets import preset
>>> cfg = apply_overrides(preset("tiny"), ["data.n_examples=16", "eval.n_examples=0", "checkpoint.every=0"])
>>> result = Trainer(cfg, out_dir=tempfile.mkdtemp(), log=lambda msg: None).train()   # 2 steps of 8
>>> result.steps, result.examples, len(result.losses)
(2, 16, 2)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import OracleConfig
from ..errors import ConfigError, DataError
from ..models import Model, as_model
from . import checkpoint as ckpt
from .batching import BatchStream, Prepared, prepare
from .config import TrainConfig, total_steps
from .source_registry import make_example_stream
from .steps import MicroBatch, StepInput, StepSource, make_step_input
from .distributed import DistInfo, _all_reduce_sum, barrier, init_distributed, wrap_ddp
from .data_prep import activation_statistics, check_data_fits, generate_rollouts
from .evaluate import Evaluator, held_out_examples
from .example import TrainingExample
from .lora import AdaptersOff, has_base_dropout, load_base, load_target, wrap_lora
from .passes import OracleLoss, TargetReader
from .schedule import linear_schedule, seed_all
from .outputs import (OUR_FILES, RUN_MARKERS, RunLog, RunState, StepStats, TrainResult, _progress, check_output_dir,
                      write_oracle)
from .resume import Checkpointer

# Re-exported: these names lived here before the trainer was split into modules.
__all__ = ["Trainer", "TrainResult", "StepStats", "DistInfo", "init_distributed", "check_output_dir", "load_base",
           "RUN_MARKERS", "OUR_FILES", "ExampleFactory"]

ExampleFactory = Callable[[int], Iterator[TrainingExample]]


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
        self.state = RunState()
        self.run_log = RunLog(self.out, self.cfg, self.state, is_main=self.dist.is_main, log=self._log)
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

        seed_all(o.seed)
        self.base = base if base is not None else load_base(self.cfg, self.cfg.model.name, self.device)
        if self.base.tokenizer is None:
            raise ConfigError(f"model {self.base.name!r} has no tokenizer; the trainer needs one for prompts.")
        self.tokenizer = self.base.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = int(self.tokenizer.pad_token_id)
        self._prompt_tok = self.tokenizer  # prompt.answer_ids caches its vocabulary lookup
        self._data_lock = threading.Lock()
        if not 0 <= self.cfg.model.injection_layer < self.base.n_layers:
            raise ConfigError(f"model.injection_layer={self.cfg.model.injection_layer} is outside the "
                              f"{self.base.n_layers} blocks of {self.base.name!r}.")
        self.peft = wrap_lora(self.base, self.cfg)
        self.oracle = as_model(self.peft, self.tokenizer, name=self.base.name)
        self._adapters_off = AdaptersOff(self.peft)
        self.target = load_target(self.cfg, self.base, self.device) or self.oracle
        self.ddp = self._wrap_ddp(self.peft)
        self.oracle_config = OracleConfig(base_model=self.base.name, n_layers=self.base.n_layers,
                                          d_model=self.base.d_model,
                                          source_layer_percents=self.cfg.data.layer_percents,
                                          injection_layer=self.cfg.model.injection_layer,
                                          coeff=self.cfg.model.injection_coeff,
                                          system_prompt=(None if self.cfg.model.template_system_prompt
                                                         else self.cfg.model.oracle_system_prompt))
        # The step's two passes, as parts (training/passes.py).
        shared = self.target is self.oracle
        self.reader = TargetReader(self.target, device=self.device, autocast=self._autocast, transform=self._centre,
                                   adapters_off=self._adapters_off if shared else None,
                                   dropout_module=self.peft if shared and has_base_dropout(self.base, self.peft) else None)
        self.loss = OracleLoss(self.oracle, self.peft, injection_layer=self.cfg.model.injection_layer,
                               config=lambda: self.oracle_config, device=self.device, autocast=self._autocast)
        self.params = [p for p in self.peft.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        warmup = int(o.warmup_fraction * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup, self.total_steps))

        self.checkpointer = Checkpointer(self.out, self.cfg, self.dist, self.peft, self.optimizer, self.scheduler,
                                         self.state, self._info)
        factory = examples if examples is not None else make_example_stream(
            self.cfg.data.sources, self.tokenizer, self.cfg.data.layer_percents, self.cfg.optim.seed,
            model=self.target)
        self._factory = factory
        self._data_ready = False  # on-policy rollouts and activation statistics: prepare_data(), at start()
        if self.cfg.model.init_adapter:
            self._warm_start(self.cfg.model.init_adapter)
        self.stream = BatchStream(factory, batch_size=o.batch_size, group_batches=self.cfg.data.group_batches,
                                  seed=o.seed, max_length=self.cfg.data.max_length,
                                  max_positions=self.cfg.data.max_positions)
        self.evaluator = Evaluator(
            self.reader, self.loss, tokenizer=self.tokenizer, pad_id=self.pad_id, batch_size=self.cfg.eval.batch_size,
            max_new_tokens=self.cfg.eval.max_new_tokens, progress=self._progress_on,
            items=lambda: self.prepare(held_out_examples(self.cfg, self._factory, self.tokenizer, self.target,
                                                         eval_examples, self._warm_on_policy)))
        self.last_eval: dict[str, Any] = {}
        self._inputs: StepSource | None = None
        self._bar: Any = None

    # The run's counters live in self.state (what a checkpoint restores); these read them.
    @property
    def step(self) -> int:
        return self.state.step

    @property
    def examples_seen(self) -> int:
        return self.state.examples

    @property
    def losses(self) -> list[float]:
        return self.state.losses

    @property
    def nonfinite_steps(self) -> int:
        return self.state.nonfinite_steps

    @property
    def _progress_on(self) -> bool:
        return self.run_log.progress_on

    def _info(self, msg: str) -> None:
        self.run_log.info(msg)

    def _nonfinite(self, step: int, loss: float, norm: float) -> None:
        self.run_log.nonfinite(step, loss, norm)

    # -- construction helpers ----------------------------------------------------------------------
    def _wrap_ddp(self, model: Any) -> Any:
        return wrap_ddp(model, self.dist)

    def prepare_data(self) -> None:
        """What the data needs before the first step, once: on-policy rollouts, then each source layer's
        mean (and scale) activation when ``model.center_activations`` asks for them (not after a warm start,
        which reuses its run's). :meth:`start` calls it; so does :meth:`compute_step` if it has not run."""
        if self._data_ready:
            return
        self._warm_on_policy(self._factory)
        if self.cfg.model.center_activations and not self.cfg.model.init_adapter:
            off = self._adapters_off if self.target is self.oracle else None
            means, scales = activation_statistics(
                self.target, self._factory, standardize=self.cfg.model.standardize_activations, adapters_off=off,
                autocast=self._autocast, progress=self._progress_on, info=self._info)
            self.oracle_config = replace(self.oracle_config, activation_means=means, activation_scales=scales)
        self._data_ready = True

    def _warm_on_policy(self, factory: Any) -> None:
        """Generate ``factory``'s on-policy rollouts now, from the target (adapter off)."""
        generate_rollouts(factory, adapters_off=self._adapters_off if self.target is self.oracle else None,
                          progress=self._progress_on, info=self._info)

    def _warm_start(self, folder: str) -> None:
        """Start from another run's adapter weights and reuse its activation statistics (curriculum runs)."""
        from .warm_start import read_warm_start

        layers = {self.base.layer_at(p) for p in self.cfg.data.layer_percents}
        weights, stats = read_warm_start(folder, self.peft, self.oracle_config, self.cfg, layers)
        self._info(f"warm start from {folder}: {len(weights)} adapter tensors" +
                   (f", statistics of layers {sorted(stats.activation_means or {})}" if stats.activation_means else ""))
        self.oracle_config = replace(self.oracle_config, activation_means=stats.activation_means,
                                     activation_scales=stats.activation_scales)

    def _barrier(self) -> None:
        barrier(self.dist)

    def _autocast(self) -> Any:
        if not self.autocast:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # -- the two passes ----------------------------------------------------------------------------
    def prepare(self, examples: list[TrainingExample]) -> list[Prepared]:
        return [self._prepare_one(ex) for ex in examples]

    def _prepare_one(self, ex: TrainingExample) -> Prepared:
        return prepare(ex, self._prompt_tok, self.oracle_config, self.target.n_layers)

    def make_step_input(self, examples: list[TrainingExample]) -> StepInput:
        """This process's micro-batches of a global batch (runs on the prefetch thread when enabled)."""
        with self._data_lock:
            return make_step_input(examples, self._prepare_one, self.pad_id, rank=self.dist.rank,
                                   world_size=self.dist.world_size, grad_accum=self.cfg.optim.grad_accum)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def target_vectors(self, mb: MicroBatch) -> list[torch.Tensor]:
        """Residual vectors ``[K_i, d_model]`` of each item at its source layer and positions (:class:`TargetReader`)."""
        return self.reader(mb)

    def _centre(self, vectors: torch.Tensor, layer: int) -> torch.Tensor:
        """The oracle config's transform (``OracleConfig.centre``), the one ``ask``/``choose`` apply."""
        means = self.oracle_config.activation_means
        if means and layer not in means:
            raise DataError(f"an example reads layer {layer}, which has no measured mean (layers "
                            f"{sorted(means)}); the means come from data.layer_percents.")
        return self.oracle_config.centre(vectors, layer)

    def oracle_loss_sum(self, mb: MicroBatch, vectors: list[torch.Tensor], model: Any = None) -> torch.Tensor:
        """Summed answer-token cross-entropy of the oracle with ``vectors`` injected (graph kept)."""
        return self.oracle_loss_terms(mb, vectors, model)[0]

    def oracle_loss_terms(self, mb: MicroBatch, vectors: list[torch.Tensor], model: Any = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_sum, example_sum)`` of :func:`~.batching.answer_loss_terms` (:class:`OracleLoss`; graph kept)."""
        return self.loss(mb, vectors, model)

    def compute_step(self, batch: list[TrainingExample] | StepInput) -> StepStats:
        """Forward and backward of one global batch (this process's share); gradients accumulate in ``.grad``.

        The summed loss is divided by the answer tokens of the whole global batch (all
        processes, all micro-batches), so the gradient does not depend on how it is split.
        Nothing here waits for the GPU.
        """
        self.prepare_data()
        step = batch if isinstance(batch, StepInput) else self.make_step_input(batch)
        w = self.dist.world_size
        per_example = self.cfg.optim.loss_weighting == "example"
        # this process's share (step.examples is the whole global batch, held by every process)
        own = float(sum(len(m.items) for m in step.micro) if per_example else step.n_answer_tokens)
        if self.dist.enabled:
            n = torch.tensor([own], dtype=torch.float64)
            scale: Any = w / _all_reduce_sum(self._to_device(n), self.dist)[0]
        else:
            scale = 1.0 / max(1.0, own)
        loss_sum: torch.Tensor | None = None
        for i, mb in enumerate(step.micro):
            sync = nullcontext() if (not self.dist.enabled or i == len(step.micro) - 1) else self.ddp.no_sync()
            with sync:
                vectors = self.target_vectors(mb)
                ls, ex = self.oracle_loss_terms(mb, vectors, self.ddp)
                ((ex if per_example else ls) * scale).backward()
            loss_sum = ls.detach().double() if loss_sum is None else loss_sum + ls.detach().double()
        assert loss_sum is not None
        counts = (step.n_answer_tokens, sum(m.n_oracle_tokens for m in step.micro),
                  sum(m.n_target_tokens for m in step.micro))
        if not self.dist.enabled:
            return StepStats(loss_sum, counts, len(step.examples))
        totals = torch.cat([loss_sum.reshape(1), self._to_device(torch.tensor(counts, dtype=torch.float64))])
        totals = _all_reduce_sum(totals, self.dist)
        return StepStats(totals[0], totals[1:], len(step.examples))

    def optimizer_step(self) -> torch.Tensor:
        """Clip, AdamW step, schedule step, zero the gradients; returns the (pre-clip) gradient norm."""
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        if self.cfg.optim.skip_nonfinite:
            # Without a host sync: a non-finite norm zeroes every gradient (clipping has already
            # spread the NaN to all of them), so AdamW moves the weights by momentum alone.
            keep = torch.isfinite(norm).to(norm.dtype)
            for p in self.params:
                if p.grad is not None:
                    p.grad.nan_to_num_(0.0, 0.0, 0.0).mul_(keep)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Held-out answer loss, yes/no accuracy (log-prob of Yes vs No, with controls) and greedy exact match."""
        self.prepare_data()
        with self._data_lock:  # the tokenizer is not shared with the prefetch thread
            return self.evaluator()

    def _run_eval(self) -> None:
        if not self.dist.is_main:
            return
        metrics = self.evaluate()
        if metrics:
            self.last_eval = metrics
            self.run_log.metric({"step": self.step, **metrics})
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                     if k.count("/") == 1}
            self._info(f"step {self.step} eval: {shown}")

    # -- the loop ----------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Run (or resume) to ``total_steps``, write the oracle directory, return a summary."""
        wall0 = self._wall0 = time.perf_counter()
        self.start()
        try:
            self.train_steps(self.total_steps - self.step)
            self.finish(wall_time=time.perf_counter() - wall0)
        finally:
            self.close()
        st = self.state
        return TrainResult(self.out, st.step, st.examples, list(st.losses), dict(self.last_eval),
                           time.perf_counter() - wall0, st.train_time, st.oracle_tokens, st.target_tokens)

    def start(self) -> None:
        """Check the data, prepare it, make the output directory, resume if asked, print the config, start the data
        pipeline."""
        self.prepare_data()  # first: drawing an on-policy example would otherwise sample with the adapter on
        check_data_fits(self._factory, self.stream, self.cfg.data.max_length, self.cfg.data.max_positions)
        created = not self.out.exists()
        if self.dist.is_main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                from ..errors import OutputWriteError

                raise OutputWriteError(f"cannot create the output directory {str(self.out)!r}: "
                                       f"{exc.strerror or exc}; pick a writable --out.") from None
        self._barrier()
        if self.resume:
            self.checkpointer.restore()
        if self.dist.is_main:
            text = self.cfg.to_toml()
            self._log(f"resolved config (saved to {self.out / 'config.toml'}):\n{text}")
            try:
                ckpt.atomic_write_bytes(self.out / "config.toml", text.encode())
            except OSError as exc:  # e.g. a full disk: leave no empty run folder behind
                from ..errors import OutputWriteError

                if created and not any(self.out.iterdir()):
                    self.out.rmdir()
                raise OutputWriteError(f"cannot write {str(self.out / 'config.toml')!r}: {exc.strerror or exc}; "
                                       "free some space or pick another --out.") from None
        self.run_log.open()
        depth = self.cfg.data.prefetch if self.cfg.data.prefetch >= 0 else (2 if self.device.type == "cuda" else 0)
        if depth:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker is forked
        self._inputs = StepSource(self.stream, self.state.batches, self.make_step_input, depth)
        self._bar = _progress(self.total_steps, self.step, enabled=self._progress_on)

    def train_steps(self, n: int, record: list[StepInput] | None = None,
                    inputs: Iterator[StepInput] | None = None) -> None:
        """Run ``n`` more optimiser steps (with logging, evaluation and checkpoints as configured).

        GPU work is only waited for when metrics are due (every ``output.log_every`` steps,
        before evaluations and checkpoints), so the next batch is built while the GPU works.
        ``record`` collects the step inputs; ``inputs`` replaces the data pipeline (benchmarks).
        """
        source = inputs if inputs is not None else self._inputs
        end = min(self.total_steps, self.step + n)
        pending: list[tuple[StepStats, torch.Tensor]] = []
        t0 = time.perf_counter()
        while self.step < end:
            try:
                step_input = next(source)
            except StopIteration:
                raise DataError("the data stream ended before the last step; add data or lower "
                                "data.n_examples / optim.steps.") from None
            if record is not None:
                record.append(step_input)
            st = self.state
            for ex in step_input.examples:
                st.used[ex.source] = st.used.get(ex.source, 0) + 1
            st.skipped = step_input.skipped
            stats = self.compute_step(step_input)
            pending.append((stats, self.optimizer_step()))
            st.step += 1
            st.batches += 1
            st.examples += len(step_input.examples)
            if self._bar is not None:
                self._bar.update(1)
            log_now = self.step % self.cfg.output.log_every == 0 or self.step == self.total_steps
            eval_now = bool(self.cfg.eval.every) and self.step % self.cfg.eval.every == 0 \
                and self.step < self.total_steps
            ckpt_now = bool(self.cfg.checkpoint.every) and self.step % self.cfg.checkpoint.every == 0 \
                and self.step < self.total_steps
            if log_now or eval_now or ckpt_now or self.step == end:
                self._flush(pending, time.perf_counter() - t0, write=log_now)
                pending = []
                if log_now and self._out_of_time():
                    self._log(f"optim.max_minutes={self.cfg.optim.max_minutes:g} reached at step {self.step} of "
                              f"{self.total_steps}: the run ends here.")
                    self.total_steps = end = self.step
                    eval_now = ckpt_now = False
                if eval_now:
                    self._run_eval()
                if ckpt_now:
                    self.save_checkpoint()
                t0 = time.perf_counter()

    def _out_of_time(self) -> bool:
        """Whether ``optim.max_minutes`` has passed (every process agrees: any one out of time stops all)."""
        limit = self.cfg.optim.max_minutes
        if not limit:
            return False
        over = time.perf_counter() - getattr(self, "_wall0", time.perf_counter()) > 60.0 * limit
        if self.dist.world_size > 1:
            over = bool(_all_reduce_sum(self._to_device(torch.tensor([float(over)])), self.dist)[0] > 0)
        return over

    def finish(self, wall_time: float) -> None:
        """Final evaluation, final checkpoint, and the oracle directory."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.cfg.eval.n_examples:
            # Resumed after the final checkpoint (killed while the oracle was being written): the final
            # evaluation is already in the log; evaluating again would log the step twice.
            logged = self.run_log.logged_eval(self.step) if self.dist.is_main else None
            if logged is not None:
                self.last_eval = logged
            else:
                self._run_eval()
        self.save_checkpoint()
        if self.dist.is_main:
            training = write_oracle(self.out, self.cfg, self.peft, self.oracle_config, self.state,
                                    mixture=getattr(self._factory, "mixture", None), world_size=self.dist.world_size,
                                    wall_time=wall_time, last_eval=self.last_eval)
            self._info(f"oracle written to {self.out} ({self.step} steps, {self.examples_seen} examples, "
                       f"final loss {training['final_loss']:.4f}).")
        self._barrier()

    def save_checkpoint(self) -> None:
        """A checkpoint of the run as it is now (:class:`~.resume.Checkpointer`)."""
        self.checkpointer.save()

    def _flush(self, pending: list[tuple[StepStats, torch.Tensor]], elapsed: float, *, write: bool) -> None:
        """Read the pending steps' numbers into the counters and the log; update the bar."""
        lr = self.scheduler.get_last_lr()[0]
        tok_s = self.run_log.flush(pending, elapsed, lr=lr, write=write)
        if self._bar is not None:
            last = self.losses[-1] if self.losses else float("nan")
            self._bar.set_postfix(loss=f"{last:.3f}", tok_s=f"{tok_s:.0f}", lr=f"{lr:.2e}", refresh=False)

    def close(self) -> None:
        """Stop the data thread and close the logs (also after an error)."""
        if getattr(self, "_inputs", None) is not None:
            self._inputs.close()
        if getattr(self, "_bar", None) is not None:
            self._bar.close()
            self._bar = None
        self.run_log.close()
