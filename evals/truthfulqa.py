"""TruthfulQA MC1 / MC2 by answer log-likelihood, for any causal LM (optionally under a LoRA adapter).

Each answer is scored as the summed log-probability of its tokens given the question,
in the model's chat format (user turn = question, assistant turn = answer; the
end-of-turn token is not scored). Plain ``"Q: ...\\nA: ..."`` text is used when the
tokenizer has no chat template, or one whose rendering does not extend the prompt.

* **MC1**: 1 when the best answer scores strictly higher than every incorrect answer.
* **MC2**: the normalised probability mass on the correct answers,
  ``sum(exp(ll_c)) / (sum(exp(ll_c)) + sum(exp(ll_i)))``.

The per-question figures come from log-likelihoods alone, so they can be checked by hand:

>>> mc1, mc2 = mc_from_logprobs(-1.0, [-1.0, -2.0], [-3.0])
>>> mc1, round(mc2, 4)
(1.0, 0.91)
>>> s = summarise([{"mc1": 1.0, "mc2": 0.8}, {"mc1": 0.0, "mc2": 0.4}])
>>> s["n"], s["mc1"], round(s["mc2"], 2)
(2, 0.5, 0.6)
>>> round(s["mc1_ci"][0], 4), round(s["mc1_ci"][1], 4)
(0.0945, 0.9055)

End to end (skipped here: it loads the embedded model and reads the shared data)::

    >>> import activation_oracles as ao                              # doctest: +SKIP
    >>> qs = load_truthfulqa("../shared/data/truthfulqa/TruthfulQA.csv", limit=10)  # doctest: +SKIP
    >>> summarise(mc_scores(ao.load_model("smollm2-135m"), qs))["mc1"]  # doctest: +SKIP

Command line::

    python -m activation_oracles.evals.truthfulqa --model smollm2-135m \\
        --data ../shared/data/truthfulqa/TruthfulQA.csv --limit 100 --out results.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..adapters import use_adapter
from ..forward import continuation_logprobs, output_cache
from ..padding import pad_id_of
from ..errors import DataError, EmptyInputError
from ..models import Model, as_model
from .stats import wilson_interval

REQUIRED_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")


@dataclass(frozen=True)
class TQAQuestion:
    """One TruthfulQA question; ``best`` is always also in ``correct``."""

    question: str
    best: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...]
    category: str


# -- data -----------------------------------------------------------------------------------------------

def _split_answers(cell: str) -> tuple[str, ...]:
    """Split a ``"; "``-separated answer cell, dropping empties and repeats (first occurrence kept).

    The split is on ``;`` then strip, not on ``"; "``: some rows of the official CSV end a
    cell with a bare ``;``, which would otherwise leave a trailing ``"answer;"``.
    """
    seen: dict[str, None] = {}
    for part in cell.split(";"):
        part = part.strip()
        if part:
            seen.setdefault(part, None)
    return tuple(seen)


def load_truthfulqa(path: str | os.PathLike[str], *, limit: int | None = None) -> list[TQAQuestion]:
    """Read the TruthfulQA CSV (``Question, Best Answer, Correct Answers, Incorrect Answers[, Category]``).

    Raises :class:`DataError` for a missing file, missing columns, or a row without a
    question, a best answer, or at least one incorrect answer.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"TruthfulQA file {str(p)!r} does not exist; expected the TruthfulQA.csv "
                        f"with columns {', '.join(REQUIRED_COLUMNS)}.")
    if limit is not None and limit < 0:
        raise DataError(f"limit={limit}; expected None or a non-negative number of questions.")
    out: list[TQAQuestion] = []
    # utf-8-sig: a CSV saved by a spreadsheet may start with a BOM that would corrupt the first column name.
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"TruthfulQA file {str(p)!r} lacks column(s) {missing}; expected columns "
                            f"{', '.join(REQUIRED_COLUMNS)} (Category optional); found {reader.fieldnames}.")
        for i, row in enumerate(reader, start=1):
            if limit is not None and len(out) >= limit:
                break
            question = (row["Question"] or "").strip()
            best = (row["Best Answer"] or "").strip()
            where = f"TruthfulQA file {str(p)!r}, row {i} (line {reader.line_num}), question {question!r}"
            if not question or not best:
                raise DataError(f"{where}: empty question or best answer; each row needs both.")
            correct = _split_answers(row["Correct Answers"] or "")
            if best not in correct:
                # MC2's correct set must contain the MC1 target, or the two metrics disagree on what is right.
                correct = (best,) + correct
            incorrect = _split_answers(row["Incorrect Answers"] or "")
            if not incorrect:
                raise DataError(f"{where}: no incorrect answers; each row needs at least one incorrect answer "
                                "(MC1 and MC2 compare the correct answers against them).")
            out.append(TQAQuestion(question=question, best=best, correct=correct, incorrect=incorrect,
                                   category=(row.get("Category") or "").strip()))
    return out


# -- tokenisation ---------------------------------------------------------------------------------------

def _ids(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _chat_pair(tokenizer: Any, question: str, answer: str) -> tuple[list[int], int] | None:
    """``(ids, n_context)`` in the chat format, or None when the template cannot give a clean boundary.

    The rendered conversation must start with the generation prompt, token for token;
    otherwise (e.g. a template that rewrites earlier turns, or BPE merging across the
    boundary) the answer's tokens are not well defined and the caller falls back.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    user = [{"role": "user", "content": question}]
    try:
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
    except Exception:  # noqa: BLE001 - any template failure (jinja, missing roles) means "not supported"
        return None
    if not isinstance(prompt, str) or not isinstance(full, str) or not full.startswith(prompt):
        return None
    if not full[len(prompt):].startswith(answer):
        return None
    # The template text already holds its special tokens (BOS, headers), so no extra ones are added.
    prompt_ids = _ids(tokenizer, prompt, special=False)
    full_ids = _ids(tokenizer, full, special=False)
    # Cut the text right after the answer so the end-of-turn marker (not part of the answer) is not scored.
    answer_ids = _ids(tokenizer, prompt + answer, special=False)
    n = len(prompt_ids)
    if full_ids[:n] != prompt_ids or answer_ids[:n] != prompt_ids or len(answer_ids) <= n \
            or full_ids[:len(answer_ids)] != answer_ids:
        return None
    return answer_ids, n


def _plain_pair(tokenizer: Any, question: str, answer: str) -> tuple[list[int], int]:
    """``"Q: {question}\\nA: {answer}"``, context and continuation tokenised separately (lm-eval style)."""
    context = _ids(tokenizer, f"Q: {question}\nA:", special=True)
    cont = _ids(tokenizer, f" {answer}", special=False)
    return context + cont, len(context)


def encode_pair(tokenizer: Any, question: str, answer: str) -> tuple[list[int], int]:
    """Token ids of question + answer and the number of leading context tokens (the rest is the answer)."""
    return _chat_pair(tokenizer, question, answer) or _plain_pair(tokenizer, question, answer)


# -- scoring --------------------------------------------------------------------------------------------

@torch.no_grad()
def _score_sequences(model: Model, seqs: Sequence[tuple[list[int], int]], batch_size: int,
                     progress: bool | None = None) -> list[float]:
    """Summed log-probability of each sequence's tokens after its context.

    Sequences that share their context (every answer of one question) share one forward pass of
    it: the context runs once, its key/value cache is repeated for a batch of the answers, and
    only the answers' tokens run again. Contexts are most of the tokens (the chat template, its
    system prompt and the question; TruthfulQA's answers average under 10 tokens), so this is
    the same arithmetic as scoring every full sequence, about three times fewer tokens.
    """
    from activation_oracles.progress import progress as progress_bar

    pad = pad_id_of(model.tokenizer)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, (toks, n_ctx) in enumerate(seqs):
        groups.setdefault(tuple(toks[:n_ctx]), []).append(k)
    scores = [0.0] * len(seqs)
    bar = progress_bar(desc="truthfulqa answers", total=len(seqs), unit="answer", enabled=progress, leave=None)
    for ctx, members in groups.items():
        n = len(ctx)
        out = model.hf(input_ids=torch.tensor([ctx], device=model.device), use_cache=True, logits_to_keep=1)
        mask = torch.ones((1, n), dtype=torch.long, device=model.device)
        # Longest first: batches of similar length waste less compute on padding.
        members = sorted(members, key=lambda k: -len(seqs[k][0]))
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            last = start + batch_size >= len(members)  # the scorer consumes the cache: copy it unless last
            cache = output_cache(out) if last else copy.deepcopy(output_cache(out))
            lls = continuation_logprobs(model.hf, cache, mask, out.logits[:, -1], [list(seqs[k][0][n:]) for k in idx],
                                        pad)
            for k, ll in zip(idx, lls):
                scores[k] = ll
            bar.update(len(idx))
    bar.close()
    return scores


def mc_from_logprobs(best: float, correct: Sequence[float], incorrect: Sequence[float]) -> tuple[float, float]:
    """``(mc1, mc2)`` from answer log-likelihoods (``best`` is the best answer's, also one of ``correct``).

    MC1 needs the best answer strictly above every incorrect one (a tie is not a win).
    MC2 is computed with logsumexp so very negative log-likelihoods do not underflow to 0/0.
    """
    if not correct or not incorrect:
        raise EmptyInputError("mc_from_logprobs needs at least one correct and one incorrect log-likelihood.")
    mc1 = 1.0 if best > max(incorrect) else 0.0
    lse_c = torch.logsumexp(torch.tensor(list(correct), dtype=torch.float64), 0)
    lse_all = torch.logsumexp(torch.tensor(list(correct) + list(incorrect), dtype=torch.float64), 0)
    return mc1, float(torch.exp(lse_c - lse_all))


def mc_scores(model: Any, questions: Sequence[TQAQuestion], *, batch_size: int = 16,
              adapter: str | None = None, progress: bool | None = None) -> list[dict[str, Any]]:
    """Per question ``{"question", "category", "mc1", "mc2", "logprobs": {"best", "correct", "incorrect"}}``.

    ``logprobs["correct"]`` / ``["incorrect"]`` map each answer to its summed log-likelihood.
    ``adapter`` names a loaded LoRA adapter to score under (``None``: the model as it is).
    ``progress``: a bar over the answers (``None``: the ambient default, off outside the ``ao`` CLI).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer.")
    m = as_model(model)
    if m.tokenizer is None:
        raise EmptyInputError("mc_scores needs a model with a tokenizer; load it with ao.load_model(...).")
    # Every distinct (question, answer) is scored once, all questions in one batched pass.
    pairs: dict[tuple[str, str], int] = {}
    for q in questions:
        for a in (*q.correct, *q.incorrect):
            pairs.setdefault((q.question, a), len(pairs))
    seqs = [encode_pair(m.tokenizer, q, a) for q, a in pairs]
    was_training = m.hf.training
    m.hf.eval()  # dropout would make log-likelihoods random
    try:
        with use_adapter(m.hf, adapter):
            lls = _score_sequences(m, seqs, batch_size, progress)
    finally:
        m.hf.train(was_training)
    out = []
    for q in questions:
        correct = {a: lls[pairs[(q.question, a)]] for a in q.correct}
        incorrect = {a: lls[pairs[(q.question, a)]] for a in q.incorrect}
        best = correct[q.best]
        mc1, mc2 = mc_from_logprobs(best, list(correct.values()), list(incorrect.values()))
        out.append({"question": q.question, "category": q.category, "mc1": mc1, "mc2": mc2,
                    "logprobs": {"best": best, "correct": correct, "incorrect": incorrect}})
    return out


# -- summary --------------------------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted list, ``q`` in [0, 1]."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_mean_ci(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Deterministic percentile-bootstrap interval of the mean (same values and seed, same interval).

    >>> bootstrap_mean_ci([0.5, 0.5, 0.5])
    (0.5, 0.5)
    """
    vals = list(values)
    if not vals:
        return 0.0, 1.0
    rng = random.Random(seed)
    n = len(vals)
    means = sorted(sum(rng.choices(vals, k=n)) / n for _ in range(n_boot))
    alpha = (1 - level) / 2
    return percentile(means, alpha), percentile(means, 1 - alpha)


def summarise(scores: Sequence[dict[str, Any]], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``{"mc1", "mc1_ci" (Wilson 95%), "mc2", "mc2_ci" (percentile bootstrap 95%), "n"}``."""
    n = len(scores)
    if n == 0:
        raise EmptyInputError("summarise got no scores; score at least one question first.")
    mc1 = [float(s["mc1"]) for s in scores]
    mc2 = [float(s["mc2"]) for s in scores]
    return {"mc1": sum(mc1) / n, "mc1_ci": list(wilson_interval(int(round(sum(mc1))), n)),
            "mc2": sum(mc2) / n, "mc2_ci": list(bootstrap_mean_ci(mc2, n_boot=n_boot, seed=seed)), "n": n}


# -- command line ---------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    from ..models import load_model

    parser = argparse.ArgumentParser(prog="python -m activation_oracles.evals.truthfulqa",
                                     description="TruthfulQA MC1/MC2 by answer log-likelihood.")
    parser.add_argument("--model", default="smollm2-135m",
                        help="model spec for ao.load_model (default: the embedded smollm2-135m)")
    parser.add_argument("--data", required=True, help="path to TruthfulQA.csv")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="e.g. bf16 (default float32)")
    parser.add_argument("--device", default=None, help="e.g. cuda (default CPU)")
    parser.add_argument("--out", default=None, help="write summary, settings and per-question scores here (JSON)")
    args = parser.parse_args(argv)

    questions = load_truthfulqa(args.data, limit=args.limit)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    t0 = time.perf_counter()
    scores = mc_scores(model, questions, batch_size=args.batch_size)
    summary = summarise(scores)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary, indent=2))
    if args.out:
        record = {"summary": summary, "model": model.name, "data": str(args.data), "limit": args.limit,
                  "questions": [asdict(q) for q in questions], "scores": scores}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
