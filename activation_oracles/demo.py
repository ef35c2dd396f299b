"""``ao demo``: the embedded model reads contrast pairs, an oracle answers a question about each.

A single probability says little: an oracle that answers "Yes" with 0.7 whatever it reads looks
confident and reads nothing. So every case is a *contrast*: one question, a text for which the
answer is Yes and one for which it is No. The oracle reads if its P(Yes) is higher on the
matching text, and its *margin* (P(Yes | matching) - P(Yes | other)) is what the demo compares
with two controls that cannot read: the untrained oracle (the base model with the same
injection) and the same oracle with ``coeff=0`` (no activation information at all).

The shipped oracle is used when this installation has it; otherwise the demo says so and shows
the untrained oracle alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple


class Contrast(NamedTuple):
    """One question, a text it is true of and one it is not."""

    title: str
    question: str
    matching: str
    other: str


DEMO_CASES: tuple[Contrast, ...] = (
    Contrast("sentiment", "Is the sentiment of this text positive?",
             "I absolutely loved this film, the acting was wonderful!",
             "I hated this film, the acting was awful and dull."),
    Contrast("language", "Is this text written in French?",
             "Le chat dort sur le canapé pendant que la pluie tombe.",
             "The cat sleeps on the sofa while the rain falls."),
    Contrast("text type", "Is this text a question?",
             "Where is the nearest train station?",
             "The train station is next to the old bank."),
    # Headlines are a held-out task of the shipped recipe: no headline was ever trained on.
    Contrast("topic (held-out task)", "Is this headline about Donald Trump?",
             "Trump signs new executive order on trade tariffs",
             "Heavy rain floods valley towns as rivers burst their banks"),
)
OPEN_QUESTION = ("Le chat dort sur le canapé pendant que la pluie tombe.", "Which language is this text in?")


def margins(oracle: Any, target: Any, case: Contrast, layer: int) -> tuple[float, float]:
    """P(Yes) on the matching and on the other text of ``case`` (activations of ``layer``).

    >>> import activation_oracles as ao
    >>> target = ao.load_model("smollm2-135m")
    >>> yes_match, yes_other = margins(ao.ActivationOracle.untrained(target), target, DEMO_CASES[0], 15)
    >>> 0 <= yes_match <= 1 and 0 <= yes_other <= 1
    True
    """
    import activation_oracles as ao

    # Plain text (no chat template), as the training builders read it.
    acts = ao.capture(target, [case.matching, case.other], layers=layer, positions="content", chat=False)
    p = oracle.choose(acts, [case.question] * 2, ["Yes", "No"])
    return float(p[0]["Yes"]), float(p[1]["Yes"])


def run_demo(model_spec: str = "smollm2-135m", oracle_spec: str = "smollm2-135m", *, max_new_tokens: int = 24,
             out: Callable[[str], Any] = print) -> int:
    import activation_oracles as ao
    from activation_oracles.errors import OracleNotAvailableError

    t0 = time.perf_counter()
    target = ao.load_model(model_spec)
    try:
        oracle = ao.load_oracle(oracle_spec, base=target)
        label = f"oracle {oracle_spec!r}"
        methods = [(label, oracle), ("untrained", oracle.as_untrained()),
                   ("coeff=0 control", oracle.with_config(coeff=0.0))]
    except OracleNotAvailableError:
        out(f"note: the shipped oracle {oracle_spec!r} is not in this installation yet; showing the untrained "
            "oracle (base model + injection, no adapter): the baseline a trained oracle must beat.\n")
        oracle = ao.ActivationOracle.untrained(target)
        label = "untrained oracle"
        methods = [(label, oracle), ("coeff=0 control", oracle.with_config(coeff=0.0))]
    layer = target.layer_at(50)
    out(f"target {target.name}: {target.n_layers} blocks, reading block {layer} (50% depth) at the text's own "
        f"tokens; {label}\n")
    wins = 0
    for case in DEMO_CASES:
        out(f"== {case.title}: {case.question}")
        out(f"   + {case.matching}\n   - {case.other}")
        out(f"   {'':18s} P(Yes|+)  P(Yes|-)  margin")
        got = []
        for name, o in methods:
            yes_match, yes_other = margins(o, target, case, layer)
            got.append(yes_match - yes_other)
            out(f"   {name[:18]:18s} {yes_match:8.2f}  {yes_other:8.2f}  {yes_match - yes_other:+6.2f}")
        beats = len(got) > 1 and all(got[0] > g for g in got[1:])
        wins += beats
        out(f"   -> the oracle's margin {'exceeds' if beats else 'does not exceed'} both controls'\n")
    text, question = OPEN_QUESTION
    acts = ao.capture(target, text, layers=layer, positions="content", chat=False)
    out(f"== an open question about {text!r}\n   Q: {question}\n   A: "
        f"{oracle.ask(acts, question, max_new_tokens=max_new_tokens)}\n")
    out(f"{wins} of {len(DEMO_CASES)} contrasts read (the oracle's margin above both controls'); "
        f"done in {time.perf_counter() - t0:.0f} s.\nTry: ao ask --prompt 'your text' --question 'your question'")
    return 0
