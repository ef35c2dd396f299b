"""Benchmark the oracle trainer against the ideal loop on the same batches (issue 4).

For every global batch the trainer draws, two timings, interleaved step by step so that
load on a shared machine hits both alike:

* **trainer**: exactly the body of ``Trainer.train``'s loop: draw the batch from the
  length-grouped stream (builders, tokenization), build prompts, the target pass with
  ``capture_residuals(stop_early=True)`` (adapter disabled), the oracle pass with
  ``inject_residuals``, the answer-token loss, backward, clip, AdamW, schedule;
* **ideal**: the same already-collated tensors through a bare loop: the target's
  backbone cut after the deepest source layer (adapters bypassed, no hooks), then a bare
  PEFT LoRA forward (LM head on the answer columns only, as the trainer does) + backward +
  clip + AdamW step. A second bare variant, **ideal (HF labels)**, computes the full
  logits through ``labels=`` as a plain PEFT fine-tune would.

tokens/s counts the oracle's non-padding tokens (prompt + answer); the target's context
tokens are reported beside them. Goal: trainer / ideal >= 0.85.

CPU (the embedded SmolLM2-135M, bf16 autocast):
    .venv/bin/python benchmarks/train.py
GPU, a randomly initialised model with Qwen3-8B's shape in bf16 (the reference trained at
~1,800 tokens/s on H100s, activation generation included; the goal is >= 2x that):
    python benchmarks/train.py --model-shape qwen3-8b --random-init --device cuda
``--dry-run`` builds the model on the meta device (no memory) and wraps it with LoRA, to
check the shape code anywhere.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from random import Random
from typing import Any

import torch
from _machine import cpu_name

QWEN3_8B = dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=12288, vocab_size=151936, head_dim=128, max_position_embeddings=40960,
                rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)


def synthetic_documents(n: int, seed: int = 0) -> list[str]:
    """Deterministic documents of 3-20 sentences (about 40-300 tokens) from the built-in sentences."""
    from activation_oracles.files import package_data
    from activation_oracles.training.presets import TINY_TEXTS

    extra = []
    prompts = package_data("seed_prompts.txt")
    if prompts.is_file():
        extra = [line.strip() for line in prompts.read_text().splitlines() if line.strip() and line[0] != "#"]
    pool = list(TINY_TEXTS) + extra
    rng = Random(seed)
    return [" ".join(rng.choice(pool) for _ in range(rng.randint(3, 20))) for _ in range(n)]


def build_config(args: argparse.Namespace) -> Any:
    from activation_oracles.training.config import SourceSpec, apply_overrides
    from activation_oracles.training.presets import smollm2_135m

    cfg = None
    if args.data == "preset":
        try:
            cfg = smollm2_135m()
            # On-policy rollouts take minutes to generate before step 1; they do not change step costs.
            cfg = replace(cfg, data=replace(cfg.data, sources=tuple(s for s in cfg.data.sources
                                                                   if s.kind != "on_policy")))
        except Exception as exc:  # no data folder here: fall back to the synthetic corpus
            print(f"(preset data unavailable: {exc}; using the synthetic corpus)", file=sys.stderr)
    if cfg is None:
        docs = synthetic_documents(400)
        cfg = smollm2_135m_shell()
        cfg = replace(cfg, data=replace(cfg.data, sources=(
            SourceSpec("context_prediction", 0.6, {"texts": docs, "n_positions": [1, 50], "n_tokens": [1, 20],
                                                   "max_context_tokens": args.max_length, "name": "cp_synthetic"}),
            SourceSpec("activation_oracles.training.presets:TinyYesNo", 0.4, {}),
        )))
    overrides = [f"optim.batch_size={args.batch_size}", f"data.max_length={args.max_length}",
                 "eval.n_examples=0", "checkpoint.every=0", "output.progress=false", "output.tensorboard=false",
                 f"model.dtype={args.dtype}", f"optim.bf16={'true' if args.bf16 else 'false'}",
                 f"model.device={args.device}", f"data.prefetch={args.prefetch}"]
    if args.max_positions:
        overrides.append(f"data.max_positions={args.max_positions}")
    if args.lora_r:
        overrides += [f"lora.r={args.lora_r}", f"lora.alpha={2 * args.lora_r}"]
    if args.threads:
        overrides.append(f"optim.num_threads={args.threads}")
    return apply_overrides(cfg, overrides)


def smollm2_135m_shell() -> Any:
    """The smollm2-135m preset's settings without its data sources (they need the data folder)."""
    from activation_oracles.training.config import DataSection, EvalSection, LoraSection, OptimSection, TrainConfig

    return TrainConfig(lora=LoraSection(r=32, alpha=64.0, dropout=0.05),
                       optim=OptimSection(lr=2e-4, batch_size=16, bf16=True),
                       data=DataSection(n_examples=12_000, max_length=128, max_positions=16, group_batches=16),
                       eval=EvalSection(n_examples=0))


def build_model(args: argparse.Namespace, device: str) -> Any:
    import activation_oracles as ao

    if args.model_shape is None:
        return ao.load_model(args.model, dtype=args.dtype, device=device)
    if args.model_shape != "qwen3-8b" or not args.random_init:
        raise SystemExit("--model-shape qwen3-8b needs --random-init (no weights are downloaded).")
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    else:
        from activation_oracles.embedded import embedded_dir

        tok = AutoTokenizer.from_pretrained(str(embedded_dir()), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    config = Qwen3Config(**QWEN3_8B, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    with torch.device(device):
        hf = Qwen3ForCausalLM._from_config(config, dtype=dtype)
    hf.eval()
    hf.config.name_or_path = "qwen3-8b-shape-random"
    return ao.as_model(hf, tok, name="qwen3-8b-shape-random")


def dry_run(args: argparse.Namespace) -> int:
    """Build the Qwen3-8B-shaped model on the meta device and wrap it with the trainer's LoRA."""
    from peft import LoraConfig, get_peft_model

    model = build_model(args, "meta")
    n = sum(p.numel() for p in model.hf.parameters())
    peft = get_peft_model(model.hf, LoraConfig(r=args.lora_r or 64, lora_alpha=2 * (args.lora_r or 64),
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    print(f"built {model.name} on meta: {model.n_layers} blocks, d_model {model.d_model}, {n / 1e9:.2f}B "
          f"parameters, LoRA trainable {trainable / 1e6:.1f}M")
    return 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    import os

    # Variable-length batches: let the CUDA allocator grow segments instead of new cudaMallocs.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model spec for ao.load_model (default: embedded).")
    ap.add_argument("--model-shape", choices=["qwen3-8b"], help="a randomly initialised model of this shape.")
    ap.add_argument("--random-init", action="store_true", help="with --model-shape: random weights.")
    ap.add_argument("--tokenizer", help="tokenizer folder for --model-shape (default: the embedded SmolLM2's).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="weight dtype (default: fp32 on CPU with bf16 autocast, bf16 "
                                                  "on CUDA).")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="no bf16 autocast.")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up).")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128, help="longest target context.")
    ap.add_argument("--max-positions", type=int, default=0, help="most activation vectors per example (default: "
                                                                 "the preset's).")
    ap.add_argument("--lora-r", type=int, default=0, help="LoRA rank (default: the preset's; 64 for qwen3-8b).")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=0, help="steps per interleaving round (default 1 on CPU, 5 on "
                                                         "CUDA).")
    ap.add_argument("--prefetch", type=int, default=-1, help="data.prefetch (-1 = auto: 2 on CUDA, 0 on CPU).")
    ap.add_argument("--data", choices=["preset", "synthetic"], default="preset")
    ap.add_argument("--dry-run", action="store_true", help="build on the meta device, wrap with LoRA, exit.")
    ap.add_argument("--json", help="also write the numbers to this JSON file.")
    args = ap.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.model_shape and not args.lora_r:
        args.lora_r = 64
    if args.model_shape and args.data == "preset":
        args.data = "synthetic"
    if args.dry_run:
        return dry_run(args)

    from transformers.utils import logging as hf_logging

    from activation_oracles.training.batching import answer_loss_sum
    from activation_oracles.training.trainer import Trainer

    hf_logging.disable_progress_bar()
    cfg = build_config(args)
    if cfg.optim.num_threads:
        torch.set_num_threads(cfg.optim.num_threads)
    model = build_model(args, args.device)
    out = Path(tempfile.mkdtemp(prefix="ao-bench-train-"))
    n_steps = args.warmup + args.steps
    cfg = replace(cfg, optim=replace(cfg.optim, steps=max(cfg.optim.steps, n_steps + 1)),
                  output=replace(cfg.output, log_every=10 ** 6))
    trainer = Trainer(cfg, out_dir=out / "run", base=model, log=lambda msg: None)
    device = trainer.device
    peft = trainer.peft
    ideal_opt = torch.optim.AdamW(trainer.params, lr=cfg.optim.lr)
    backbone = trainer.target.backbone
    attr = trainer.target.layers_path.rsplit(".", 1)[-1]
    all_layers = getattr(backbone, attr)
    autocast = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if cfg.optim.bf16 \
        else nullcontext

    def ideal_step(step_input: Any, full_logits: bool) -> None:
        for mb in step_input.micro:
            tb, ob = mb.target, mb.oracle
            # The cheapest way to run the base under the adapters (PEFT's disable_adapter() is ~5x slower).
            with torch.no_grad(), trainer._adapters_off(), autocast():
                setattr(backbone, attr, all_layers[:max(mb.gather) + 1])
                try:
                    backbone(input_ids=tb.input_ids.to(device), attention_mask=tb.attention_mask.to(device),
                             position_ids=tb.position_ids.to(device), use_cache=False)
                finally:
                    setattr(backbone, attr, all_layers)
            ids, mask, pos = ob.input_ids.to(device), ob.attention_mask.to(device), ob.position_ids.to(device)
            labels = ob.labels.to(device)
            with autocast():
                if full_logits:
                    loss = peft(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels,
                                use_cache=False).loss
                else:
                    logits = peft(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=ob.keep,
                                  use_cache=False).logits
                    loss = answer_loss_sum(logits, labels) / ob.n_answer_tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, cfg.optim.grad_clip)
        ideal_opt.step()
        ideal_opt.zero_grad(set_to_none=True)

    # Rounds of `chunk` steps: the trainer's own loop (Trainer.train_steps, prefetching as configured),
    # then both ideal loops on the very same step inputs. One step per round on CPU (fine-grained
    # interleaving against load drift); a few on CUDA so the prefetch thread works as in a real run.
    chunk = args.chunk or (5 if device.type == "cuda" else 1)
    rows: dict[str, list[float]] = {"trainer": [], "ideal": [], "ideal_hf": []}
    tokens: list[int] = []
    target_tokens: list[int] = []
    def run_ideal(record: list[Any], times: dict[str, float]) -> None:
        for name, full in (("ideal", False), ("ideal_hf", True)):
            sync(device)
            t0 = time.perf_counter()
            for step_input in record:
                ideal_step(step_input, full)
            sync(device)
            times[name] = time.perf_counter() - t0

    trainer.start()
    rss_after_trainer = 0
    firsts: list[bool] = []  # per timed round: did the ideal run first?
    done = 0
    try:
        while done < n_steps:
            k = args.warmup if done < args.warmup else min(chunk, n_steps - done)  # warm-up: its own round
            # Every other round the ideal goes first, on step inputs drawn ahead (the draw is timed and
            # charged to the trainer): whichever runs first on new shapes pays the allocator's first
            # allocations, so alternating keeps that fair.
            ideal_first = (done // max(chunk, 1)) % 2 == 1
            record: list[Any] = []
            times: dict[str, float] = {}
            if ideal_first:
                sync(device)
                t0 = time.perf_counter()
                record = [next(trainer._inputs) for _ in range(k)]
                t_fetch = time.perf_counter() - t0
                run_ideal(record, times)
            sync(device)
            t0 = time.perf_counter()
            if ideal_first:
                trainer.train_steps(k, inputs=iter(record))
            else:
                trainer.train_steps(k, record=record)
                t_fetch = 0.0
            sync(device)
            t_trainer = time.perf_counter() - t0 + t_fetch
            rss_after_trainer = max(rss_after_trainer, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            if not ideal_first:
                run_ideal(record, times)
            if done >= args.warmup:
                firsts.append(ideal_first)
                rows["trainer"].append(t_trainer)
                rows["ideal"].append(times["ideal"])
                rows["ideal_hf"].append(times["ideal_hf"])
                tokens.append(sum(m.n_oracle_tokens for si in record for m in si.micro))
                target_tokens.append(sum(m.n_target_tokens for si in record for m in si.micro))
            done += k
    finally:
        trainer.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    shutil.rmtree(out, ignore_errors=True)
    timed_steps = args.steps

    n_tok, n_tgt = sum(tokens), sum(target_tokens)
    per_step = {k: sum(v) / timed_steps for k, v in rows.items()}
    tps = {k: n_tok / sum(v) for k, v in rows.items()}
    ratio = tps["trainer"] / tps["ideal"]
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"\n### Training throughput: {model.name} ({model.n_layers} blocks, d_model {model.d_model}), "
          f"{hw}, {datetime.date.today()}\n")
    print(f"batch {cfg.optim.batch_size}, LoRA r={cfg.lora.r} on {', '.join(cfg.lora.target_modules)}, weights "
          f"{cfg.model.dtype}, bf16 autocast {'on' if cfg.optim.bf16 else 'off'}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, data: {args.data}; {n_tok / timed_steps:.0f} oracle tokens and "
          f"{n_tgt / timed_steps:.0f} target tokens per step; prefetch depth {trainer._inputs.depth}.\n")
    print("| loop | s/step | oracle tokens/s | target tokens/s | vs ideal |")
    print("|---|---:|---:|---:|---:|")
    labels = {"trainer": "trainer (Trainer.train's step)", "ideal": "ideal (bare target fwd + bare LoRA step)",
              "ideal_hf": "ideal, HF labels= (full logits)"}
    for k in ("trainer", "ideal", "ideal_hf"):
        print(f"| {labels[k]} | {per_step[k]:.3f} | {tps[k]:.0f} | {n_tgt / sum(rows[k]):.0f} | "
              f"{tps[k] / tps['ideal']:.2f} |")
    # Whichever loop meets a batch's shapes first pays one-off costs (allocator, GEMM algorithm choice);
    # a long run meets few new shapes, so also compare each loop only in rounds where it ran second.
    tr_second = [i for i, f in enumerate(firsts) if f]
    id_second = [i for i, f in enumerate(firsts) if not f]
    if tr_second and id_second:
        tps_tr = sum(tokens[i] for i in tr_second) / sum(rows["trainer"][i] for i in tr_second)
        tps_id = sum(tokens[i] for i in id_second) / sum(rows["ideal"][i] for i in id_second)
        print(f"\nsteady state (each loop timed only in the rounds where it ran second, on shapes already seen): "
              f"trainer {tps_tr:.0f} tokens/s, ideal {tps_id:.0f} tokens/s, trainer / ideal = {tps_tr / tps_id:.2f}.")
    mem = f"peak RSS {peak_mib:.0f} MiB (after the trainer steps: {rss_after_trainer / 1024:.0f} MiB)"
    if gpu_peak is not None:
        mem += f"; peak GPU memory allocated {gpu_peak:.1f} GiB"
    print(f"\ntrainer / ideal = **{ratio:.2f}** (goal >= 0.85); {mem}.")
    if args.model_shape == "qwen3-8b":
        print(f"reference: ~1,800 tokens/s (65M tokens in ~10 H100-hours); this run: {tps['trainer']:.0f} "
              f"tokens/s = {tps['trainer'] / 1800:.1f}x (goal >= 2x).")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens_per_s": tps, "ratio": ratio, "ideal_first": firsts, "peak_rss_mib": peak_mib,
                                               "gpu_peak_gib": gpu_peak, "steps": rows,
                                               "oracle_tokens": tokens, "target_tokens": target_tokens}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
