"""``ao demo``: the embedded model reads a few prompts, an oracle answers questions about them.

The shipped oracle is used when this installation has it; otherwise the demo says so and shows
the untrained oracle (the base model with the same injection), which is the baseline every
trained oracle must beat. Yes/no answers come with ``choose`` probabilities beside the controls:
the untrained oracle and the same oracle with ``coeff=0`` (no activation information at all).
"""

from __future__ import annotations

import time
from typing import Any

DEMO_CASES: tuple[tuple[str, Any, str, str], ...] = (
    ("a persona instruction",
     [{"role": "system", "content": "You are a pirate. Always talk like a pirate."},
      {"role": "user", "content": "How do I bake bread?"}],
     "What persona will the assistant adopt?", "Will the assistant talk like a pirate?"),
    ("a sentiment", "I absolutely loved this film, the acting was wonderful!",
     "What is the sentiment of this text?", "Is the sentiment positive?"),
    ("a fact", "The Eiffel Tower is in Paris, the capital of France.",
     "What is this text about?", "Is this text about a city?"),
)


def run_demo(model_spec: str = "smollm2-135m", oracle_spec: str = "smollm2-135m", *, max_new_tokens: int = 24,
             out: Any = print) -> int:
    import activation_oracles as ao
    from activation_oracles.errors import OracleNotAvailableError

    t0 = time.perf_counter()
    target = ao.load_model(model_spec)
    try:
        oracle = ao.load_oracle(oracle_spec, base=target)
        untrained = oracle.as_untrained()
        label = f"oracle {oracle_spec!r}"
    except OracleNotAvailableError:
        out(f"note: the shipped oracle {oracle_spec!r} is not in this installation yet; showing the untrained "
            "oracle (base model + injection, no adapter): the baseline a trained oracle must beat.\n")
        untrained = ao.ActivationOracle.untrained(target)
        oracle, label = untrained, "untrained oracle"
    layer = target.layer_at(50)
    out(f"target {target.name}: {target.n_layers} blocks, reading block {layer} (50% depth); {label}\n")
    for title, prompt, open_q, yes_no_q in DEMO_CASES:
        acts = ao.capture(target, prompt, layers=layer)
        shown = prompt if isinstance(prompt, str) else " | ".join(f"{m['role']}: {m['content']}" for m in prompt)
        out(f"== {title}: {shown}")
        out(f"   Q: {open_q}\n   A: {oracle.ask(acts, open_q, max_new_tokens=max_new_tokens)}")
        rows = [(label, oracle)] + ([("untrained", untrained)] if oracle is not untrained else []) \
            + [("coeff=0 control", oracle.with_config(coeff=0.0))]
        out(f"   Q: {yes_no_q}")
        for name, o in rows:
            probs = o.choose(acts, yes_no_q, ["Yes", "No"])
            out(f"      P(Yes) = {probs['Yes']:.2f}   [{name}]")
        out("")
    out(f"done in {time.perf_counter() - t0:.0f} s. Try: ao ask --prompt 'your text' --question 'your question'")
    return 0
