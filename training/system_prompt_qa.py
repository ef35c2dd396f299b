"""System-prompt QA (LatentQA): read a persona or goal out of the activations it leaves behind.

Each dialogue starts with an *instruction* - a system prompt (``system.json``:
``{"system", "stimulus_user", "label"}``) or a user request the assistant
accepted (``stimulus.json``: ``{"control_user", "control_model",
"stimulus_user", "label"}``; ``control_thought`` is dropped, as in the
reference) - followed by an unrelated user turn, the *stimulus*. ``qa.json``
maps each label to ``[question, answer]`` pairs about the instruction.

What goes where, precisely:

* The **target** sees the whole dialogue, instruction included, rendered with
  its own chat template (ending with the assistant header unless the dialogue
  ends with an assistant turn): the instruction is what shapes the later
  activations, so it must be in the context.
* The **oracle** never sees the instruction: no activation position points
  into it (every position is at or after the first token that starts after
  the instruction turn(s) end in the rendered text, so a token straddling the
  boundary is masked too), and its question and answer come from ``qa.json``.
  The template's default system prompt (e.g. SmolLM2's) sits before the
  instruction and is masked with it.
* Positions: with probability ``all_positions_fraction`` (1/2) every position
  after the instruction; otherwise a window of 1-3 tokens whose last token is
  1-10 tokens before the end (1 = the last token), kept after the instruction.
* ``control.json`` records (an instruction and nothing else) have no
  stimulus to read; the reference trains on them by reading the instruction
  itself. They are skipped unless ``include_control=True``, in which case their
  positions *do* cover the instruction (nothing is masked) - opt in knowingly.
* Train/test split by label (hash of the label), so test personas and goals
  are never seen in training.

>>> from random import Random
>>> from transformers import AutoTokenizer
>>> from activation_oracles.embedded import embedded_dir
>>> from activation_oracles.training.classification import find_shared_data
>>> tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
>>> data = find_shared_data()
>>> if data is not None:  # the repo's shared data (tests only; the product takes paths)
...     b = SystemPromptQA(data / "latentqa/eval/qa.json", [data / "latentqa/eval/system.json"])
...     ex = next(b.examples(tok, Random(0)))
...     assert min(ex.positions) >= ex.meta["n_masked"]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import ConfigError, DataError

from .example import TrainingExample
from .sources import check_layer_percents, check_range, read_json, render_chat, stable_unit

SPLITS = ("train", "test")


def dialogue_of(record: Any, where: str) -> tuple[list[dict[str, str]], int, str]:
    """(messages, number of leading instruction turns, format) of one LatentQA record."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with 'label' and dialogue fields; got {str(record)[:80]!r}.")
    get = lambda k: str(record.get(k) or "")  # noqa: E731
    tail = [{"role": "user", "content": get("stimulus_user")}] if get("stimulus_user") else []
    if tail and get("stimulus_model"):
        tail.append({"role": "assistant", "content": get("stimulus_model")})
    if get("system"):
        if not tail:
            raise DataError(f"{where}: a 'system' record needs a 'stimulus_user' turn to read activations from.")
        return [{"role": "system", "content": get("system")}] + tail, 1, "system"
    if get("control_user") and get("control_model") and tail:
        head = [{"role": "user", "content": get("control_user")},
                {"role": "assistant", "content": get("control_model")}]
        return head + tail, 2, "stimulus"
    if get("control_user") and not tail:
        return [{"role": "user", "content": get("control_user")}], 0, "control"
    raise DataError(f"{where}: unrecognised LatentQA record with keys {sorted(record)}; expected "
                    "{system, stimulus_user}, {control_user, control_model, stimulus_user} or {control_user}.")


def masked_length(tokenizer: Any, messages: list[dict[str, str]], n_turns: int, full_text: str,
                  full_ids: list[int]) -> int:
    """How many leading tokens of ``full_ids`` belong to (or touch) the first ``n_turns`` turns."""
    if n_turns == 0:
        return 0
    prefix = render_chat(tokenizer, messages[:n_turns], add_generation_prompt=False)
    if full_text.startswith(prefix):
        boundary = len(prefix)
    else:  # templates that render a partial dialogue differently: end at the last instruction text
        content = messages[n_turns - 1]["content"]
        at = full_text.rfind(content)
        if at < 0:
            raise DataError("the chat template does not reproduce the instruction text verbatim, so it cannot be "
                            "masked safely; use a template that keeps message text as given.")
        boundary = at + len(content)
    try:
        offsets = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return next((i for i, (start, _) in enumerate(offsets) if start >= boundary), len(full_ids))
    except (NotImplementedError, KeyError, TypeError):  # slow tokenizers have no offsets
        head = list(tokenizer(full_text[:boundary], add_special_tokens=False)["input_ids"])
        n = len(head)  # a token merged across the boundary: mask one more
        return min(len(full_ids), n if full_ids[:n] == head else n + 1)


class SystemPromptQA:
    """Builder of system-prompt QA examples from LatentQA files.

    Args:
        qa_path: ``qa.json``: ``{label: [[question, answer], ...]}``.
        dialogue_paths: ``system.json`` / ``stimulus.json`` (/ ``control.json``) files.
        split: ``"train"`` or ``"test"`` (labels hashed into ``test_fraction``).
        all_positions_fraction: share of examples reading every non-instruction position.
        window_sizes: inclusive range of window lengths for the other examples.
        end_offsets: inclusive range d; a window's last position is ``len(context) - d``.
        include_control: also use instruction-only records (not masked: see the module notes).
        add_generation_prompt: end contexts with the assistant header (the model about to answer).
    """

    def __init__(self, qa_path: str | os.PathLike[str], dialogue_paths: Sequence[str | os.PathLike[str]], *,
                 split: str = "train", test_fraction: float = 0.2, all_positions_fraction: float = 0.5,
                 window_sizes: Sequence[int] = (1, 3), end_offsets: Sequence[int] = (1, 10),
                 layer_percents: Sequence[float] = (25, 50, 75), max_context_tokens: int = 512,
                 include_control: bool = False, add_generation_prompt: bool = True,
                 name: str = "system_prompt_qa") -> None:
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}; expected one of {list(SPLITS)}.")
        if not 0 < test_fraction < 1 or not 0 <= all_positions_fraction <= 1:
            raise ConfigError(f"test_fraction={test_fraction}, all_positions_fraction={all_positions_fraction}; "
                              "expected 0 < test_fraction < 1 and 0 <= all_positions_fraction <= 1.")
        if isinstance(dialogue_paths, (str, os.PathLike)):
            dialogue_paths = [dialogue_paths]
        if not dialogue_paths:
            raise DataError("no LatentQA dialogue files given; pass system.json and/or stimulus.json paths.")
        self.name, self.split, self.test_fraction = name, split, float(test_fraction)
        self.all_positions_fraction = float(all_positions_fraction)
        self.window_sizes = check_range(window_sizes, "window_sizes", low=1)
        self.end_offsets = check_range(end_offsets, "end_offsets", low=1)
        self.layer_percents = check_layer_percents(layer_percents)
        self.max_context_tokens, self.add_generation_prompt = int(max_context_tokens), bool(add_generation_prompt)
        qa = read_json(qa_path, "LatentQA qa file")
        if not isinstance(qa, dict) or not qa:
            raise DataError(f"LatentQA qa file {str(qa_path)!r} must be a non-empty object label -> [[question, "
                            "answer], ...].")
        self.qa: dict[str, list[tuple[str, str]]] = {}
        for label, pairs in qa.items():
            ok = [(str(p[0]), str(p[1])) for p in pairs or [] if isinstance(p, (list, tuple)) and len(p) == 2]
            if ok:
                self.qa[label] = ok
        self.dialogues: dict[str, list[tuple[list[dict[str, str]], int, str]]] = {}
        self.stats = {"records": 0, "without_qa": 0, "control_skipped": 0, "other_split": 0}
        for path in dialogue_paths:
            records = read_json(path, "LatentQA dialogue file")
            if not isinstance(records, list) or not records:
                raise DataError(f"LatentQA dialogue file {str(path)!r} must be a non-empty JSON list of records.")
            for i, rec in enumerate(records):
                where = f"{Path(path).name}[{i}]"
                messages, n_turns, fmt = dialogue_of(rec, where)
                label = rec.get("label")
                if not isinstance(label, str) or not label:
                    raise DataError(f"{where} has no 'label'; every LatentQA record needs one (a qa.json key).")
                self.stats["records"] += 1
                if fmt == "control" and not include_control:
                    self.stats["control_skipped"] += 1
                elif label not in self.qa:
                    self.stats["without_qa"] += 1
                elif (stable_unit("latentqa-split", label) < self.test_fraction) != (split == "test"):
                    self.stats["other_split"] += 1
                else:
                    self.dialogues.setdefault(label, []).append((messages, n_turns, fmt))
        if not self.dialogues:
            raise DataError(f"no LatentQA dialogue in split {split!r} has question/answer pairs ({self.stats}); "
                            "check that qa.json and the dialogue files share labels.")
        self.labels = sorted(self.dialogues)

    def _encode(self, tokenizer: Any, messages: list[dict[str, str]], n_turns: int) -> tuple[tuple[int, ...], int]:
        gen = self.add_generation_prompt and messages[-1]["role"] != "assistant"
        text = render_chat(tokenizer, messages, add_generation_prompt=gen)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return tuple(ids), masked_length(tokenizer, messages, n_turns, text, ids)

    def _positions(self, n: int, n_masked: int, rng: Random) -> tuple[int, ...]:
        if rng.random() < self.all_positions_fraction:
            return tuple(range(n_masked, n))
        end = max(n - rng.randint(*self.end_offsets), n_masked)
        width = rng.randint(*self.window_sizes)
        return tuple(range(max(n_masked, end - width + 1), end + 1))

    def examples(self, tokenizer: Any, rng: Random) -> Iterator[TrainingExample]:
        """Stream examples forever: label, then dialogue, then QA pair, each uniformly."""
        cache: dict[tuple[str, int], tuple[tuple[int, ...], int] | None] = {}
        live = {label: list(range(len(d))) for label, d in self.dialogues.items()}
        while live:
            labels = sorted(live)
            label = labels[rng.randrange(len(labels))]
            which = live[label][rng.randrange(len(live[label]))]
            messages, n_turns, fmt = self.dialogues[label][which]
            if (label, which) not in cache:
                ids, n_masked = self._encode(tokenizer, messages, n_turns)
                usable = n_masked < len(ids) <= self.max_context_tokens
                cache[(label, which)] = (ids, n_masked) if usable else None
            entry = cache[(label, which)]
            if entry is None:
                live[label].remove(which)
                if not live[label]:
                    del live[label]
                continue
            ids, n_masked = entry
            qa_index = rng.randrange(len(self.qa[label]))
            question, answer = self.qa[label][qa_index]
            yield TrainingExample(
                context_ids=ids, positions=self._positions(len(ids), n_masked, rng),
                layer_percent=self.layer_percents[rng.randrange(len(self.layer_percents))], question=question,
                answer=answer, source=self.name,
                meta={"label": label, "qa_index": qa_index, "format": fmt, "n_masked": n_masked, "split": self.split})
        raise DataError(f"every LatentQA context in split {self.split!r} is longer than max_context_tokens="
                        f"{self.max_context_tokens} (or has nothing after the instruction); raise the limit.")

    def summary(self) -> dict[str, Any]:
        """Labels and dialogues in this split, and what was skipped (for the oracle card)."""
        return {"split": self.split, "labels": len(self.labels),
                "dialogues": sum(len(d) for d in self.dialogues.values()), **self.stats}
