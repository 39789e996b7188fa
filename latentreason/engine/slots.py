"""Per-row policy state reused across requests: the slots of a continuously batched policy.

A policy served continuously is built once for a capacity of S rows (slots) and names its per-row state in
`row_state`: attributes that are [S, ...] tensors, lists of S per-row items, or objects with a `row_state` of
their own (a nested policy, a RowSampling). When new rows take free slots, a fresh policy built for just those
rows (by the same constructor, so it starts them exactly as a batch of their own would) hands them its state:
`adopt_rows`.
Whatever is not named is shared by every row (the model, the config, the stop ids).
"""

from __future__ import annotations

import torch


def serves_continuously(policy) -> bool:
    """Whether `policy` names its per-row state, so its rows can join and leave a running batch."""
    return hasattr(policy, "row_state")


def adopt_rows(policy, fresh, slots: torch.Tensor) -> None:
    """Rows `slots` [n] of `policy` take the state of rows 0..n-1 of `fresh` (the same class, built for n rows)."""
    for name in policy.row_state:
        mine, theirs = getattr(policy, name), getattr(fresh, name)
        if torch.is_tensor(mine):
            if theirs.dtype != mine.dtype:  # a silent cast would lose e.g. int64 seeds in float32
                raise TypeError(f"{type(policy).__name__}.{name}: {theirs.dtype} rows for a {mine.dtype} state")
            mine[slots.to(mine.device)] = theirs.to(mine.device)
        elif isinstance(mine, list):
            for row, slot in enumerate(slots.tolist()):
                mine[slot] = theirs[row]
        else:
            adopt_rows(mine, theirs, slots)
