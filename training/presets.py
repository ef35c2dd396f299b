"""Named starting configurations: ``tiny`` (CI smoke run) and ``smollm2-135m`` (the embedded model's oracle).

``ao train --preset NAME`` starts from one of these; a ``--config`` file and
``--set`` overrides are applied on top.

* ``tiny``: a 4-block random Llama (d_model 64) with the SmolLM2 tokenizer, trained on
  built-in sentences (context prediction plus a small yes/no task), 60 steps; it runs
  in well under a minute on a laptop CPU and needs no data files.
* ``smollm2-135m``: the reading recipe for the embedded model (context prediction, the
  classification tasks a probe can read, question families, system-prompt QA) at CPU
  scale, about an hour on a 2-core CPU; it does not read yet in that budget, and the
  shipped oracle is still an earlier recipe (ORACLE_CARD.md). On a CUDA GPU
  ``benchmarks/gpu_recipe.sh`` runs it at scale (1,000 steps of batch 128 in ~6 minutes on an
  H200); that run, G1, does not read either. It reads the data under ``data_dir`` (the
  repository's ``shared/data`` layout: ``classification/``, ``latentqa/``, ``truthfulqa/``).

>>> preset("tiny").model.name
'tiny'
>>> sorted(PRESETS)
['smollm2-135m', 'tiny']
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from random import Random
from typing import Any

from ..errors import ConfigError
from .config import (CheckpointSection, DataSection, EvalSection, LoraSection, ModelSection, OptimSection,
                     OutputSection, SourceSpec, TrainConfig)
from .example import TrainingExample

# -- tiny data: short sentences, some about animals (the yes/no task) ---------------------------------

TINY_TEXTS = (
    "The owl hunts mice in the quiet forest at night.",
    "A red car stopped at the corner of the busy street.",
    "My grandmother bakes bread every Sunday morning.",
    "The cat slept on the warm windowsill all afternoon.",
    "Engineers tested the new bridge before opening it.",
    "A dolphin jumped out of the water near the boat.",
    "The library closes early on public holidays.",
    "Two horses grazed in the green field by the river.",
    "She wrote the report and sent it to her manager.",
    "The dog barked at the mail carrier every day.",
    "Rain fell on the city for three days in a row.",
    "A small rabbit hid under the garden fence.",
    "The orchestra played a symphony by Beethoven.",
    "Bees collect nectar from the flowers in spring.",
    "He repaired the old clock with a tiny screwdriver.",
    "The elephant sprayed water over its back.",
    "Students studied for the exam in the library.",
    "A fox crossed the snowy road at dawn.",
    "The bakery sells fresh croissants and coffee.",
    "Wolves howled on the hill under the full moon.",
    "The train to Paris leaves at nine o'clock.",
    "A parrot repeated every word the sailor said.",
    "The committee approved the budget for next year.",
    "Salmon swim upstream to lay their eggs.",
    "The painter mixed blue and yellow to make green.",
    "A tiger rested in the shade of a large tree.",
    "The server crashed during the software update.",
    "Penguins huddle together to stay warm in winter.",
    "The chef added salt and pepper to the soup.",
    "A squirrel buried acorns in the backyard.",
    "The museum opened a new exhibition on ancient Egypt.",
    "Frogs sang loudly in the pond after the storm.",
)
_ANIMALS = ("owl", "cat", "dolphin", "horses", "dog", "rabbit", "elephant", "bees", "fox", "wolves", "parrot",
            "salmon", "tiger", "penguins", "squirrel", "frogs")


def mentions_animal(text: str) -> bool:
    words = {w.strip(".,!?'").lower() for w in text.split()}
    return any(a in words for a in _ANIMALS)


class TinyYesNo:
    """A balanced yes/no builder on :data:`TINY_TEXTS`: "Does this text mention an animal?".

    Positions are the last 1-3 tokens of the sentence, like the classification builder's
    end-of-context windows. For the tiny preset and tests only.
    """

    QUESTION = "Answer with 'Yes' or 'No' only. Does this text mention an animal?"

    def __init__(self, *, layer_percents: tuple[float, ...] = (25.0, 50.0, 75.0), split: str = "train",
                 name: str = "tiny_yes_no") -> None:
        if split not in ("train", "test"):
            raise ConfigError(f"split={split!r}; expected 'train' or 'test'.")
        texts = list(TINY_TEXTS)
        test = set(texts[::4])
        self.texts = [t for t in texts if (t in test) == (split == "test")]
        self.layer_percents = tuple(float(p) for p in layer_percents)
        self.name = name

    def examples(self, tokenizer: Any, rng: Random) -> Iterator[TrainingExample]:
        yes = [t for t in self.texts if mentions_animal(t)]
        no = [t for t in self.texts if not mentions_animal(t)]
        while True:
            label = rng.random() < 0.5
            text = rng.choice(yes if label else no)
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            k = rng.randint(1, min(3, len(ids)))
            yield TrainingExample(context_ids=ids, positions=tuple(range(len(ids) - k, len(ids))),
                                  layer_percent=rng.choice(self.layer_percents), question=self.QUESTION,
                                  answer="Yes" if label else "No", source=self.name)


# -- presets ------------------------------------------------------------------------------------------

TINY_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def tiny() -> TrainConfig:
    """The CI smoke run: tiny random model, tiny built-in data, ~60 steps, well under a minute."""
    texts = list(TINY_TEXTS)
    sources = (
        SourceSpec("context_prediction", 0.6, {"texts": texts, "n_positions": [1, 4], "n_tokens": [1, 3],
                                               "shuffle_buffer": 1, "name": "context_prediction"}),
        SourceSpec("activation_oracles.training.presets:TinyYesNo", 0.4, {}),
    )
    eval_sources = (
        SourceSpec("context_prediction", 0.5, {"texts": texts[::4], "n_positions": [1, 4], "n_tokens": [1, 2],
                                               "shuffle_buffer": 1, "name": "context_prediction"}),
        SourceSpec("activation_oracles.training.presets:TinyYesNo", 0.5, {"split": "test"}),
    )
    return TrainConfig(
        model=ModelSection(name="tiny", tiny_layers=4, tiny_d_model=64),
        # lm_head too: a random 64-wide model's tied head cannot move its logits far enough otherwise.
        lora=LoraSection(r=8, alpha=16.0, dropout=0.05, target_modules=TINY_TARGETS),
        optim=OptimSection(lr=3e-3, batch_size=8, grad_accum=1, bf16=False, seed=0, num_threads=1),
        data=DataSection(sources=sources, n_examples=480, max_length=64, max_positions=8, group_batches=4),
        checkpoint=CheckpointSection(every=20, keep=2),
        eval=EvalSection(every=30, n_examples=16, sources=eval_sources, batch_size=16, max_new_tokens=6),
        output=OutputSection(dir="runs/tiny", log_every=5),
    )


def _shared_data() -> Path | None:
    env = os.environ.get("AO_DATA_DIR")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    for parent in here.parents:
        for candidate in (parent / "shared" / "data", parent.parent / "shared" / "data"):
            if (candidate / "classification").is_dir():
                return candidate
    return None


def fast_bf16() -> bool:
    """Whether bf16 math is fast here: a CUDA device, or a CPU with AVX-512 BF16 or AMX instructions."""
    import torch

    if torch.cuda.is_available():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PROBE_THRESHOLD = 0.70
"""Training classification tasks whose probe ceiling (``ao data probe``) is below this are left out."""


def probe_ceilings(path: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """Measured probe ceilings of the embedded model's tasks (``ao data probe --out``): task -> accuracy.

    Default: the table shipped in the package (``activation_oracles/data/probe_ceilings_smollm2-135m.json``).
    """
    import json

    from activation_oracles.files import package_data

    file = Path(path) if path is not None else package_data("probe_ceilings_smollm2-135m.json")
    try:
        rows = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"probe ceilings {str(file)!r} cannot be read ({exc}); write them with "
                          "`ao data probe --out FILE`.") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "task" in r and "accuracy" in r for r in rows):
        raise ConfigError(f"{str(file)!r} is not a probe table; expected a list of {{'task', 'accuracy', ...}} "
                          "as `ao data probe --out` writes.")
    return {str(r["task"]): float(r["accuracy"]) for r in rows}


def strong_training_tasks(threshold: float = PROBE_THRESHOLD, ceilings: dict[str, float] | None = None) -> list[str]:
    """Training (not held-out) classification tasks whose probe ceiling is at least ``threshold``."""
    from .classification import DEFAULT_TASKS

    table = probe_ceilings() if ceilings is None else ceilings
    return sorted(n for n, t in DEFAULT_TASKS.items() if not t.held_out and table.get(n, 0.0) >= threshold)


# The mention family is left out: alone it stayed a coin flip for 200 steps (ORACLE_CARD.md, run R1).
PRESET_FAMILIES = ("language", "entity_type", "sentiment", "topic", "text_type", "tense")


def smollm2_135m(data_dir: str | os.PathLike[str] | None = None) -> TrainConfig:
    """The embedded model's oracle recipe at CPU scale (~1 h on 2 cores with bf16 instructions).

    ``data_dir`` (default ``$AO_DATA_DIR`` or a ``shared/data`` folder beside the
    checkout) holds ``classification/``, ``latentqa/`` and ``truthfulqa/``.

    The mixture, and why: context prediction on TruthfulQA text (15%; the reference's
    self-supervised part; on-policy rollouts are left out here because generating them
    costs minutes of the CPU budget); the training classification tasks whose linear probe
    ceiling is >= 70% (35%; weaker ones teach only the label prior); question families
    (45%: language, entity type, sentiment, topic, text type, tense, asked as yes/no (50%),
    negated yes/no (30%) and open (20%) questions, so the oracle learns to answer the
    question asked); system-prompt QA (5%). Every position is a content token; no default
    system prompt in target contexts or oracle prompts; activations standardised per
    channel; one source depth (50%). This mixture does not read yet within this budget
    (ORACLE_CARD.md): the shipped oracle is still variation A.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else _shared_data()
    if root is None:
        raise ConfigError("the smollm2-135m preset needs its data folder (classification/, latentqa/, truthfulqa/); "
                          "set AO_DATA_DIR=/path/to/data, or write the [[data.sources]] in a --config file.")
    cls_dir = str(root / "classification")
    lqa = root / "latentqa"
    # qa.json and the dialogues must share labels: take both from the folder that holds qa.json
    # (the public LatentQA release has qa.json for the eval folder only; split=train/test hashes labels).
    qa_dir = lqa / "train" if (lqa / "train" / "qa.json").exists() else lqa / "eval"
    lqa_qa = str(qa_dir / "qa.json")
    dialogues = [str(qa_dir / n) for n in ("system.json", "stimulus.json") if (qa_dir / n).exists()]
    tqa = str(root / "truthfulqa" / "TruthfulQA.csv")
    texts_common = {"max_context_tokens": 128, "shuffle_buffer": 256}
    sources = (
        SourceSpec("context_prediction", 0.10, {"path": tqa, "column": "Best Answer", "n_positions": [1, 8],
                                                "n_tokens": [1, 6], "name": "cp_truthfulqa_answers",
                                                **texts_common}),
        SourceSpec("context_prediction", 0.05, {"path": tqa, "column": "Question", "n_positions": [1, 1],
                                                "n_tokens": [1, 4], "name": "cp_truthfulqa_single",
                                                **texts_common}),
        SourceSpec("classification", 0.35, {"data_dir": cls_dir, "split": "train", "max_context_tokens": 128,
                                            "window_sizes": [1, 24], "tasks": strong_training_tasks()}),
        # topic's probe ceiling is 48% over 19 classes (binary questions are easier): kept, at half weight.
        SourceSpec("families", 0.45, {"data_dir": str(root), "split": "train", "families": list(PRESET_FAMILIES),
                                      "family_weights": {"topic": 0.5},
                                      "kind_weights": [0.5, 0.3, 0.2]}),
        SourceSpec("system_prompt_qa", 0.05, {"qa_path": lqa_qa, "dialogue_paths": dialogues, "split": "train",
                                              "max_context_tokens": 128}),
    )
    eval_sources = (
        SourceSpec("classification", 0.4, {"data_dir": cls_dir, "split": "held_out", "max_context_tokens": 128}),
        SourceSpec("classification", 0.3, {"data_dir": cls_dir, "split": "test", "max_context_tokens": 128,
                                           "name": "classification_test_rows",
                                           "tasks": strong_training_tasks()}),
        SourceSpec("families", 0.3, {"data_dir": str(root), "split": "test", "families": list(PRESET_FAMILIES),
                                     "kind_weights": [0.5, 0.5, 0.0],
                                     "name": "families_test"}),
    )
    return TrainConfig(
        model=ModelSection(name="smollm2-135m", dtype="fp32", center_activations=True, standardize_activations=True),
        # CPU scale: rank 32, no dropout (dropout masks cost ~25% of a CPU step); the reference (GPU) recipe
        # is r=64, alpha=128, dropout 0.05, lr 1e-5 over ~1M examples.
        lora=LoraSection(r=32, alpha=64.0, dropout=0.0),
        # bf16 autocast only where the CPU has bf16 instructions: without them (AVX2-only CPUs) a bf16
        # matmul is emulated and ~100x slower than fp32.
        # lr 5e-4 and one depth (50%, where the card evaluates): with them one task read by step 40 and four by
        # step 80-120; at lr 1e-3 and three depths four tasks were still level with coeff0 at step 80
        # (ORACLE_CARD.md, variations G-I). The reference reads 25/50/75% with ~1M examples.
        optim=OptimSection(lr=5e-4, batch_size=16, grad_accum=1, bf16=fast_bf16(), seed=0),
        data=DataSection(sources=sources, n_examples=15_360, max_length=128, max_positions=64, group_batches=16,
                         layer_percents=(50.0,)),
        checkpoint=CheckpointSection(every=80, keep=2),
        eval=EvalSection(every=160, n_examples=96, sources=eval_sources, batch_size=16, max_new_tokens=8),
        output=OutputSection(dir="runs/smollm2-135m", log_every=10),
    )


PRESETS = {"tiny": tiny, "smollm2-135m": smollm2_135m}


def preset(name: str, **kwargs: Any) -> TrainConfig:
    """The named preset's config."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(sorted(PRESETS))}.")
    return PRESETS[name](**kwargs)
