"""The two passes of a training step, as parts the trainer is composed of.

* :class:`TargetReader`: the target's residual vectors of a micro-batch at each item's source
  layer and positions (no grad, adapters off when the target is the oracle's own base, no dropout),
  transformed as the oracle's config says (``OracleConfig.centre``, the transform ``ask`` applies).
* :class:`OracleLoss`: the oracle's pass with those vectors injected at the placeholders, and the
  answer tokens' loss (``activation_oracles.forward.label_logprobs``, the log-probabilities
  ``choose`` scores with).

Both take what they need as arguments (models, device, precision, the config), so a test or a
script can run one pass without a trainer; :class:`~.trainer.Trainer` builds one of each.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import torch

from ..config import OracleConfig
from ..hooks import capture_residuals, inject_residuals
from ..models import Model
from ..forward import label_logprobs
from .batching import OracleBatch, answer_loss_terms
from .steps import MicroBatch

ContextFactory = Callable[[], AbstractContextManager[Any]]


class TargetReader:
    """Residual vectors ``[K_i, d_model]`` of each item of a micro-batch (see the module docstring).

    Args:
        target: the model read.
        device: where the batch goes.
        autocast: the precision context (bf16 autocast or a null context).
        transform: ``(vectors, layer) -> vectors`` applied to each item's vectors (centring).
        adapters_off: when the target is the oracle's base with adapters attached, a context with them
            bypassed; ``None`` otherwise.
        dropout_module: a module to put in eval mode during the read when its dropout is active
            (the shared PEFT model), else ``None``.
    """

    def __init__(self, target: Model, *, device: torch.device, autocast: ContextFactory,
                 transform: Callable[[torch.Tensor, int], torch.Tensor], adapters_off: ContextFactory | None = None,
                 dropout_module: Any = None) -> None:
        self.target, self.device, self.autocast = target, device, autocast
        self.transform, self.adapters_off, self.dropout_module = transform, adapters_off, dropout_module

    def __call__(self, mb: MicroBatch) -> list[torch.Tensor]:
        tb = mb.target
        toggle = self.dropout_module is not None and self.dropout_module.training
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if toggle:
                self.dropout_module.eval()  # no dropout while reading the target's activations
            if self.adapters_off is not None:
                stack.enter_context(self.adapters_off())
            stack.enter_context(self.autocast())
            cache = stack.enter_context(capture_residuals(self.target, sorted(mb.gather), stop_early=True))
            self.target.hf(input_ids=self._dev(tb.input_ids), attention_mask=self._dev(tb.attention_mask),
                           position_ids=self._dev(tb.position_ids), use_cache=False)
        if toggle:
            self.dropout_module.train()
        gathered = {layer: cache[layer][self._dev(rows), self._dev(cols)] for layer, (rows, cols) in mb.gather.items()}
        return [self.transform(gathered[layer][start:stop], layer) for layer, start, stop in mb.slices]

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)


class OracleLoss:
    """``(token_sum, example_sum)`` of the answer tokens' cross-entropy with the vectors injected (graph kept).

    Args:
        oracle: the oracle model (hooks go on its blocks).
        model: what runs the forward pass (the PEFT model, or its DDP wrapper).
        injection_layer: the block after which vectors are added.
        config: ``() -> OracleConfig`` (the injection mode and coefficient; read at each call, as the
            trainer's config gains its statistics after construction).
        device, autocast: as for :class:`TargetReader`.
    """

    def __init__(self, oracle: Model, model: Any, *, injection_layer: int, config: Callable[[], OracleConfig],
                 device: torch.device, autocast: ContextFactory) -> None:
        self.oracle, self.model, self.injection_layer = oracle, model, injection_layer
        self.config, self.device, self.autocast = config, device, autocast

    def logits(self, ob: OracleBatch, vectors: list[torch.Tensor], model: Any = None,
               coeff: float | None = None) -> torch.Tensor:
        """The answer columns' logits (``ob.keep`` of them) with ``vectors`` injected at the placeholders.

        ``coeff`` overrides the config's injection coefficient (0: the no-injection control).
        """
        cfg = self.config()
        with self.autocast(), inject_residuals(self.oracle, self.injection_layer, ob.placeholder_positions, vectors,
                                               mode=cfg.mode, coeff=cfg.coeff if coeff is None else coeff):
            return (model or self.model)(input_ids=ob.input_ids.to(self.device),
                                         attention_mask=ob.attention_mask.to(self.device),
                                         position_ids=ob.position_ids.to(self.device), logits_to_keep=ob.keep,
                                         use_cache=False).logits

    def __call__(self, mb: MicroBatch, vectors: list[torch.Tensor], model: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return answer_loss_terms(self.logits(mb.oracle, vectors, model), mb.oracle.labels.to(self.device))

    def answer_logprobs(self, ob: OracleBatch, vectors: list[torch.Tensor], coeff: float | None = None) -> list[float]:
        """Each row's summed answer-token log-probability: what ``choose`` scores, and minus the loss's terms."""
        lp, _ = label_logprobs(self.logits(ob, vectors, coeff=coeff).float(), ob.labels.to(self.device))
        return lp.sum(-1).tolist()
