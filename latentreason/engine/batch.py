"""Left-padded batches and the position ids that make padding invisible to the model."""

from __future__ import annotations

import torch

IGNORE = -100


def left_pad(sequences: list[list[int]], pad_id: int, labels: list[list[int]] | None = None) -> dict:
    """Stack variable-length id lists into left-padded tensors.

    Returns input_ids [B, L], attention_mask [B, L] (1 = real token), position_ids [B, L] and,
    when `labels` is given, labels [B, L] with IGNORE on pads.
    """
    length = max(len(s) for s in sequences)
    batch = len(sequences)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)  # [B, L]
    mask = torch.zeros((batch, length), dtype=torch.long)  # [B, L]
    out_labels = torch.full((batch, length), IGNORE, dtype=torch.long)  # [B, L]
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, length - len(seq) :] = torch.tensor(seq)
            mask[row, length - len(seq) :] = 1
            if labels is not None:
                out_labels[row, length - len(seq) :] = torch.tensor(labels[row])
    out = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions_from_mask(mask)}
    if labels is not None:
        out["labels"] = out_labels
    return out


def positions_from_mask(mask: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Position of each real token counted from the row's first real token; pads get 0.

    mask: [B, L]; offset: [B] positions already consumed (e.g. by a cached prefix).
    """
    pos = mask.long().cumsum(-1) - 1  # [B, L]
    if offset is not None:
        pos = pos + offset[:, None]
    return pos.clamp(min=0) * mask.long()
