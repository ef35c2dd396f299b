"""Probe ceilings: how well a linear readout finds a task's label in the target's activations.

An oracle reading one vector can hardly beat a linear probe trained on the same vectors,
so a task whose probe is near chance teaches the oracle nothing but the label prior. For
each task (a :class:`~.classification.Classification` task or a :mod:`.families` family)
:func:`probe_ceiling` captures the target's residual at the position the builders read (the
text's last token), fits a multinomial logistic regression on 70% of the rows and reports
its accuracy on the other 30% with a 95% Wilson interval, beside the majority-class rate.

The regression is a few lines of full-batch L-BFGS in torch rather than scikit-learn: the
project already depends on torch, and the fit is a few hundred rows of width d_model.

>>> import torch
>>> X = torch.randn(200, 8); y = (X[:, 0] > 0).long()
>>> fit_logistic(X[:140], y[:140], 2).predict(X[140:]).eq(y[140:]).float().mean().item() > 0.9
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import torch

from activation_oracles.errors import ConfigError, DataError

MIN_ROWS = 40


@dataclass
class LogisticProbe:
    """A fitted multinomial logistic regression on standardised features."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor  # [D, C]
    bias: torch.Tensor  # [C]

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        return (((X.float() - self.mean) / self.scale) @ self.weight + self.bias).argmax(-1)


def fit_logistic(X: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-2,
                 steps: int = 100) -> LogisticProbe:
    """Fit ``softmax(X W + b)`` to integer labels ``y`` (L2-penalised, L-BFGS)."""
    X = X.float()
    mean, scale = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mean) / scale
    W = torch.zeros(X.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Z @ W + b, y) + l2 * (W * W).sum() / len(y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LogisticProbe(mean, scale, W.detach(), b.detach())


@dataclass
class ProbeResult:
    """One task's probe ceiling at one layer."""

    task: str
    layer: int
    n_train: int
    n_test: int
    accuracy: float
    interval: tuple[float, float]
    majority: float
    shuffled: float  # the same probe fitted on permuted training labels: chance, or the split is leaking
    classes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "layer": self.layer, "n_train": self.n_train, "n_test": self.n_test,
                "accuracy": self.accuracy, "interval": list(self.interval), "majority": self.majority,
                "shuffled": self.shuffled, "classes": list(self.classes)}


def probe_vectors(target: Any, texts: Sequence[str], layer_percent: float, *, context_format: str = "plain",
                  batch_size: int = 32) -> torch.Tensor:
    """The target's residual at each text's last content token, at ``layer_percent`` depth: ``[N, D]``."""
    from activation_oracles.evals.oracle_card import capture_examples
    from activation_oracles.models import as_model

    from .classification import encode_with_span
    from .example import TrainingExample

    m = as_model(target)
    examples = []
    for text in texts:
        ids, (_, stop) = encode_with_span(m.tokenizer, text, context_format)
        examples.append(TrainingExample(context_ids=ids, positions=(stop - 1,), layer_percent=float(layer_percent),
                                        question="-", answer="-", source="probe"))
    acts = capture_examples(m, examples, batch_size=batch_size)
    return torch.stack([a.vectors[a.layer][0] for a in acts])


def probe_ceiling(target: Any, rows: Sequence[tuple[str, str]], *, task: str, layer_percent: float = 50,
                  n: int = 300, train_fraction: float = 0.7, seed: int = 0,
                  context_format: str = "plain") -> ProbeResult:
    """Fit and score a linear probe on ``rows`` (text, class): at most ``n`` rows, balanced by class.

    A second probe fitted on permuted training labels and scored on the true test labels is
    the control (``ProbeResult.shuffled``: near chance). Raises :class:`DataError` with fewer than :data:`MIN_ROWS` rows or fewer than two classes.
    """
    from activation_oracles.evals.stats import wilson_interval
    from activation_oracles.models import as_model

    if not 0 < train_fraction < 1:
        raise ConfigError(f"train_fraction={train_fraction}; expected a share strictly between 0 and 1.")
    rng = Random(f"probe:{task}:{seed}")
    by_class: dict[str, list[str]] = {}
    for text, cls in rows:
        by_class.setdefault(cls, []).append(text)
    classes = sorted(c for c, t in by_class.items() if t)
    if len(classes) < 2:
        raise DataError(f"task {task!r} has {len(classes)} class(es) {classes}; a probe needs at least two.")
    per_class = max(1, n // len(classes))
    picked: list[tuple[str, int]] = []
    for ci, c in enumerate(classes):
        texts = sorted(set(by_class[c]))
        rng.shuffle(texts)
        picked += [(t, ci) for t in texts[:per_class]]
    if len(picked) < MIN_ROWS:
        raise DataError(f"task {task!r} has {len(picked)} usable rows; a probe needs at least {MIN_ROWS} "
                        f"(a 30% test split of fewer says nothing). Give more rows or leave the task out.")
    rng.shuffle(picked)
    y = torch.tensor([ci for _, ci in picked])
    X = probe_vectors(target, [t for t, _ in picked], layer_percent, context_format=context_format)
    cut = int(round(train_fraction * len(picked)))
    n_test = len(picked) - cut
    probe = fit_logistic(X[:cut], y[:cut], len(classes))
    correct = int(probe.predict(X[cut:]).eq(y[cut:]).sum())
    y_perm = y[:cut][torch.randperm(cut, generator=torch.Generator().manual_seed(seed))]
    control = fit_logistic(X[:cut], y_perm, len(classes))
    shuffled = float(control.predict(X[cut:]).eq(y[cut:]).float().mean())
    majority = float(torch.bincount(y[cut:], minlength=len(classes)).max()) / max(n_test, 1)
    return ProbeResult(task, as_model(target).layer_at(layer_percent), cut, n_test, correct / n_test,
                       wilson_interval(correct, n_test), majority, shuffled, tuple(classes))


def task_rows(data_dir: str | Path, name: str) -> list[tuple[str, str]]:
    """(text, class) rows of a classification task (``gmt/cities``) or a family (``family/language``)."""
    root = Path(data_dir).expanduser()
    if name.startswith("family/"):
        from .families import FAMILIES

        fam = name.removeprefix("family/")
        if fam not in FAMILIES:
            raise ConfigError(f"unknown family {fam!r}; expected one of {sorted(FAMILIES)} (as family/<name>).")
        return FAMILIES[fam].rows(root)
    from .classification import DEFAULT_TASKS, load_rows

    if name not in DEFAULT_TASKS:
        raise ConfigError(f"unknown task {name!r}; expected a classification task ({', '.join(sorted(DEFAULT_TASKS))}) "
                          "or family/<name>.")
    return [(r.text, r.cls) for r in load_rows(DEFAULT_TASKS[name], root / "classification")]


def all_task_names() -> list[str]:
    """Every classification task and family, as :func:`task_rows` names them."""
    from .classification import DEFAULT_TASKS
    from .families import FAMILIES

    return sorted(DEFAULT_TASKS) + [f"family/{f}" for f in FAMILIES]
