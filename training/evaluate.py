"""Held-out evaluation of the oracle during training: answer loss, yes/no accuracy and greedy exact match.

Yes/no answers are scored by comparing the log-probability of the item's own answer with that of
the opposite one, with two controls (another item's vectors; no injection); every other answer is
generated greedily and compared after whitespace normalisation. :class:`Evaluator` is one of the
trainer's parts; :func:`held_out_examples` picks the held-out examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from random import Random
from typing import Any

import torch

from ..forward import generate
from ..hooks import inject_residuals
from ..padding import left_pad
from ..progress import progress as progress_bar
from ..prompt import OraclePrompt, answer_ids
from .batching import BatchStream, Prepared, collate_oracle
from .example import TrainingExample
from .passes import OracleLoss, TargetReader
from .source_registry import make_example_stream
from .steps import make_micro


def held_out_examples(cfg: Any, factory: Any, tokenizer: Any, target: Any, given: list[TrainingExample] | None,
                  warm: Callable[[Any], None]) -> list[TrainingExample]:
    """The held-out examples: ``given``, else ``eval.sources``, else the training builders drawn with the eval seed.

    ``factory`` is the training stream (``epoch -> examples``); ``warm`` generates a factory's
    on-policy rollouts (with the target's adapter off) before any example is drawn.
    """
    n = cfg.eval.n_examples
    if given is not None:
        return list(given)[:n] if n else []
    if n == 0:
        return []
    seed = cfg.eval.seed
    if cfg.eval.sources:
        source = make_example_stream(cfg.eval.sources, tokenizer, cfg.data.layer_percents, seed, model=target,
                                     section="eval")
        warm(source)
    elif getattr(factory, "mixture", None) is None:  # examples= given: its stream at an epoch training never reaches
        source = lambda epoch: factory(10 ** 6 + epoch)  # noqa: E731
    else:
        from .mixture import Mixture

        mix = Mixture(factory.mixture.builders, factory.mixture.weights, seed=seed, name="eval")  # shares rollouts
        source = lambda epoch: mix.examples(tokenizer, None if epoch == 0 else Random(f"{seed}:epoch:{epoch}"))  # noqa: E731
    stream = BatchStream(source, batch_size=1, group_batches=1, seed=seed, max_length=cfg.data.max_length,
                         max_positions=cfg.data.max_positions)
    return [b[0] for b, _ in zip(stream, range(n))]


class Evaluator:
    """Held-out answer loss, yes/no accuracy (with its two controls) and greedy exact match.

    A part of the trainer: it reads the target with the trainer's :class:`~.passes.TargetReader` and
    scores and decodes with its :class:`~.passes.OracleLoss` (the same injection, the same
    log-probabilities as the loss), so what is evaluated is exactly what is trained.

    Args:
        reader: the target pass.
        oracle: the oracle pass (its ``model`` is the PEFT model, put in eval mode while evaluating).
        items: ``() -> prepared held-out items`` (called once, at the first evaluation).
        tokenizer: the oracle's tokenizer (answers' ids and decoding).
        pad_id: the padding id of the batches.
        batch_size, max_new_tokens: ``eval.batch_size`` and ``eval.max_new_tokens``.
        progress: show a bar over the items.
    """

    def __init__(self, reader: TargetReader, oracle: OracleLoss, *, items: Callable[[], list[Prepared]],
                 tokenizer: Any, pad_id: int, batch_size: int, max_new_tokens: int, progress: bool = False) -> None:
        self.reader, self.oracle, self._make_items = reader, oracle, items
        self.tokenizer, self.pad_id = tokenizer, pad_id
        self.batch_size, self.max_new_tokens, self.progress = batch_size, max_new_tokens, progress
        self._items: list[Prepared] | None = None

    @property
    def items(self) -> list[Prepared]:
        """The prepared held-out items (built at first use)."""
        if self._items is None:
            self._items = self._make_items()
        return self._items

    @torch.no_grad()
    def __call__(self) -> dict[str, Any]:
        items = self.items
        if not items:
            return {}
        model = self.oracle.model
        was_training = model.training
        model.eval()
        loss_sum = 0.0
        n_tok = 0
        yes_no: list[bool] = []
        exact: list[bool] = []
        per_source: dict[tuple[str, str], list[bool]] = {}
        controls: dict[str, list[bool]] = {"shuffled": [], "coeff0": []}
        # Generation and three scorings per item: a minute or more on a CPU, under the step bar.
        bar = progress_bar(desc="evaluation", total=len(items), unit="example", enabled=self.progress, leave=False)
        try:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                mb = make_micro(chunk, self.pad_id)
                vectors = self.reader(mb)
                loss_sum += float(self.oracle(mb, vectors)[0])
                n_tok += sum(p.n_answer for p in chunk)
                yn = [(i, p) for i, p in enumerate(chunk) if _yes_no(p.answer) is not None]
                if yn:
                    yn_items, yn_vecs = [p for _, p in yn], [vectors[i] for i, _ in yn]
                    for (i, p), ok in zip(yn, self.choose_yes_no(yn_items, yn_vecs)):
                        yes_no.append(ok)
                        per_source.setdefault((p.source, ""), []).append(ok)
                    # The card's two controls, cheaply: another item's vectors (the next item in the chunk
                    # with as many positions, so the prompt's placeholders still match) and no injection
                    # at all (coeff 0). A reading oracle beats both.
                    pairs = _shift_donors([v.shape[0] for v in yn_vecs])
                    if pairs:
                        shuffled = self.choose_yes_no([yn_items[i] for i, _ in pairs], [yn_vecs[d] for _, d in pairs])
                        for (i, _), ok in zip(pairs, shuffled):
                            controls["shuffled"].append(ok)
                            per_source.setdefault((yn_items[i].source, "_shuffled"), []).append(ok)
                    for p, ok in zip(yn_items, self.choose_yes_no(yn_items, yn_vecs, coeff=0.0)):
                        controls["coeff0"].append(ok)
                        per_source.setdefault((p.source, "_coeff0"), []).append(ok)
                gen = [(i, p) for i, p in enumerate(chunk) if _yes_no(p.answer) is None]
                if gen:
                    texts = self.generate([p for _, p in gen], [vectors[i] for i, _ in gen])
                    for (i, p), text in zip(gen, texts):
                        ok = _norm(text) == _norm(p.answer)
                        exact.append(ok)
                        per_source.setdefault((p.source, ""), []).append(ok)
                bar.update(len(chunk))
        finally:
            bar.close()
            if was_training:
                model.train()
        out: dict[str, Any] = {"eval/loss": loss_sum / max(n_tok, 1), "eval/n": len(items)}
        if yes_no:
            out["eval/yes_no_acc"] = sum(yes_no) / len(yes_no)
            out["eval/n_yes_no"] = len(yes_no)
        for name, oks in controls.items():
            if oks:
                out[f"eval/yes_no_acc_{name}"] = sum(oks) / len(oks)
        if exact:
            out["eval/exact_match"] = sum(exact) / len(exact)
            out["eval/n_exact"] = len(exact)
        for (source, control), oks in sorted(per_source.items()):
            out[f"eval/{source}/acc{control}"] = sum(oks) / len(oks)
        return out

    def choose_yes_no(self, items: list[Prepared], vectors: list[torch.Tensor],
                      coeff: float | None = None) -> list[bool]:
        """For each item, is the log-prob of its own answer higher than that of the opposite answer?

        ``coeff`` overrides the oracle's injection coefficient (0: the coeff0 control).
        """
        rows: list[Prepared] = []
        vecs: list[torch.Tensor] = []
        for p, v in zip(items, vectors):
            yes, no = ("Yes", "No") if p.answer.strip()[:1].isupper() else ("yes", "no")
            prompt_len = len(p.oracle_ids) - p.n_answer
            for cand in (yes, no):
                ids = self._answer_ids(p, prompt_len, cand)
                rows.append(replace(p, oracle_ids=p.oracle_ids[:prompt_len] + tuple(ids), n_answer=len(ids)))
                vecs.append(v)
        scores = self.oracle.answer_logprobs(collate_oracle(rows, self.pad_id), vecs, coeff=coeff)
        return [(scores[2 * j] > scores[2 * j + 1]) == _yes_no(p.answer) for j, p in enumerate(items)]

    def _answer_ids(self, p: Prepared, prompt_len: int, answer: str) -> list[int]:
        prompt = OraclePrompt(p.oracle_ids[:prompt_len], p.placeholder_positions, 0, p.placeholder_positions[-1] + 1)
        return answer_ids(self.tokenizer, self.oracle.config(), prompt, p.layer, p.question, answer)

    def generate(self, items: list[Prepared], vectors: list[torch.Tensor]) -> list[str]:
        """Greedy answers with ``vectors`` injected (:func:`activation_oracles.forward.generate`)."""
        o, cfg = self.oracle, self.oracle.config()
        prompts = [p.oracle_ids[:len(p.oracle_ids) - p.n_answer] for p in items]
        batch = left_pad(prompts, self.pad_id, o.device)
        max_new = min(self.max_new_tokens, max(p.n_answer for p in items) + 2)
        with o.autocast(), inject_residuals(o.oracle, o.injection_layer, [list(p.placeholder_positions) for p in items],
                                            vectors, mode=cfg.mode, coeff=cfg.coeff):
            out = generate(o.model, self.tokenizer, batch.input_ids, batch.attention_mask, max_new)
        return [self.tokenizer.decode(row.ids, skip_special_tokens=True) for row in out]


def _shift_donors(lengths: list[int]) -> list[tuple[int, int]]:
    """(item, donor) pairs: each item's donor is the next other item (cyclically) with the same length.

    >>> _shift_donors([1, 3, 1, 1, 3, 2])
    [(0, 2), (1, 4), (2, 3), (3, 0), (4, 1)]
    """
    out = []
    for i, n in enumerate(lengths):
        same = [j for j, m in enumerate(lengths) if m == n]
        if len(same) > 1:
            out.append((i, same[(same.index(i) + 1) % len(same)]))
    return out


def _yes_no(answer: str) -> bool | None:
    a = answer.strip().rstrip(".!").lower()
    return True if a == "yes" else False if a == "no" else None


def _norm(text: str) -> str:
    return " ".join(text.split())
