"""Left-padded batches with the attention mask *and* the position ids every decoder needs.

Left padding lets a batch of prompts end together (their last token, and the next one
generated, line up). A model with absolute position embeddings (GPT-2 style) then reads each
padded row at shifted positions unless it is given position ids that start at 0 on the row's
first real token; rotary models hide the shift only because their attention sees relative
positions. So every batched forward pass of the project builds its batch here.

>>> b = left_pad([[5, 6, 7], [8]], pad_id=0)
>>> b.input_ids.tolist(), b.attention_mask.tolist(), b.position_ids.tolist()
([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [[0, 1, 2], [0, 0, 0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch


class PaddedBatch(NamedTuple):
    """``[batch, width]`` tensors of a left-padded batch; ``offsets[i]`` is row i's padding length."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: tuple[int, ...]

    def to(self, device: Any) -> PaddedBatch:
        return PaddedBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.position_ids.to(device), self.offsets)

    def forward_kwargs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> PaddedBatch:
    """Rows of token ids, left-padded with ``pad_id`` to the longest; position ids count real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = PaddedBatch(ids, mask, positions, tuple(width - len(r) for r in rows))
    return batch if device is None else batch.to(device)


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id (0 when it has none: padded columns are masked, so any id will do)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0
