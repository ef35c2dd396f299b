"""White-box baselines for audits: the logit lens and a linear probe.

*Logit lens*: the residual stream at each layer, sent through the model's final
norm and unembedding, read as a next-token distribution; a candidate's score is
its first token's logit (the best of its spellings), averaged over the
positions of the input mode. The layer is picked on the validation items, then scored on the
test items, so the baseline is not tuned on what it is graded on.

*Linear probe*: multinomial logistic regression on activation features (mean
over the mode's positions at the oracle's read layer), fitted on the validation
items' labels and tested on the test items.

>>> import torch
>>> from activation_oracles.evals.baselines import fit_probe
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.cat([torch.randn(20, 4, generator=g) + 3, torch.randn(20, 4, generator=g) - 3])
>>> probe = fit_probe(x, ["a"] * 20 + ["b"] * 20)
>>> probe.predict(torch.tensor([[3.0, 3, 3, 3], [-3.0, -3, -3, -3]]))
['a', 'b']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from activation_oracles.errors import LayerDiscoveryError
from activation_oracles.models import Model

_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_norm", "norm_f")


def final_norm(model: Model) -> nn.Module:
    """The norm applied after the last block (found by name on the decoder stack)."""
    backbone = model.backbone
    for name in _NORM_NAMES:
        mod = getattr(backbone, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise LayerDiscoveryError(f"no final norm found on {type(backbone).__name__} (looked for {_NORM_NAMES}); the "
                              "logit lens needs it. Skip the logit lens for this model.")


def candidate_token_ids(tokenizer: Any, candidates: Sequence[str]) -> list[list[int]]:
    """For each candidate, the first token of its spellings (``" word"``, ``"word"``, lower-case variants)."""
    out: list[list[int]] = []
    for c in candidates:
        ids: list[int] = []
        for text in {f" {c}", c, f" {c.lower()}", c.lower()}:
            toks = tokenizer(text, add_special_tokens=False)["input_ids"]
            if toks and toks[0] not in ids:
                ids.append(toks[0])
        out.append(ids)
    return out


@torch.no_grad()
def logit_lens_scores(model: Model, residuals: dict[int, torch.Tensor], token_ids: Sequence[Sequence[int]]
                      ) -> torch.Tensor:
    """``[n_layers_given, n_positions, n_candidates]`` logit-lens logits (best spelling of each candidate).

    ``residuals`` maps a block index to its ``[n_positions, d_model]`` output. Only the candidates'
    rows of the unembedding are applied: at each position the log-softmax normaliser is the same
    for every candidate, so ranking by logits (or by their mean over positions) equals ranking by
    log-probabilities, at a fraction of the cost of the full vocabulary.
    """
    norm = final_norm(model)
    head = model.hf.get_output_embeddings()
    flat = [t for ids in token_ids for t in ids]
    weight = head.weight[flat]
    bias = head.bias[flat] if getattr(head, "bias", None) is not None else None
    out = []
    for layer in sorted(residuals):
        h = residuals[layer].to(device=weight.device, dtype=weight.dtype)
        z = (norm(h) @ weight.T).float()
        if bias is not None:
            z = z + bias.float()
        cols, k = [], 0
        for ids in token_ids:
            cols.append(z[:, k:k + len(ids)].max(dim=-1).values)
            k += len(ids)
        out.append(torch.stack(cols, dim=-1).cpu())
    return torch.stack(out)


def pick_layer(val_scores: Sequence[torch.Tensor], val_truth: Sequence[int]) -> tuple[int, list[float]]:
    """The layer index whose argmax-candidate accuracy on the validation items is highest (ties: the earlier).

    ``val_scores[i]`` is ``[n_layers, n_candidates]`` for item ``i``; ``val_truth[i]`` the true column.
    """
    if not val_scores:
        raise ValueError("pick_layer needs at least one validation item.")
    n_layers = val_scores[0].shape[0]
    acc = []
    for layer in range(n_layers):
        hits = sum(int(int(s[layer].argmax()) == t) for s, t in zip(val_scores, val_truth))
        acc.append(hits / len(val_scores))
    best = max(range(n_layers), key=lambda i: (acc[i], -i))
    return best, acc


@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression over standardised features."""

    classes: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.float() - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor) -> list[str]:
        return [self.classes[i] for i in self.logits(x).argmax(dim=-1).tolist()]


def fit_probe(x: torch.Tensor, labels: Sequence[str], *, l2: float = 1e-2, max_iter: int = 200) -> LinearProbe:
    """Fit a probe on ``x`` (``[n, d]``) and string labels (at least two classes)."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least two classes in its training labels; got {classes}.")
    x = x.float()
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-6)
    z = (x - mean) / std
    y = torch.tensor([classes.index(lab) for lab in labels])
    torch.manual_seed(0)
    w = torch.zeros(len(classes), x.shape[1], requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z @ w.T + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(classes=classes, mean=mean, std=std, weight=w.detach(), bias=b.detach())
