"""Text sources: where context-prediction documents come from.

A text source yields *documents* as token ids of the target's tokenizer,
exactly as the target will see them: plain text is tokenized as-is (the
tokenizer's own special tokens, as ``ao.capture(..., chat=False)`` does), chat
dialogues go through the target's chat template. Sources take paths (or a hub
dataset id when online); nothing here reads a fixed data folder.

>>> from transformers import AutoTokenizer
>>> from activation_oracles.embedded import embedded_dir
>>> tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
>>> src = TextListSource(["The cat sat on the mat.", [{"role": "user", "content": "Hi!"}]])
>>> [tok.decode(ids)[:16] for ids in src.documents(tok)]
['The cat sat on t', '<|im_start|>syst']

Readers: :class:`TextListSource` (in memory), :class:`PlainTextSource` (text
files, split into paragraphs, lines, or whole files), :class:`JsonlSource` (a
text field per line), :class:`CsvColumnSource` (one CSV column),
:class:`ChatSource` (JSON/JSONL dialogues rendered with the chat template),
:class:`HFDatasetSource` (a Hugging Face dataset id; needs the network,
and fails fast with ``OfflineError`` when offline). ``ao``'s on-policy
rollouts (:mod:`activation_oracles.training.on_policy`) are a source too.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from activation_oracles.chat import render_text
from activation_oracles.errors import ConfigError, DataError, OfflineError

Messages = list[dict[str, str]]
PathLike = str | os.PathLike[str]


@runtime_checkable
class TextSource(Protocol):
    """Anything that yields documents as token ids of the given tokenizer, in a fixed order."""

    name: str

    def documents(self, tokenizer: Any) -> Iterator[list[int]]:
        ...


# --------------------------------------------------------------------------- encoding helpers

def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of plain text, with the tokenizer's default special tokens (as ``capture(chat=False)``)."""
    return list(tokenizer(text)["input_ids"])


def encode_chat(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a dialogue through the tokenizer's chat template, with no default system prompt."""
    return list(tokenizer(render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt),
                          add_special_tokens=False)["input_ids"])


def render_chat(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool = False) -> str:
    """The chat-template text of a dialogue as training reads it: never the template's default system prompt.

    A dialogue without a system turn gets an explicit empty one where the template would fill
    in its default (:func:`activation_oracles.chat.with_system`): the default carries nothing
    about the input and would be most of a short context.
    """
    return render_text(tokenizer, messages, system_prompt="", add_generation_prompt=add_generation_prompt)


def check_messages(obj: Any, where: str) -> Messages:
    """Validate a dialogue: a non-empty list of ``{"role", "content"}`` dicts with string content."""
    if not isinstance(obj, list) or not obj or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in obj):
        raise DataError(f"{where}: expected a dialogue, a non-empty list of {{'role': str, 'content': str}} "
                        f"messages; got {str(obj)[:120]!r}. Fix the record or choose the right field.")
    return [{"role": m["role"], "content": m["content"]} for m in obj]


def _as_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise DataError("no data files given; pass at least one path.")
    return [Path(p).expanduser() for p in items]


def check_file(path: PathLike, what: str = "data file") -> Path:
    """The path, if it names a non-empty regular file; otherwise a :class:`DataError` saying how to fix it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} {str(p)!r} does not exist; check the path (it is resolved relative to "
                        f"{os.getcwd()!r}).")
    if not p.is_file():
        raise DataError(f"{what} {str(p)!r} is not a regular file; pass the file itself, not a directory.")
    if p.stat().st_size == 0:
        raise DataError(f"{what} {str(p)!r} is empty; expected at least one record.")
    return p


def read_json(path: PathLike, what: str = "JSON file") -> Any:
    """Load a JSON file with typed errors for missing, empty or malformed files."""
    p = check_file(path, what)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {str(p)!r} is not valid JSON ({exc}); expected a JSON document.") from None


def read_csv_rows(path: PathLike, required: Iterable[str], what: str = "CSV file") -> list[dict[str, str]]:
    """Rows of a CSV file with a header; every ``required`` column must be in the header."""
    p = check_file(path, what)
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(f"{what} {str(p)!r} has no column(s) {missing}; its columns are {columns}. "
                            "Name one of those columns in the task or source configuration.")
        rows = list(reader)
    if not rows:
        raise DataError(f"{what} {str(p)!r} has a header but no rows; expected at least one record.")
    return rows


def _jsonl_objects(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n} is not valid JSON ({exc}); expected one JSON value per line.") \
                        from None


def _is_dialogue(obj: Any) -> bool:
    return isinstance(obj, list) and bool(obj) and all(isinstance(m, dict) and "role" in m for m in obj)


# --------------------------------------------------------------------------- sources

class TextListSource:
    """Documents from an in-memory list of strings (plain text) or dialogues (chat-templated)."""

    def __init__(self, items: Sequence[str | Messages], *, name: str = "texts") -> None:
        if not items:
            raise DataError("TextListSource got an empty list; pass at least one text.")
        self.items = list(items)
        self.name = name

    def documents(self, tokenizer: Any) -> Iterator[list[int]]:
        for i, item in enumerate(self.items):
            if isinstance(item, str):
                yield encode_plain(tokenizer, item)
            else:
                yield encode_chat(tokenizer, check_messages(item, f"{self.name}[{i}]"))


class PlainTextSource:
    """Plain text files split into documents: ``"paragraph"`` (blank-line separated), ``"line"`` or ``"file"``."""

    SPLITS = ("paragraph", "line", "file")

    def __init__(self, paths: PathLike | Sequence[PathLike], *, split: str = "paragraph",
                 name: str = "plain_text") -> None:
        if split not in self.SPLITS:
            raise ConfigError(f"split={split!r}; expected one of {list(self.SPLITS)}.")
        self.paths = [check_file(p, "text file") for p in _as_paths(paths)]
        self.split = split
        self.name = name

    def texts(self) -> Iterator[str]:
        for p in self.paths:
            text = p.read_text(encoding="utf-8")
            if self.split == "file":
                parts: Iterable[str] = [text]
            elif self.split == "line":
                parts = text.splitlines()
            else:
                parts = [" ".join(block.split("\n")) for block in text.replace("\r\n", "\n").split("\n\n")]
            for part in parts:
                if part.strip():
                    yield part.strip()

    def documents(self, tokenizer: Any) -> Iterator[list[int]]:
        for text in self.texts():
            yield encode_plain(tokenizer, text)


class JsonlSource:
    """One document per JSON line, from ``field`` (a string; a dialogue list is chat-templated)."""

    def __init__(self, paths: PathLike | Sequence[PathLike], *, field: str = "text", name: str = "jsonl") -> None:
        self.paths = [check_file(p, "JSONL file") for p in _as_paths(paths)]
        self.field = field
        self.name = name

    def records(self) -> Iterator[tuple[str, Any]]:
        for p in self.paths:
            for where, obj in _jsonl_objects(p):
                if not isinstance(obj, dict) or self.field not in obj:
                    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                    raise DataError(f"{where} has no field {self.field!r} (it has {keys}); pass "
                                    "field=<the text field> to the source.")
                yield where, obj[self.field]

    def documents(self, tokenizer: Any) -> Iterator[list[int]]:
        for where, value in self.records():
            if isinstance(value, str):
                if value.strip():
                    yield encode_plain(tokenizer, value)
            else:
                yield encode_chat(tokenizer, check_messages(value, where))


class CsvColumnSource:
    """One document per row, from one column of a CSV file with a header."""

    def __init__(self, paths: PathLike | Sequence[PathLike], column: str, *, name: str = "csv") -> None:
        self.paths = [check_file(p, "CSV file") for p in _as_paths(paths)]
        self.column = column
        self.name = name
        for p in self.paths:  # fail at construction, not mid-training, when the column is wrong
            with p.open(newline="", encoding="utf-8") as f:
                columns = list(csv.DictReader(f).fieldnames or [])
            if column not in columns:
                raise DataError(f"CSV file {str(p)!r} has no column {column!r}; its columns are {columns}.")

    def documents(self, tokenizer: Any) -> Iterator[list[int]]:
        for p in self.paths:
            for row in read_csv_rows(p, [self.column]):
                text = (row.get(self.column) or "").strip()
                if text:
                    yield encode_plain(tokenizer, text)


class ChatSource:
    """Dialogues from a JSON list or JSONL file, rendered with the target's chat template.

    Each record is either a dialogue itself or an object holding one under ``field``
    (``"messages"`` by default; lmsys-style ``"conversation"`` works too).
    """

    def __init__(self, paths: PathLike | Sequence[PathLike], *, field: str = "messages",
                 add_generation_prompt: bool = False, name: str = "chat") -> None:
        self.paths = [check_file(p, "chat file") for p in _as_paths(paths)]
        self.field = field
        self.add_generation_prompt = add_generation_prompt
        self.name = name

    def dialogues(self) -> Iterator[Messages]:
        for p in self.paths:
            if p.suffix == ".json":
                data = read_json(p, "chat file")
                records = data if isinstance(data, list) and not _is_dialogue(data) else [data]
                items: Iterable[tuple[str, Any]] = [(f"{p}[{i}]", r) for i, r in enumerate(records)]
            else:
                items = _jsonl_objects(p)
            for where, rec in items:
                if isinstance(rec, dict):
                    if self.field not in rec:
                        raise DataError(f"{where} has no field {self.field!r} (it has {sorted(rec)}); pass "
                                        "field=<the dialogue field>.")
                    rec = rec[self.field]
                yield check_messages(rec, where)

    def documents(self, tokenizer: Any) -> Iterator[list[int]]:
        for messages in self.dialogues():
            yield encode_chat(tokenizer, messages, add_generation_prompt=self.add_generation_prompt)


class HFDatasetSource:
    """A Hugging Face dataset id, streamed; ``field`` holds text (or a dialogue, chat-templated).

    Needs the network; offline (or with ``HF_HUB_OFFLINE``/
    ``HF_DATASETS_OFFLINE`` set) it raises :class:`OfflineError` at once instead of hanging.
    """

    def __init__(self, dataset_id: str, *, split: str = "train", field: str = "text", config: str | None = None,
                 streaming: bool = True, limit: int | None = None, name: str | None = None) -> None:
        if not dataset_id or not isinstance(dataset_id, str):
            raise ConfigError(f"dataset_id={dataset_id!r}; expected a hub id like 'HuggingFaceFW/fineweb'.")
        self.dataset_id, self.split, self.field, self.config = dataset_id, split, field, config
        self.streaming, self.limit = streaming, limit
        self.name = name or dataset_id

    def _load(self) -> Any:
        offline_env = any(os.environ.get(k, "").lower() in {"1", "true", "yes", "on"}
                          for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        if offline_env or not _hub_reachable():  # checked before the (slow) import: fail fast
            raise OfflineError(f"Hugging Face dataset {self.dataset_id!r} needs the hub, which cannot be reached "
                               "(offline, or HF_HUB_OFFLINE is set). Export it to a JSONL/CSV/text file on a "
                               "connected machine and use JsonlSource, CsvColumnSource or PlainTextSource.")
        try:
            import datasets
        except ImportError:
            raise ConfigError("HFDatasetSource needs the 'datasets' package; pip install datasets, or save the "
                              "data to a local JSONL file and use JsonlSource.") from None
        return datasets.load_dataset(self.dataset_id, self.config, split=self.split, streaming=self.streaming)

    def documents(self, tokenizer: Any) -> Iterator[list[int]]:
        for n, rec in enumerate(self._load()):
            if self.limit is not None and n >= self.limit:
                return
            if self.field not in rec:
                raise DataError(f"dataset {self.dataset_id!r} records have no field {self.field!r} (they have "
                                f"{sorted(rec)}); pass field=<the text field>.")
            value = rec[self.field]
            if isinstance(value, str):
                if value.strip():
                    yield encode_plain(tokenizer, value)
            else:
                yield encode_chat(tokenizer, check_messages(value, f"{self.dataset_id}[{n}]"))


def _hub_reachable() -> bool:
    from activation_oracles.models import _hub_reachable as reachable

    return reachable()


# --------------------------------------------------------------------------- helpers shared by the builders

def check_layer_percents(layer_percents: Sequence[float]) -> tuple[float, ...]:
    """Validate source depths: a non-empty list of percents inside (0, 100)."""
    values = tuple(float(p) for p in layer_percents) if isinstance(layer_percents, Iterable) else ()
    if not values:
        raise ConfigError(f"layer_percents={layer_percents!r}; expected a non-empty list such as (25, 50, 75).")
    bad = [p for p in values if not 0 < p < 100]
    if bad:
        raise ConfigError(f"layer_percents {bad} are outside (0, 100); pass depths in percent, e.g. (25, 50, 75).")
    return values


def check_range(value: Sequence[int], what: str, *, low: int = 0) -> tuple[int, int]:
    """Validate an inclusive integer range ``(min, max)`` with ``low <= min <= max``."""
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r}; expected an inclusive range (min, max) of two integers.") from None
    if not low <= lo <= hi:
        raise ConfigError(f"{what}=({lo}, {hi}); expected {low} <= min <= max.")
    return lo, hi


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` alone (SHA-256; no dependence on PYTHONHASHSEED)."""
    import hashlib

    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64
