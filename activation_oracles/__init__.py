"""activation_oracles: ask an LLM questions about another model's activations.

>>> import activation_oracles as ao
>>> target = ao.load_model("smollm2-135m")          # the embedded default, offline
>>> acts = ao.capture(target, "Tell me about owls.", layer_percent=50)
>>> acts.layer, acts.d_model
(15, 576)
>>> oracle = ao.ActivationOracle.untrained(target)  # or ao.load_oracle("smollm2-135m")
>>> p = oracle.choose(acts, "Is this about an animal?", ["Yes", "No"])
>>> sorted(p), round(sum(p.values()), 6)
(['No', 'Yes'], 1.0)

Names are imported lazily so ``import activation_oracles`` (and ``ao --help``)
stays instant; torch loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Model": "models",
    "load_model": "models",
    "as_model": "models",
    "capture": "capturing",
    "Activations": "activations",
    "ActivationOracle": "oracle",
    "OracleConfig": "config",
    "load_oracle": "oracle",
    "unload_oracle": "loading",
    "AOError": "errors",
    "errors": None,
    "hooks": None,
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'activation_oracles' has no attribute {name!r}")
    module_name = _LAZY[name]
    if module_name is None:
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
