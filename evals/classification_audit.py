"""The held-out classification tasks as an audit of the base model's own activations.

No organism here: the target is the oracle's base model. Items are yes/no questions
about texts from the classification tasks never trained on (singular/plural, the
headline tasks, the negated Geometry-of-Truth sets), drawn balanced Yes/No from
their rows with the same builder the trainer uses. Per task, the first items are the
validation split (the probe's training rows), the rest are scored.

The linear probe reads each task's own label (e.g. true/false, about China or not),
one probe per task, since "Yes" means something different for every question.

>>> from activation_oracles.evals.classification_audit import ClassificationAudit
>>> ClassificationAudit().chance([])
{'choice': 0.5, 'open': 0.5}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import DataError

from .audit_task import AuditItem, AuditTask, register_audit_task


class ClassificationAudit(AuditTask):
    name = "classification"
    summary = "Held-out yes/no classification tasks, read from the base model's activations."
    organism_task = None
    open_question = ""  # per item
    choice_question = ""  # per item
    probe = True
    logit_lens = False  # the answers (Yes/No) are not words the text itself would predict
    n_val = 10  # validation items per task

    def items(self, targets: Mapping[str, Any], *, data_dir: Path | None, rng: Random, limit: int | None
              ) -> list[AuditItem]:
        from activation_oracles.training.classification import DEFAULT_TASKS, Classification

        if data_dir is None or not (data_dir / "classification").is_dir():
            raise DataError(f"the classification audit needs the shared data folder (classification/ inside it); "
                            f"got data_dir={str(data_dir)!r}. Pass --data-dir or set $AO_DATA_DIR.")
        tokenizer = targets[""].tokenizer  # the base model itself is the target
        names = sorted(n for n, t in DEFAULT_TASKS.items() if t.held_out)
        per_task = limit if limit is not None else 100
        out: list[AuditItem] = []
        for name in names:
            builder = Classification(data_dir / "classification", tasks=[name], split="held_out",
                                     max_context_tokens=128)
            stream = builder.examples(tokenizer, Random(rng.randrange(1 << 30)))
            seen: set[tuple[str, str]] = set()
            n = 0
            while n < per_task + self.n_val:
                ex = next(stream)
                key = (ex.meta["text"], ex.question)
                if key in seen:
                    if len(seen) > 20 * (per_task + self.n_val):
                        break
                    continue
                seen.add(key)
                split = "val" if n < self.n_val else "test"
                out.append(AuditItem(
                    id=f"{name}/{n}", organism="", prompt=ex.meta["text"], truth=ex.answer, candidates=("Yes", "No"),
                    split=split, open_question=ex.question, choice_question=ex.question,
                    meta={"task": name, "probe_group": name, "probe_label": ex.meta["label"]}))
                n += 1
        return out

    def score_open(self, answer: str, item: AuditItem) -> bool:
        m = re.search(r"\b(yes|no)\b", answer.lower())
        return bool(m) and m.group(1) == item.truth.lower()

    def chance(self, items: Any) -> dict[str, float]:
        return {"choice": 0.5, "open": 0.5}

    def blackbox(self, item: AuditItem) -> list[Any]:
        from .audit_task import BlackBoxQuery

        chat = [{"role": "user", "content": f"{item.prompt}\n\n{item.choice_question}"}]
        return [BlackBoxQuery("blackbox:direct", chat), BlackBoxQuery("blackbox:prefill", chat, prefill="Answer:")]


register_audit_task(ClassificationAudit())
