"""Question families: labelled texts asked about in many ways, with yes/no and open answers.

The statement tasks of :mod:`.classification` all ask "Is this statement true?": an
oracle trained on them learns one readout per task, not to answer the question it is
asked. A *family* is a set of texts with a class each (a language, a sentiment, a topic,
a kind of entity, a tense, a text type) and three kinds of question about it:

* **yes/no**: "Is this text written in French?" (Yes iff the text's class is the one named);
* **negated yes/no**: "Is this text written in a language other than French?" (the answer
  flips), so the answer depends on the question and not only on the input;
* **open**: "Which language is this text in?" -> "French".

Each kind is asked in several phrasings. Every family builds its texts offline: faker's
locales (language, entity type), VADER's sentiment lexicon, TruthfulQA's categories (topic),
the tense file of the classification data, the relation files' sentences (mention: which
person or country a sentence is about). Rows split into train/test by a hash of the
text, so held-out rows of a family exist and never move between runs. Positions are the
text's own tokens (its last token, or a window ending there), never template tokens.
(A little over 400 lines: the six families' builders share one question and position machinery,
and each is a few lines of data reading that would gain nothing from a module of its own.)

>>> from random import Random
>>> from transformers import AutoTokenizer
>>> from activation_oracles.embedded import embedded_dir
>>> tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
>>> ex = next(QuestionFamilies(families=["language"]).examples(tok, Random(0)))
>>> ex.meta["family"], ex.meta["kind"] in ("yes_no", "negated", "open")
('language', True)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import ConfigError, DataError

from .classification import encode_with_span
from .example import TrainingExample
from .sources import check_layer_percents, check_range, stable_unit

YES, NO = "Yes", "No"
KINDS = ("yes_no", "negated", "open")


@dataclass(frozen=True)
class Family:
    """A labelled text set and the questions asked about it.

    ``yes_no`` and ``negated`` templates have one ``{}`` slot for a class's display name;
    ``open`` questions are answered with the display name itself (``answers`` maps a class
    to it; default: the class capitalised).
    """

    name: str
    yes_no: tuple[str, ...]
    negated: tuple[str, ...]
    open: tuple[str, ...]
    rows: Callable[[Path | None], list[tuple[str, str]]]
    names: Mapping[str, str] | None = None  # class -> how questions name it (default: the class)
    answers: Mapping[str, str] | None = None  # class -> open answer (default: the class capitalised)
    needs_data: bool = False
    # A "No" question never names a class whose name the text contains (entity names: a sentence
    # about a landmark may also name another entity of the family).
    named_in_text: bool = False

    def name_of(self, cls: str) -> str:
        return (self.names or {}).get(cls, cls)

    def answer_of(self, cls: str) -> str:
        found = (self.answers or {}).get(cls)
        return found if found is not None else cls[:1].upper() + cls[1:]


# -- rows ----------------------------------------------------------------------------------------------

LANGUAGES = {"en_US": "English", "fr_FR": "French", "de_DE": "German", "es_ES": "Spanish", "it_IT": "Italian",
             "nl_NL": "Dutch", "pl_PL": "Polish", "ru_RU": "Russian", "cs_CZ": "Czech", "da_DK": "Danish",
             "el_GR": "Greek", "zh_CN": "Chinese", "ja_JP": "Japanese", "ar_AA": "Arabic", "he_IL": "Hebrew",
             "vi_VN": "Vietnamese"}
ROWS_PER_CLASS = 240


def _faker(locale: str, seed: int) -> Any:
    try:
        from faker import Faker
    except ImportError:  # pragma: no cover - a dependency of the project
        raise ConfigError("the language and entity families need the 'faker' package; pip install faker.") from None
    fake = Faker(locale)
    fake.seed_instance(seed)
    return fake


def language_rows(_: Path | None = None) -> list[tuple[str, str]]:
    """Sentences of faker's word lists in 16 languages (no real meaning, a clear language)."""
    rows = []
    for locale, language in LANGUAGES.items():
        fake = _faker(locale, 1000 + len(rows))
        seen: set[str] = set()
        for _ in range(4 * ROWS_PER_CLASS):
            text = fake.sentence(nb_words=fake.random_int(5, 11))
            if text not in seen:
                seen.add(text)
                rows.append((text, language))
            if len(seen) >= ROWS_PER_CLASS:
                break
    return rows


ENTITY_KINDS = {"name": "person's name", "city": "city", "company": "company", "date": "date", "email": "email address",
                "phone_number": "phone number", "job": "job", "color_name": "colour", "country": "country",
                "street_address": "street address"}
_ENTITY_NAMES = {k: ("an " if k[0] in "aeiou" else "a ") + k for k in ENTITY_KINDS.values()}


def entity_rows(_: Path | None = None) -> list[tuple[str, str]]:
    """Short faker values (names, cities, companies, dates, ...) labelled by their kind."""
    fake = _faker("en_US", 7)
    rows = []
    for method, kind in ENTITY_KINDS.items():
        seen: set[str] = set()
        for _ in range(4 * ROWS_PER_CLASS):
            text = str(getattr(fake, method)()).replace("\n", ", ")
            if text not in seen:
                seen.add(text)
                rows.append((text, kind))
            if len(seen) >= ROWS_PER_CLASS:
                break
    return rows


_SENTIMENT_TEMPLATES = ('My review in one word: "{w}".', "All she could say about the evening was: {w}.",
                        "Reading the letter, he felt nothing but {w}.", "The critics called the film {w}.",
                        "Honestly, the whole trip was {w}.", "Our neighbours describe the new owner as {w}.")


def sentiment_rows(_: Path | None = None) -> list[tuple[str, str]]:
    """Short sentences around VADER lexicon words with a clear valence (|valence| >= 1.8)."""
    lexicon = _vader_lexicon()
    rows = []
    for word, valence in sorted(lexicon.items()):
        if not word.isalpha() or len(word) < 4 or abs(valence) < 1.8:
            continue
        template = _SENTIMENT_TEMPLATES[int(stable_unit("sentiment", word) * len(_SENTIMENT_TEMPLATES))]
        rows.append((template.format(w=word), "positive" if valence > 0 else "negative"))
    return rows


def _vader_lexicon() -> dict[str, float]:
    import importlib.util

    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None or spec.origin is None:
        raise ConfigError("the sentiment family needs the 'vaderSentiment' package (its lexicon file); "
                          "pip install vaderSentiment.")
    path = Path(spec.origin).parent / "vader_lexicon.txt"  # read as data: the package itself is never imported
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


TOPICS = {"Health": "health", "Law": "law", "Economics": "economics", "Fiction": "fiction", "History": "history",
          "Paranormal": "the paranormal", "Conspiracies": "conspiracies", "Language": "language",
          "Psychology": "psychology", "Nutrition": "nutrition", "Religion": "religion", "Politics": "politics",
          "Finance": "finance", "Science": "science", "Weather": "weather", "Superstitions": "superstitions",
          "Myths and Fairytales": "myths and fairytales", "Education": "education", "Sociology": "society"}


def topic_rows(data_dir: Path | None) -> list[tuple[str, str]]:
    """TruthfulQA questions labelled by their category (19 topical categories)."""
    path = _data_file(data_dir, "truthfulqa/TruthfulQA.csv", "topic")
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["Question"].strip(), TOPICS[r["Category"]]) for r in csv.DictReader(f)
                if r.get("Category") in TOPICS and (r.get("Question") or "").strip()]


def text_type_rows(data_dir: Path | None) -> list[tuple[str, str]]:
    """TruthfulQA questions and best answers: a question or a statement."""
    path = _data_file(data_dir, "truthfulqa/TruthfulQA.csv", "text_type")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            q, a = (r.get("Question") or "").strip(), (r.get("Best Answer") or "").strip()
            if q.endswith("?"):
                rows.append((q, "question"))
            if a and not a.endswith("?"):
                rows.append((a if a.endswith(".") else a + ".", "statement"))
    return rows


def tense_rows(data_dir: Path | None) -> list[tuple[str, str]]:
    """The tense file's sentences labelled past / present / future."""
    path = _data_file(data_dir, "classification/tense/tense.csv", "tense")
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["sentence"].strip(), r["tense"].split()[0]) for r in csv.DictReader(f)
                if (r.get("sentence") or "").strip() and (r.get("tense") or "").split()]


# Names of the held-out headline tasks (classification.py): texts that mention them are never
# built into the mention family, and they are never asked about, so those tasks stay unseen.
HELD_OUT_NAMES = ("trump", "obama", "china", "chinese", "beijing")
# Relation files whose sentences name one entity, and which side of the relation it is.
_MENTION_RELATIONS = {"factual/person_plays_instrument": "subject", "factual/person_plays_position_in_sport": "subject",
                      "factual/person_plays_pro_sport": "subject", "factual/superhero_person": "subject",
                      "factual/superhero_archnemesis": "subject", "factual/country_currency": "subject",
                      "factual/country_language": "subject", "factual/food_from_country": "object",
                      "factual/landmark_in_country": "object"}


def mention_rows(data_dir: Path | None) -> list[tuple[str, str]]:
    """Relation sentences labelled by the person or country they are about ("Toko Yasuda plays the guitar.")."""
    import json

    rows = []
    for rel, side in _MENTION_RELATIONS.items():
        path = _data_file(data_dir, f"classification/relations/{rel}.json", "mention")
        data = json.loads(path.read_text(encoding="utf-8"))
        templates = [t for t in data.get("prompt_templates", []) if "{}" in t]
        for i, sample in enumerate(data.get("samples", [])):
            subject, obj = str(sample.get("subject", "")).strip(), str(sample.get("object", "")).strip()
            if not subject or not obj or not templates:
                continue
            text = f"{templates[i % len(templates)].format(subject)} {obj}."
            if any(n in text.lower() for n in HELD_OUT_NAMES):
                continue
            rows.append((text, subject if side == "subject" else obj))
    return rows


def _data_file(data_dir: Path | None, rel: str, family: str) -> Path:
    if data_dir is None:
        raise ConfigError(f"the {family!r} family reads {rel} under the data folder; pass data_dir=<folder that "
                          "holds classification/ and truthfulqa/> (shared/data).")
    path = data_dir / rel
    if not path.is_file():
        raise DataError(f"the {family!r} family needs {str(path)!r}, which does not exist; pass the data folder "
                        "that holds it, or leave the family out (families=[...]).")
    return path


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("language",
           ("Is this text written in {}?", "Is this {}?", "Is the language of this text {}?"),
           ("Is this text written in a language other than {}?", "Is this text not in {}?"),
           ("Which language is this text in?", "What language is this?", "In what language is this written?"),
           language_rows),
    Family("entity_type",
           ("Is this {}?", "Does this text give {}?", "Is this text {}?"),
           ("Is this something other than {}?", "Is this text not {}?"),
           ("What kind of thing is this?", "What type of entity is this text?"),
           entity_rows, names=_ENTITY_NAMES),
    Family("sentiment",
           ("Is the sentiment of this text {}?", "Is this text {} in tone?", "Does this express a {} feeling?"),
           ("Is the sentiment of this text not {}?", "Is this text anything but {} in tone?"),
           ("What is the sentiment of this text?", "Is the tone positive or negative?"),
           sentiment_rows),
    Family("topic",
           ("Is this text about {}?", "Is this question about {}?", "Does this text concern {}?"),
           ("Is this text not about {}?", "Is this about something other than {}?"),
           ("What is this text about?", "What topic is this?", "Which subject does this concern?"),
           topic_rows, needs_data=True),
    Family("text_type",
           ("Is this text a {}?", "Is this a {}?"),
           ("Is this text something other than a {}?", "Is this not a {}?"),
           ("Is this a question or a statement?", "What kind of sentence is this?"),
           text_type_rows, needs_data=True),
    Family("tense",
           ("Is this sentence in the {} tense?", "Is this written in the {} tense?", "Does this describe the {}?"),
           ("Is this sentence not in the {} tense?", "Is this written in a tense other than the {}?"),
           ("What tense is this sentence in?", "Which tense is used here?"),
           tense_rows, needs_data=True),
    Family("mention",
           ("Is this text about {}?", "Does this text mention {}?", "Is {} mentioned here?", "Is this about {}?"),
           ("Is this text not about {}?", "Is this text about someone or something other than {}?"),
           ("Who or what is this text about?", "Which name does this text mention?"),
           mention_rows, needs_data=True, named_in_text=True),
)}


class QuestionFamilies:
    """Builder of yes/no, negated and open questions over :data:`FAMILIES`.

    Args:
        data_dir: the data folder (``shared/data``: ``classification/``, ``truthfulqa/``); needed by the
            topic, text_type and tense families only.
        families: names from :data:`FAMILIES`; default: all of them (those needing data only when
            ``data_dir`` is given).
        split: ``"train"`` or ``"test"`` (the rows hashed out of training).
        kind_weights: shares of yes/no, negated and open questions.
        family_weights: relative sampling weight per family name (default 1 each), e.g. to
            down-weight a family whose probe ceiling is low.
        single_fraction / window_sizes: as in :class:`~.classification.Classification`.
        context_format: ``"plain"`` or ``"chat"`` (no default system prompt).
        test_fraction: share of rows hashed into the test split.
        yes_no_prefix / open_prefix: put before yes/no and open questions.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *, families: Sequence[str] | None = None,
                 split: str = "train", kind_weights: Sequence[float] = (0.45, 0.25, 0.3),
                 family_weights: Mapping[str, float] | None = None,
                 layer_percents: Sequence[float] = (25, 50, 75), single_fraction: float = 2 / 3,
                 window_sizes: Sequence[int] = (1, 24), context_format: str = "plain", test_fraction: float = 0.1,
                 max_context_tokens: int = 128, yes_no_prefix: str = "Answer with 'Yes' or 'No' only. ",
                 open_prefix: str = "Answer in a word or two. ", name: str = "families") -> None:
        if split not in ("train", "test"):
            raise ConfigError(f"split={split!r}; expected 'train' or 'test'.")
        if context_format not in ("plain", "chat"):
            raise ConfigError(f"context_format={context_format!r}; expected 'plain' or 'chat'.")
        weights = tuple(float(w) for w in kind_weights)
        if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"kind_weights={list(kind_weights)}; expected three shares >= 0 (yes/no, negated, "
                              "open) with a positive sum.")
        if not 0 <= single_fraction <= 1 or not 0 < test_fraction < 1:
            raise ConfigError(f"single_fraction={single_fraction}, test_fraction={test_fraction}; expected "
                              "0 <= single_fraction <= 1 and 0 < test_fraction < 1.")
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise DataError(f"data dir {str(self.data_dir)!r} does not exist; pass the folder that holds "
                            "classification/ and truthfulqa/ (shared/data).")
        if families is None:
            names = [n for n, f in FAMILIES.items() if self.data_dir is not None or not f.needs_data]
        else:
            names = list(families)
            unknown = sorted(set(names) - set(FAMILIES))
            if unknown or not names:
                raise ConfigError(f"families={names}: unknown {unknown}; expected a non-empty list of "
                                  f"{sorted(FAMILIES)}.")
        self.name, self.split, self.context_format = name, split, context_format
        self.kind_weights = weights
        self.layer_percents = check_layer_percents(layer_percents)
        self.single_fraction, self.test_fraction = float(single_fraction), float(test_fraction)
        self.window_sizes = check_range(window_sizes, "window_sizes", low=1)
        self.max_context_tokens = int(max_context_tokens)
        self.yes_no_prefix, self.open_prefix = yes_no_prefix, open_prefix
        self.families = [FAMILIES[n] for n in names]
        fw = dict(family_weights or {})
        bad = {k: v for k, v in fw.items() if k not in names or not isinstance(v, (int, float)) or v < 0}
        if bad or (fw and sum(fw.get(n, 1.0) for n in names) <= 0):
            raise ConfigError(f"family_weights={fw}: expected weights >= 0 (positive in sum) for families among "
                              f"{names}; bad entries {bad}.")
        self.family_weights = [float(fw.get(n, 1.0)) for n in names]
        self.rows = {f.name: self._split_rows(f) for f in self.families}

    def _split_rows(self, family: Family) -> dict[str, list[str]]:
        by_class: dict[str, list[str]] = {}
        for text, cls in family.rows(self.data_dir):
            if (stable_unit("family-split", family.name, text) < self.test_fraction) == (self.split == "test"):
                by_class.setdefault(cls, []).append(text)
        by_class = {c: t for c, t in by_class.items() if t}
        if len(by_class) < 2:
            raise DataError(f"family {family.name!r} has {len(by_class)} class(es) with rows in split "
                            f"{self.split!r}; it needs at least two.")
        return by_class

    def summary(self) -> dict[str, Any]:
        """Rows per family and class in this split (for the oracle card)."""
        return {"split": self.split, "families": {f: {c: len(t) for c, t in sorted(r.items())}
                                                  for f, r in self.rows.items()}}

    def _positions(self, span: tuple[int, int], rng: Random) -> tuple[int, ...]:
        start, stop = span
        end = stop - 1
        if rng.random() < self.single_fraction:
            return (end,)
        width = min(rng.randint(*self.window_sizes), end - start + 1)
        return tuple(range(end - width + 1, end + 1))

    def examples(self, tokenizer: Any, rng: Random) -> Iterator[TrainingExample]:
        """Stream examples forever, deterministically given ``rng``: family, class and question kind uniform."""
        cache: dict[str, tuple[tuple[int, ...], tuple[int, int]] | None] = {}
        total = sum(self.kind_weights)
        cum = [sum(self.kind_weights[:i + 1]) / total for i in range(3)]
        while True:
            family = rng.choices(self.families, weights=self.family_weights)[0]
            rows = self.rows[family.name]
            classes = sorted(rows)
            cls = classes[rng.randrange(len(classes))]
            texts = rows[cls]
            text = texts[rng.randrange(len(texts))]
            if text not in cache:
                ids, span = encode_with_span(tokenizer, text, self.context_format)
                cache[text] = (ids, span) if len(ids) <= self.max_context_tokens else None
            encoded = cache[text]
            if encoded is None:
                continue
            u = rng.random()
            kind = KINDS[next(i for i, c in enumerate(cum) if u < c or i == 2)]
            if kind == "open":
                templates, asked = family.open, cls
                question = self.open_prefix + templates[rng.randrange(len(templates))]
                answer = family.answer_of(cls)
            else:
                others = [c for c in classes if c != cls]
                if family.named_in_text:
                    low = text.lower()
                    others = [c for c in others if family.name_of(c).lower() not in low]
                asked = cls if rng.random() < 0.5 else others[rng.randrange(len(others))]
                templates = family.yes_no if kind == "yes_no" else family.negated
                question = self.yes_no_prefix + templates[rng.randrange(len(templates))].format(family.name_of(asked))
                answer = YES if (asked == cls) == (kind == "yes_no") else NO
            ids, span = encoded
            yield TrainingExample(
                context_ids=ids, positions=self._positions(span, rng),
                layer_percent=self.layer_percents[rng.randrange(len(self.layer_percents))],
                question=question, answer=answer, source=f"{self.name}:{family.name}",
                meta={"family": family.name, "task": f"family/{family.name}", "label": cls, "asked": asked,
                      "kind": kind, "split": self.split, "text": text})
