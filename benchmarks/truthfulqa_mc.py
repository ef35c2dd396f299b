"""Benchmark TruthfulQA MC scoring on the embedded SmolLM2-135M (CPU): shared contexts vs full sequences.

``mc_scores`` runs each question's context (chat template, system prompt, question) once and its
answers on the repeated KV cache. The "full" column scores every (question, answer) as one whole
sequence, batched with right padding, as the library did before; the two must agree to float noise.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/truthfulqa_mc.py [--questions 40] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import time
from pathlib import Path

import torch
from _machine import cpu_name

import activation_oracles as ao
from activation_oracles.evals import truthfulqa as tqa


@torch.no_grad()
def full_sequence_logliks(model: ao.Model, seqs: list[tuple[list[int], int]], batch_size: int) -> list[float]:
    """Every sequence scored whole (context + answer), batched longest first with right padding."""
    order = sorted(range(len(seqs)), key=lambda k: -len(seqs[k][0]))
    out = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(seqs[k][0]) for k in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, k in enumerate(idx):
            ids[r, :len(seqs[k][0])] = torch.tensor(seqs[k][0])
            mask[r, :len(seqs[k][0])] = 1
        logp = torch.log_softmax(model.hf(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for r, k in enumerate(idx):
            toks, n = seqs[k]
            out[k] = float(sum(logp[r, t - 1, toks[t]] for t in range(n, len(toks))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--data", default=os.environ.get("AO_DATA_DIR", "../shared/data"))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    questions = tqa.load_truthfulqa(Path(args.data) / "truthfulqa" / "TruthfulQA.csv")
    questions = random.Random(1).sample(questions, args.questions)
    model = ao.load_model("smollm2-135m")
    model.hf.eval()
    pairs = list(dict.fromkeys((q.question, a) for q in questions for a in (*q.correct, *q.incorrect)))
    seqs = [tqa.encode_pair(model.tokenizer, q, a) for q, a in pairs]
    n_tokens = sum(len(s[0]) for s in seqs)
    n_context = sum(s[1] for s in seqs)

    t0 = time.perf_counter()
    full = full_sequence_logliks(model, seqs, args.batch_size)
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = tqa.mc_scores(model, questions, batch_size=args.batch_size)
    t_shared = time.perf_counter() - t0
    shared = {(s["question"], a): v for s in scores for part in ("correct", "incorrect")
              for a, v in s["logprobs"][part].items()}
    worst = max(abs(full[k] - shared[p]) for k, p in enumerate(pairs))

    print(f"{datetime.date.today()} | {cpu_name()} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"{len(questions)} questions, {len(pairs)} answers, {n_tokens} tokens of which {n_context} context")
    print("| scoring | seconds | s per question | speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| full sequences | {t_full:.1f} | {t_full / len(questions):.2f} | 1.00x |")
    print(f"| shared contexts (mc_scores) | {t_shared:.1f} | {t_shared / len(questions):.2f} | "
          f"{t_full / t_shared:.2f}x |")
    print(f"largest |log-likelihood difference|: {worst:.1e} nats")


if __name__ == "__main__":
    main()
