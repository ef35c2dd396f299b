"""The docstring examples on the public API run, so they never rot."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "activation_oracles", "activation_oracles.errors", "activation_oracles.checks", "activation_oracles.layers", "activation_oracles.models",
    "activation_oracles.embedded", "activation_oracles.activations", "activation_oracles.capturing",
    "activation_oracles.config", "activation_oracles.prompt", "activation_oracles.adapters",
    "activation_oracles.oracle", "activation_oracles.loading", "activation_oracles.tiny", "activation_oracles.cli",
    "activation_oracles.hooks", "activation_oracles.training", "activation_oracles.training.example",
    "activation_oracles.training.sources", "activation_oracles.training.context_prediction",
    "activation_oracles.training.classification", "activation_oracles.training.system_prompt_qa",
    "activation_oracles.training.mixture", "activation_oracles.training.on_policy",
    "activation_oracles.training.config", "activation_oracles.training.presets", "activation_oracles.training.export",
    "activation_oracles.training.centring", "activation_oracles.chat", "activation_oracles.training.families",
    "activation_oracles.training.probe", "activation_oracles.training.probe_cli",
    "activation_oracles.evals.truthfulqa",
    "activation_oracles.evals.stats", "activation_oracles.evals.report",
    "activation_oracles.evals.taboo", "activation_oracles.evals.kit", "activation_oracles.evals.gender", "activation_oracles.evals.chat",
    "activation_oracles.evals.baselines", "activation_oracles.evals.audit", "activation_oracles.evals.suite",
    "activation_oracles.evals.sft", "activation_oracles.evals.audit_task", "activation_oracles.evals.registry",
    "activation_oracles.evals.classification_audit", "activation_oracles.evals.diffing",
    "activation_oracles.evals.truthfulqa_audit", "activation_oracles.evals.misalignment",
    "activation_oracles.evals.subliminal",
    "activation_oracles.evals.trait_audits", "activation_oracles.safe_files", "activation_oracles.adapter_checks",
    "activation_oracles.demo", "activation_oracles.padding", "activation_oracles.files", "activation_oracles.evals.oracle_card", "activation_oracles.training.evaluate", "activation_oracles.evals.learning_curve",
    "activation_oracles.adapter_source", "activation_oracles.reference_format", "activation_oracles.evals.external",
    "activation_oracles.progress", "activation_oracles.verbosity", "activation_oracles.answer",
    "activation_oracles.training.run_card", "activation_oracles.training.batching", "activation_oracles.training.steps",
    "activation_oracles.training.source_registry", "activation_oracles.training.toml_writer",
    "activation_oracles.forward", "activation_oracles.oracle_args", "activation_oracles.evals.card_sets",
    "activation_oracles.evals.text_ceiling", "activation_oracles.training.text_in_prompt",
    "activation_oracles.training.config_io", "activation_oracles.training.schedule", "activation_oracles.evals.organism", "activation_oracles.evals.personaqa",
    "activation_oracles.evals.ssc", "activation_oracles.evals.truthfulqa_mc", "activation_oracles.training.checkpoint",
    "activation_oracles.training.cli", "activation_oracles.training.trainer", "activation_oracles.training.warm_start",
    "activation_oracles.training.data_prep", "activation_oracles.evals.organism_verdict", "activation_oracles.evals.interval_plot",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"


def test_every_module_with_examples_is_listed() -> None:
    """A module whose docstrings hold examples is run above (a new module cannot slip its examples past)."""
    from pathlib import Path

    found = set()
    for pkg in ("activation_oracles", "activation_oracles.training", "activation_oracles.evals",
                "activation_oracles.hooks"):
        for folder in importlib.import_module(pkg).__path__:
            for path in Path(folder).glob("*.py"):
                if ">>> " in path.read_text(encoding="utf-8"):
                    found.add(pkg if path.stem == "__init__" else f"{pkg}.{path.stem}")
    missing = sorted(found - set(MODULES))
    assert not missing, f"modules with docstring examples not in MODULES: {missing}"
