"""The scoring forward pass every caller shares: a left-padded batch in, answer log-probabilities out.

``ActivationOracle.choose``, the trainer's loss, the in-training evaluation and the evals' chat
scoring all ask the same question of a batch: "how likely are these answer tokens after these
prompts?". They build the batch with :func:`activation_oracles.padding.left_pad` (attention mask
*and* position ids, so absolute-position models read padded rows right), run :func:`last_logits`
(only the answer columns' logits: the full ``[batch, seq, vocab]`` log-softmax costs more than the
forward pass itself) and read the answer tokens' log-probabilities with :func:`label_logprobs`.
Injection stays with the caller (``hooks.inject_residuals`` around the call), as it depends on
which vectors go where.

>>> import torch
>>> logits = torch.zeros(1, 3, 4)                 # uniform over a 4-token vocabulary
>>> labels = torch.tensor([[7, -100, 2, 3]])      # the prompt's columns are -100
>>> lp, mask = label_logprobs(logits, labels)
>>> [round(x, 4) for x in lp[0].tolist()], mask[0].tolist()
([-1.3863, -1.3863], [True, True])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .padding import PaddedBatch

IGNORE = -100
"""Label of a column that is not scored (the prompt, padding)."""


def last_logits(hf: Any, batch: PaddedBatch, k: int, **kwargs: Any) -> torch.Tensor:
    """Logits of the last ``k`` columns, ``[batch, k, vocab]``, with the batch's mask and position ids.

    ``logits_to_keep`` is passed where the model takes it (models without it compute them all).
    """
    kw = {**batch.forward_kwargs(), **kwargs}
    try:
        out = hf(**kw, logits_to_keep=k).logits
    except TypeError:
        out = hf(**kw).logits
    return out[:, -k:]


def label_logprobs(logits_BKV: torch.Tensor, labels_BS: torch.Tensor, ignore_index: int = IGNORE
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprob_BJ, scored_BJ)`` of the last ``K - 1`` labels, each predicted by the column before it.

    ``logits_BKV`` are the last ``K`` columns' logits (:func:`last_logits`); ``labels_BS`` the full-width
    labels, ``ignore_index`` where a column is not scored (its log-probability is returned as 0).
    """
    k = logits_BKV.shape[1]
    targets_BJ = labels_BS[:, labels_BS.shape[1] - k + 1:].to(logits_BKV.device)
    scored_BJ = targets_BJ != ignore_index
    logp_BJV = torch.log_softmax(logits_BKV[:, :-1].float(), dim=-1)
    lp_BJ = logp_BJV.gather(-1, targets_BJ.clamp(min=0)[..., None])[..., 0]
    return lp_BJ * scored_BJ, scored_BJ


def answer_labels(rows: list[list[int]] | tuple[tuple[int, ...], ...], n_answer: list[int], width: int
                  ) -> torch.Tensor:
    """Left-padded labels: each row's last ``n_answer[i]`` tokens, :data:`IGNORE` everywhere else."""
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, n) in enumerate(zip(rows, n_answer)):
        if n:
            labels[i, width - n:] = torch.as_tensor(list(row[len(row) - n:]), dtype=torch.long)
    return labels


def answer_logprob_sums(hf: Any, batch: PaddedBatch, n_answer: list[int], **kwargs: Any) -> list[float]:
    """Summed log-probability of each row's last ``n_answer[i]`` tokens after the tokens before them."""
    k = max(n_answer) + 1
    rows = [row[off:] for row, off in zip(batch.input_ids.tolist(), batch.offsets)]
    labels = answer_labels(rows, n_answer, batch.input_ids.shape[1])
    lp, _ = label_logprobs(last_logits(hf, batch, k, **kwargs), labels)
    return lp.sum(-1).tolist()


# -- decoding: what ``ask``, the in-training evaluation and the evals' chat generation share ------------

def stop_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an answer: the chat template's end-of-turn token and end-of-sequence."""
    from .prompt import end_of_turn_id

    return [t for t in dict.fromkeys((end_of_turn_id(tokenizer), tokenizer.eos_token_id)) if t is not None]


def generation_kwargs(tokenizer: Any, max_new_tokens: int, temperature: float = 0.0,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``generate`` arguments: stop at :func:`stop_ids`, greedy at ``temperature`` 0 (plain sampling above)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stop_ids(tokenizer))
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    kw.update(extra or {})
    return kw


class Generated(NamedTuple):
    """One row's new tokens: ``ids`` before the first stop token, and that ``stop`` token (``None``: none came)."""

    ids: list[int]
    stop: int | None


def generate(hf: Any, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
             temperature: float = 0.0, extra: dict[str, Any] | None = None, **model_kwargs: Any) -> list[Generated]:
    """Continue each left-padded row and cut its new tokens at the first stop (:func:`stop_ids`).

    The one decoding loop of the project (``ask``, the in-training evaluation, on-policy rollouts and
    the evals' chat replies): :func:`generation_kwargs` decides greedy or sampled decoding and the stop
    tokens, so every caller stops at the same end-of-turn token. ``generate`` derives position ids
    from the attention mask itself; ``model_kwargs`` go to it unchanged (e.g. a prefilled cache).
    Injection and adapters stay with the caller, around this call.
    """
    out = hf.generate(input_ids=input_ids, attention_mask=attention_mask,
                      **generation_kwargs(tokenizer, max_new_tokens, temperature, extra), **model_kwargs)
    stops = set(stop_ids(tokenizer))
    rows = []
    for row in out[:, input_ids.shape[1]:].tolist():
        ids, ended = cut_at_stop(row, stops)
        rows.append(Generated(ids, row[len(ids)] if ended else None))
    return rows


def cut_at_stop(ids: list[int], stops: Any) -> tuple[list[int], bool]:
    """``(ids before the first stop token, whether one was found)``.

    >>> cut_at_stop([5, 6, 2, 9], {2})
    ([5, 6], True)
    """
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i], True
    return ids, False


def cache_kwarg(hf: Any) -> str:
    """The KV-cache argument's name in ``hf.forward``: transformers renamed ``past_key_values`` to ``cache``."""
    import inspect

    try:
        params = inspect.signature(hf.get_base_model().forward if hasattr(hf, "get_base_model") else hf.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward pass returned, under either of its transformers names."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def continuation_logprobs(hf: Any, cache: Any, prompt_mask_PL: torch.Tensor, last_logits_PV: torch.Tensor,
                          continuations: list[list[int]], pad_id: int) -> list[float]:
    """Summed log-probability of each continuation's tokens after its prompt, read from the prompts' KV cache.

    The ``P`` prompts ran once (left-padded, mask ``prompt_mask_PL``) and returned ``cache`` and
    ``last_logits_PV``, the logits at each prompt's last column (they score every continuation's first
    token). ``continuations`` holds the same number of consecutive continuations per prompt; they run in
    one right-padded batch on the repeated cache, each token at the position after its own prompt's
    last real token, so the result equals scoring every whole sequence alone. This is the saving when
    the prompt is most of the tokens (forced choices, multiple-choice answers). ``cache`` is consumed:
    pass a copy if it is needed again. Adapter and no-injection contexts are the caller's.
    """
    n_prompts = prompt_mask_PL.shape[0]
    if not continuations or len(continuations) % n_prompts or any(not c for c in continuations):
        raise ValueError(f"continuation_logprobs got {len(continuations)} continuations for {n_prompts} prompts; "
                         "expected the same positive number per prompt, none empty.")
    per = len(continuations) // n_prompts
    dev = last_logits_PV.device
    owner = torch.arange(n_prompts, device=dev).repeat_interleave(per)
    first_lp_RV = torch.log_softmax(last_logits_PV.float(), dim=-1)[owner]
    totals = first_lp_RV.gather(-1, torch.tensor([[c[0]] for c in continuations], device=dev))[:, 0]
    width = max(len(c) for c in continuations)
    if width > 1:
        mdev = prompt_mask_PL.device
        # the last token of each continuation predicts nothing, so it need not run
        rows = torch.tensor([c[:-1] + [pad_id] * (width - len(c)) for c in continuations], device=mdev)
        answer_mask = torch.tensor([[1] * (len(c) - 1) + [0] * (width - len(c)) for c in continuations],
                                   device=mdev)
        prompt_mask = prompt_mask_PL[owner.to(mdev)]
        positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(width - 1, device=mdev)
        if per > 1:
            cache.batch_repeat_interleave(per)
        with torch.no_grad():
            logits = hf(input_ids=rows, attention_mask=torch.cat([prompt_mask, answer_mask], 1),
                        position_ids=positions, **{cache_kwarg(hf): cache}).logits
        targets = torch.tensor([c[1:] + [0] * (width - len(c)) for c in continuations], device=logits.device)
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]
        totals = totals + (lp * answer_mask.to(lp.device)).sum(-1).to(totals.device)
    return totals.tolist()
