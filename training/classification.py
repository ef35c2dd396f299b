"""Classification: yes/no questions about labelled texts (Geometry of Truth, relations, tense, ...).

Each task is a :class:`ClassificationTask`: where its rows are, which columns
hold the text and the label, how raw labels map to classes, which question it
asks, and whether it is a training or a held-out task. ``DEFAULT_TASKS`` is the
registry for the file formats of ``shared/data/classification``;
singular/plural and the headline tasks are held out by default.

Yes and No are balanced by construction. *Truth* tasks ("Is this statement
true?") pick the answer first, then a row with that answer. *Label* tasks pick
the row's class uniformly (so imbalanced files do not leak a prior), then ask
about the row's own class (Yes) or another class (No) with equal odds - the
reference's label flipping. Positions lie in the text itself, never on a
special or chat-template token: with probability 2/3 one token (by default the
text's last token, where a linear probe finds the feature; ``end_offsets``
moves it earlier), otherwise a window of 1-50 tokens of the text ending there.
The reference reads 1-5 tokens before the end of the chat-templated context,
which on SmolLM2 lands on ``<|im_end|>`` and newlines, where the same probe
finds little. Chat contexts carry no default system prompt. Rows split into train/test by a hash of the row
(relations: of the subject), so held-out examples of training tasks exist and
never move between runs. (A little over 400 lines: the task registry and the builder that
reads it are one idea.)

>>> from random import Random
>>> from transformers import AutoTokenizer
>>> from activation_oracles.embedded import embedded_dir
>>> from activation_oracles.training.classification import Classification, find_shared_data
>>> tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
>>> data = find_shared_data()
>>> if data is not None:  # the repo's shared data (tests only; the product takes a path)
...     ex = next(Classification(data / "classification", tasks=["gmt/cities"]).examples(tok, Random(0)))
...     assert ex.answer in ("Yes", "No")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.chat import content_spans
from activation_oracles.errors import ConfigError, DataError

from .example import TrainingExample
from .sources import check_layer_percents, check_range, read_csv_rows, read_json, stable_unit

YES, NO = "Yes", "No"
SPLITS = ("train", "test", "held_out")


@dataclass(frozen=True)
class ClassificationTask:
    """One labelled data set and the yes/no question asked about it.

    ``mode="truth"``: the question has no slot; the answer is Yes iff the row's class is
    ``yes_class``. ``mode="label"``: the question names a class (a ``{}`` slot in the
    template, or a per-class list of questions); the answer is Yes iff it is the row's.
    """

    name: str
    path: str = field(metadata={"help": "File, relative to the data dir (or absolute)."})
    kind: str = "csv"  # "csv" or "relations" (Hernandez et al. JSON: prompt_templates + subject/object samples)
    text_column: str = "statement"
    label_column: str = "label"
    labels: Mapping[str, str] = field(default_factory=dict)  # raw label -> class; empty: the raw label is the class
    mode: str = "truth"
    yes_class: str = "true"
    paraphrase_key: str | None = None  # dotted key into question.json, e.g. "engels.headline_istrump"
    questions: Any = ("Is this statement true?",)  # fallback when no paraphrase file: list, or class -> list
    group: str = ""  # tasks are drawn uniformly by group, then uniformly within the group
    held_out: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("csv", "relations"):
            raise ConfigError(f"task {self.name!r}: kind={self.kind!r}; expected 'csv' or 'relations'.")
        if self.mode not in ("truth", "label"):
            raise ConfigError(f"task {self.name!r}: mode={self.mode!r}; expected 'truth' or 'label'.")


_GOT = ("Is this statement true?", "Is this true?", "Would you say this is accurate?")
_TENSE = {t: t.split()[0] for t in ("past", "past continuous", "past perfect", "past perfect continuous", "present",
                                    "present continuous", "present perfect", "present perfect continuous", "future",
                                    "future continuous", "future perfect", "future perfect continuous")}
_RELATIONS = {
    "commonsense": ("fruit_outside_color", "object_superclass", "substance_phase", "task_done_by_person",
                    "task_done_by_tool", "word_sentiment", "work_location"),
    "factual": ("city_in_country", "country_capital_city", "country_currency", "country_language",
                "country_largest_city", "food_from_country", "landmark_in_country", "person_plays_instrument",
                "person_plays_position_in_sport", "person_plays_pro_sport", "superhero_archnemesis",
                "superhero_person"),
    "linguistic": ("adj_antonym", "adj_comparative", "adj_superlative", "verb_past_tense", "word_first_letter",
                   "word_last_letter"),
}
_HEADLINES = {"istrump": ("21", "trump", "Donald Trump"), "isobama": ("22", "obama", "Barack Obama"),
              "ischina": ("23", "china", "China")}


def _default_tasks() -> dict[str, ClassificationTask]:
    tasks = [ClassificationTask(f"gmt/{n}", f"gmt/{n}.csv", labels={"1": "true", "0": "false"},
                                paraphrase_key="geometry_of_truth", questions=_GOT, group="geometry_of_truth",
                                held_out=n.startswith("neg_") or n == "common_claim_true_false")
             for n in ("cities", "sp_en_trans", "larger_than", "smaller_than", "companies_true_false",
                       "neg_cities", "neg_sp_en_trans", "common_claim_true_false")]
    tasks += [ClassificationTask(f"relations/{n}", f"relations/{kind}/{n}.json", kind="relations",
                                 paraphrase_key="relations", questions=_GOT, group="relations")
              for kind, names in _RELATIONS.items() for n in names]
    tasks.append(ClassificationTask("tense", "tense/tense.csv", text_column="sentence", label_column="tense",
                                    labels=_TENSE, mode="label", paraphrase_key="tense", group="tense",
                                    questions=("Is this statement in the {} tense?",)))
    tasks.append(ClassificationTask(
        "singular_plural", "singular_plural/singular_plural.csv", text_column="sentence", label_column="n_subjects",
        mode="label", paraphrase_key="singular_plural", group="singular_plural", held_out=True,
        questions={"single": ("Is this sentence referring to one individual?",),
                   "multiple": ("Is this sentence referring to more than one individual?",)}))
    for key, (num, cls, who) in _HEADLINES.items():
        tasks.append(ClassificationTask(
            f"headline_{key}", f"engels/{num}_headline_{key}.csv", text_column="prompt", label_column="target",
            labels={"True": cls, "False": f"not_{cls}"}, mode="label", paraphrase_key=f"engels.headline_{key}",
            group="headlines", held_out=True,
            questions={cls: (f"Is this headline about {who}?",),
                       f"not_{cls}": (f"Is this headline not about {who}?",)}))
    return {t.name: t for t in tasks}


DEFAULT_TASKS: dict[str, ClassificationTask] = _default_tasks()


def encode_with_span(tokenizer: Any, text: str, context_format: str = "plain") -> tuple[tuple[int, ...], tuple[int, int]]:
    """Token ids of ``text`` as a context and the ``[start, end)`` span of its own tokens.

    ``"plain"``: the tokenizer's encoding (special tokens such as a BOS lie outside the span);
    ``"chat"``: one user turn through the chat template with no default system prompt (the
    template's tokens lie outside the span).
    """
    if context_format == "chat":
        ids, spans = content_spans(tokenizer, [{"role": "user", "content": text}])
        return tuple(ids), spans[0]
    enc = tokenizer(text, return_special_tokens_mask=True)
    ids = tuple(int(i) for i in enc["input_ids"])
    content = [i for i, special in enumerate(enc["special_tokens_mask"]) if not special]
    if not content:
        raise DataError(f"the text {text[:40]!r} encodes to special tokens only; it has no content to read.")
    return ids, (content[0], content[-1] + 1)


def find_shared_data() -> Path | None:
    """The repo's ``shared/data`` folder (``$AO_SHARED_DATA`` first), for tests and recipes; None if absent."""
    env = os.environ.get("AO_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


@dataclass
class _Row:
    text: str
    cls: str
    key: str


def load_rows(task: ClassificationTask, data_dir: Path | None) -> list[_Row]:
    """All rows of a task as (text, class, split key); typed errors for missing files, columns and labels."""
    path = Path(task.path) if Path(task.path).is_absolute() or data_dir is None else data_dir / task.path
    if task.kind == "relations":
        data = read_json(path, f"task {task.name!r} relations file")
        if not isinstance(data, dict) or not data.get("samples") or not data.get("prompt_templates"):
            raise DataError(f"task {task.name!r}: {str(path)!r} is not a relations file; expected "
                            "{'prompt_templates': [...], 'samples': [{'subject', 'object'}, ...]}.")
        templates = [t for t in data["prompt_templates"] if "{}" in t]
        pairs = [(str(s["subject"]), str(s["object"])) for s in data["samples"] if "subject" in s and "object" in s]
        objects = sorted({o for _, o in pairs})
        true_of: dict[str, set[str]] = {}
        for s, o in pairs:
            true_of.setdefault(s, set()).add(o)
        rows = []
        for s, o in pairs:
            template = templates[int(stable_unit(task.name, s, o, "template") * len(templates))]
            rows.append(_Row(f"{template.format(s)} {o}.", "true", s))
            others = [x for x in objects if x not in true_of[s]]
            if others:
                false = others[int(stable_unit(task.name, s, o, "false") * len(others))]
                rows.append(_Row(f"{template.format(s)} {false}.", "false", s))
        return rows
    raw_rows = read_csv_rows(path, [task.text_column, task.label_column], f"task {task.name!r} CSV file")
    rows = []
    for raw in raw_rows:
        text, label = (raw.get(task.text_column) or "").strip(), (raw.get(task.label_column) or "").strip()
        if not text:
            continue
        if task.labels and label not in task.labels:
            raise DataError(f"task {task.name!r}: label {label!r} in column {task.label_column!r} of {str(path)!r} "
                            f"is not in the task's label mapping {sorted(task.labels)}; add it to labels=.")
        rows.append(_Row(text, task.labels.get(label, label), text))
    if not rows:
        raise DataError(f"task {task.name!r}: {str(path)!r} has no non-empty {task.text_column!r} values.")
    return rows


def _lookup(paraphrases: Mapping[str, Any] | None, key: str | None) -> Any:
    node: Any = paraphrases
    for part in (key or "").split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class Classification:
    """Builder of balanced yes/no classification examples from labelled files.

    Args:
        data_dir: folder the tasks' relative paths start from (``shared/data/classification``).
        tasks: task names from ``DEFAULT_TASKS`` or :class:`ClassificationTask` objects; default:
            every registered task of the split's kind (training tasks, or held-out ones).
        split: ``"train"`` (training tasks, train rows), ``"test"`` (training tasks, the hashed-out
            test rows), ``"held_out"`` (held-out tasks, all rows).
        held_out: names of tasks to treat as held-out, overriding the registry's flags.
        paraphrases: ``question.json``; default ``data_dir/paraphrases/question.json`` when present,
            otherwise each task's built-in questions.
        context_format: ``"plain"`` (the text's own tokens) or ``"chat"`` (one user turn through the
            target's chat template, no generation prompt, as in the reference).
        single_fraction: share of single-token inputs (the rest are windows).
        end_offsets: inclusive range d; the (last) position is the text's ``d``-th token from its end
            (1 = its last token; clamped to the text's first token).
        window_sizes: inclusive range of window lengths.
        test_fraction: share of rows hashed into the test split.
        max_context_tokens: longer contexts are dropped (an error if a task has none left).
        question_prefix: put before every question (reference: "Answer with 'Yes' or 'No' only. ").
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None, *,
                 tasks: Sequence[str | ClassificationTask] | None = None, split: str = "train",
                 held_out: Sequence[str] | None = None,
                 paraphrases: str | os.PathLike[str] | None = None, context_format: str = "plain",
                 layer_percents: Sequence[float] = (25, 50, 75), single_fraction: float = 2 / 3,
                 end_offsets: Sequence[int] = (1, 1), window_sizes: Sequence[int] = (1, 50),
                 test_fraction: float = 0.1, max_context_tokens: int = 512,
                 question_prefix: str = "Answer with 'Yes' or 'No' only. ", name: str = "classification") -> None:
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}; expected one of {list(SPLITS)}.")
        if context_format not in ("plain", "chat"):
            raise ConfigError(f"context_format={context_format!r}; expected 'plain' or 'chat'.")
        if not 0 <= single_fraction <= 1 or not 0 < test_fraction < 1:
            raise ConfigError(f"single_fraction={single_fraction}, test_fraction={test_fraction}; expected "
                              "0 <= single_fraction <= 1 and 0 < test_fraction < 1.")
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise DataError(f"classification data dir {str(self.data_dir)!r} does not exist; pass the folder that "
                            "holds gmt/, relations/, tense/, ... (shared/data/classification).")
        self.name, self.split, self.context_format = name, split, context_format
        self.layer_percents = check_layer_percents(layer_percents)
        self.single_fraction, self.test_fraction = float(single_fraction), float(test_fraction)
        self.end_offsets = check_range(end_offsets, "end_offsets", low=1)
        self.window_sizes = check_range(window_sizes, "window_sizes", low=1)
        self.max_context_tokens, self.question_prefix = int(max_context_tokens), question_prefix
        self.tasks = self._resolve_tasks(tasks, held_out)
        para_path = Path(paraphrases) if paraphrases is not None else (
            self.data_dir / "paraphrases" / "question.json" if self.data_dir is not None else None)
        if paraphrases is None and (para_path is None or not para_path.exists()):
            para_path = None
        para = read_json(para_path, "paraphrase file") if para_path is not None else None
        self.questions = {t.name: self._questions(t, para) for t in self.tasks}
        self.rows = {t.name: self._split_rows(t) for t in self.tasks}
        self.dropped: dict[str, str] = {}

    def _resolve_tasks(self, tasks: Sequence[str | ClassificationTask] | None,
                       held_out: Sequence[str] | None) -> list[ClassificationTask]:
        want_held_out = self.split == "held_out"
        if tasks is None:
            chosen = list(DEFAULT_TASKS.values())
        else:
            chosen = []
            for t in tasks:
                if isinstance(t, ClassificationTask):
                    chosen.append(t)
                elif t in DEFAULT_TASKS:
                    chosen.append(DEFAULT_TASKS[t])
                else:
                    raise ConfigError(f"unknown classification task {t!r}; registered tasks are "
                                      f"{sorted(DEFAULT_TASKS)} (or pass a ClassificationTask).")
        if held_out is not None:
            unknown = sorted(set(held_out) - {t.name for t in chosen} - set(DEFAULT_TASKS))
            if unknown:
                raise ConfigError(f"held_out names unknown tasks {unknown}; valid: {sorted(DEFAULT_TASKS)}.")
            chosen = [replace(t, held_out=t.name in set(held_out)) for t in chosen]
        if tasks is None:
            chosen = [t for t in chosen if t.held_out == want_held_out]
        else:
            wrong = [t.name for t in chosen if t.held_out != want_held_out]
            if wrong:
                kind = "training" if want_held_out else "held-out"
                raise ConfigError(f"split={self.split!r} but tasks {wrong} are {kind} tasks; use split="
                                  f"{'train' if want_held_out else 'held_out'!r} for them, or list them in held_out=.")
        if not chosen:
            raise ConfigError(f"no classification tasks for split={self.split!r}; pass tasks=[...].")
        return chosen

    def _questions(self, task: ClassificationTask, para: Mapping[str, Any] | None) -> Any:
        found = _lookup(para, task.paraphrase_key)
        q = found if found else task.questions
        if task.mode == "truth" and not (isinstance(q, Sequence) and q and all(isinstance(x, str) for x in q)):
            raise DataError(f"task {task.name!r}: truth questions must be a list of strings; got {str(q)[:100]!r}.")
        if task.mode == "label" and isinstance(q, Sequence) and any("{}" not in x for x in q):
            raise DataError(f"task {task.name!r}: label questions must have a '{{}}' slot for the class, or be a "
                            "mapping class -> questions.")
        return q

    def _split_rows(self, task: ClassificationTask) -> dict[str, list[_Row]]:
        by_class: dict[str, list[_Row]] = {}
        all_rows = load_rows(task, self.data_dir)
        if task.mode == "truth" and task.yes_class not in {r.cls for r in all_rows}:
            raise DataError(f"task {task.name!r}: yes_class={task.yes_class!r} is not among its classes "
                            f"{sorted({r.cls for r in all_rows})}; map the labels (labels=) or set yes_class.")
        for row in all_rows:
            is_test = stable_unit("split", task.name, row.key) < self.test_fraction
            if self.split == "held_out" or is_test == (self.split == "test"):
                by_class.setdefault(row.cls, []).append(row)
        q = self.questions[task.name]
        if task.mode == "label" and isinstance(q, Mapping):
            missing = sorted(set(by_class) - set(q))
            if missing:
                raise DataError(f"task {task.name!r}: no questions for classes {missing}; the question mapping "
                                f"has {sorted(q)}.")
        return by_class

    def _encode(self, tokenizer: Any, text: str) -> tuple[tuple[int, ...], tuple[int, int]]:
        """Token ids of the context and the ``[start, end)`` span of the text's own tokens in them."""
        return encode_with_span(tokenizer, text, self.context_format)

    def _positions(self, span: tuple[int, int], rng: Random) -> tuple[int, ...]:
        start, stop = span
        end = max(stop - rng.randint(*self.end_offsets), start)
        if rng.random() < self.single_fraction:
            return (end,)
        width = min(rng.randint(*self.window_sizes), end - start + 1)
        return tuple(range(end - width + 1, end + 1))

    def _question(self, task: ClassificationTask, asked: str, rng: Random) -> str:
        q = self.questions[task.name]
        options = q[asked] if isinstance(q, Mapping) else q
        text = options[rng.randrange(len(options))]
        return self.question_prefix + (text.format(asked) if task.mode == "label" and "{}" in text else text)

    def examples(self, tokenizer: Any, rng: Random) -> Iterator[TrainingExample]:
        """Stream balanced examples forever, deterministically given ``rng``."""
        cache: dict[str, tuple[tuple[int, ...], tuple[int, int]] | None] = {}
        rows = {name: {c: list(r) for c, r in by_class.items() if r} for name, by_class in self.rows.items()}
        live = {t.name: t for t in self.tasks if rows[t.name]}
        for t in self.tasks:
            if t.name not in live:
                self.dropped[t.name] = f"no rows in split {self.split!r}"
        while True:
            if not live:
                raise DataError(f"no classification task has usable rows for split={self.split!r} "
                                f"({self.dropped}); use shorter texts, raise max_context_tokens, or other tasks.")
            groups = sorted({t.group for t in live.values()})
            group = groups[rng.randrange(len(groups))]
            names = sorted(n for n, t in live.items() if t.group == group)
            task = live[names[rng.randrange(len(names))]]
            classes = sorted(rows[task.name])
            if task.mode == "truth":
                want_yes = rng.random() < 0.5
                pool = [c for c in classes if (c == task.yes_class) == want_yes] or classes
                cls = pool[rng.randrange(len(pool))]
                answer, asked = (YES if cls == task.yes_class else NO), cls
            else:
                cls = classes[rng.randrange(len(classes))]
                others = sorted(set(self._all_classes(task)) - {cls})
                if rng.random() < 0.5 or not others:
                    answer, asked = YES, cls
                else:
                    answer, asked = NO, others[rng.randrange(len(others))]
            pool_rows = rows[task.name][cls]
            index = rng.randrange(len(pool_rows))
            row = pool_rows[index]
            if row.text not in cache:
                ids, span = self._encode(tokenizer, row.text)
                cache[row.text] = (ids, span) if 0 < len(ids) <= self.max_context_tokens else None
            encoded = cache[row.text]
            if encoded is None:  # too long for max_context_tokens: drop the row, and the task when none is left
                pool_rows[index] = pool_rows[-1]
                pool_rows.pop()
                if not pool_rows:
                    del rows[task.name][cls]
                if not rows[task.name]:
                    del live[task.name]
                    self.dropped[task.name] = (f"every context is longer than max_context_tokens="
                                               f"{self.max_context_tokens}")
                continue
            ids, span = encoded
            yield TrainingExample(
                context_ids=ids, positions=self._positions(span, rng),
                layer_percent=self.layer_percents[rng.randrange(len(self.layer_percents))],
                question=self._question(task, asked, rng), answer=answer, source=f"{self.name}:{task.name}",
                meta={"task": task.name, "group": task.group, "label": cls, "asked": asked, "split": self.split,
                      "held_out_task": task.held_out, "text": row.text})

    def _all_classes(self, task: ClassificationTask) -> list[str]:
        q = self.questions[task.name]
        if isinstance(q, Mapping):
            return sorted(q)
        return sorted(set(task.labels.values()) or set(self.rows[task.name]))

    def summary(self) -> dict[str, Any]:
        """Rows per task and class in this split (for the oracle card)."""
        return {"split": self.split, "tasks": {t.name: {c: len(r) for c, r in sorted(self.rows[t.name].items())}
                                               for t in self.tasks}, "dropped": dict(self.dropped)}
