"""Periodic held-out evaluation of the oracle: answer loss, yes/no accuracy and greedy exact match.

Yes/no answers are scored by comparing the log-probability of the item's own answer with that of
the opposite one; every other answer is generated greedily and compared after whitespace
normalisation. :class:`Evaluation` is a mixin of :class:`~.trainer.Trainer`.
"""

from __future__ import annotations

from dataclasses import replace
from random import Random
from typing import Any

import torch

from ..forward import cut_at_stop, generation_kwargs, label_logprobs, stop_ids
from ..hooks import inject_residuals
from ..progress import progress as progress_bar
from ..padding import left_pad
from ..prompt import answer_ids
from .batching import BatchStream, Prepared, collate_oracle
from .source_registry import make_example_stream
from .steps import make_micro


class Evaluation:
    """The held-out set and its metrics (mixed into the Trainer, whose state it reads)."""

    cfg: Any
    eval_items: list[Prepared] | None

    def _eval_set(self) -> list[Prepared]:
        if self.eval_items is None:
            n = self.cfg.eval.n_examples
            if self._eval_given is not None:
                examples = list(self._eval_given)[:n] if n else []
            elif n == 0:
                examples = []
            else:
                factory = self._eval_factory()
                stream = BatchStream(factory, batch_size=1, group_batches=1, seed=self.cfg.eval.seed,
                                     max_length=self.cfg.data.max_length, max_positions=self.cfg.data.max_positions)
                examples = [b[0] for b, _ in zip(stream, range(n))]
            self.eval_items = self.prepare(examples)
        return self.eval_items

    def _eval_factory(self) -> Any:
        """``eval.sources``; without them, the training builders drawn with the eval seed."""
        seed = self.cfg.eval.seed
        if self.cfg.eval.sources:
            factory = make_example_stream(self.cfg.eval.sources, self.tokenizer, self.cfg.data.layer_percents, seed,
                                          model=self.target, section="eval")
            self._warm_on_policy(factory)
            return factory
        mixture = getattr(self._factory, "mixture", None)
        if mixture is None:  # examples= given: its stream at an epoch training never reaches
            return lambda epoch: self._factory(10 ** 6 + epoch)
        from .mixture import Mixture

        mix = Mixture(mixture.builders, mixture.weights, seed=seed, name="eval")  # shares on-policy rollouts
        return lambda epoch: mix.examples(self.tokenizer, None if epoch == 0 else Random(f"{seed}:epoch:{epoch}"))

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out answer loss, yes/no accuracy (log-prob of Yes vs No) and greedy exact match."""
        with self._data_lock:  # the tokenizer is not shared with the prefetch thread
            return self._evaluate()

    def _evaluate(self) -> dict[str, Any]:
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
        per_source: dict[tuple[str, str], list[bool]] = {}
        controls: dict[str, list[bool]] = {"shuffled": [], "coeff0": []}
        # Generation and three scorings per item: a minute or more on a CPU, under the step bar.
        bar = progress_bar(desc="evaluation", total=len(items), unit="example", enabled=self._progress_on,
                           leave=False)
        try:
            for start in range(0, len(items), bs):
                chunk = items[start:start + bs]
                mb = make_micro(chunk, self.pad_id)
                vectors = self.target_vectors(mb)
                loss_sum += float(self.oracle_loss_sum(mb, vectors))
                n_tok += sum(p.n_answer for p in chunk)
                yn = [(i, p) for i, p in enumerate(chunk) if _yes_no(p.answer) is not None]
                if yn:
                    yn_items, yn_vecs = [p for _, p in yn], [vectors[i] for i, _ in yn]
                    for (i, p), ok in zip(yn, self._choose_yes_no(yn_items, yn_vecs)):
                        yes_no.append(ok)
                        per_source.setdefault((p.source, ""), []).append(ok)
                    # The card's two controls, cheaply: another item's vectors (the next item in the chunk
                    # with as many positions, so the prompt's placeholders still match) and no injection
                    # at all (coeff 0). A reading oracle beats both.
                    pairs = _shift_donors([v.shape[0] for v in yn_vecs])
                    if pairs:
                        shuffled = self._choose_yes_no([yn_items[i] for i, _ in pairs], [yn_vecs[d] for _, d in pairs])
                        for (i, _), ok in zip(pairs, shuffled):
                            controls["shuffled"].append(ok)
                            per_source.setdefault((yn_items[i].source, "_shuffled"), []).append(ok)
                    for p, ok in zip(yn_items, self._choose_yes_no(yn_items, yn_vecs, coeff=0.0)):
                        controls["coeff0"].append(ok)
                        per_source.setdefault((p.source, "_coeff0"), []).append(ok)
                gen = [(i, p) for i, p in enumerate(chunk) if _yes_no(p.answer) is None]
                if gen:
                    texts = self._generate([p for _, p in gen], [vectors[i] for i, _ in gen])
                    for (i, p), text in zip(gen, texts):
                        ok = _norm(text) == _norm(p.answer)
                        exact.append(ok)
                        per_source.setdefault((p.source, ""), []).append(ok)
                bar.update(len(chunk))
        finally:
            bar.close()
            if was_training:
                self.peft.train()
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

    def _choose_yes_no(self, items: list[Prepared], vectors: list[torch.Tensor],
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
                ids = self._answer_ids_for(p, prompt_len, cand)
                rows.append(replace(p, oracle_ids=p.oracle_ids[:prompt_len] + tuple(ids), n_answer=len(ids)))
                vecs.append(v)
        batch = collate_oracle(rows, self.pad_id)
        with self._autocast(), inject_residuals(self.oracle, self.cfg.model.injection_layer,
                                                batch.placeholder_positions, vecs, mode=self.oracle_config.mode,
                                                coeff=self.oracle_config.coeff if coeff is None else coeff):
            logits = self.peft(input_ids=self._to_device(batch.input_ids),
                               attention_mask=self._to_device(batch.attention_mask),
                               position_ids=self._to_device(batch.position_ids), logits_to_keep=batch.keep,
                               use_cache=False).logits.float()
        scores = label_logprobs(logits, batch.labels)[0].sum(-1).tolist()
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
        batch = left_pad([p.oracle_ids for p in prompts], self.pad_id)  # generate() derives position ids
        ids, mask, width = batch.input_ids, batch.attention_mask, batch.input_ids.shape[1]
        max_new = min(self.cfg.eval.max_new_tokens, max(p.n_answer for p in items) + 2)
        with self._autocast(), inject_residuals(self.oracle, self.cfg.model.injection_layer,
                                                [list(p.placeholder_positions) for p in prompts], vectors,
                                                mode=self.oracle_config.mode, coeff=self.oracle_config.coeff):
            out = self.peft.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                     **generation_kwargs(self.tokenizer, max_new))
        stops = set(stop_ids(self.tokenizer))
        return [self.tokenizer.decode(cut_at_stop(row, stops)[0], skip_special_tokens=True)
                for row in out[:, width:].tolist()]

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
