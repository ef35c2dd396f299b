"""Train activation oracles: dataset builders, the mixture, and the trainer.

>>> from random import Random
>>> from activation_oracles.tiny import tiny_model
>>> from activation_oracles.training import ContextPrediction, TextListSource
>>> builder = ContextPrediction.single_token(TextListSource(["The cat sat on the mat today."]))
>>> next(builder.examples(tiny_model().tokenizer, Random(0))).source
'context_prediction_single'

Names load lazily, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainingExample": "example",
    "ContextPrediction": "context_prediction",
    "Classification": "classification",
    "ClassificationTask": "classification",
    "DEFAULT_TASKS": "classification",
    "SystemPromptQA": "system_prompt_qa",
    "OnPolicySource": "on_policy",
    "Mixture": "mixture",
    "TextListSource": "sources",
    "PlainTextSource": "sources",
    "JsonlSource": "sources",
    "CsvColumnSource": "sources",
    "ChatSource": "sources",
    "HFDatasetSource": "sources",
    "Trainer": "trainer",
    "TrainResult": "trainer",
    "TrainConfig": "config",
    "preset": "presets",
    "PRESETS": "presets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'activation_oracles.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
