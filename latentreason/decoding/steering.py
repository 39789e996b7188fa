"""Steering vectors: one direction per decoder layer from contrastive prompt pairs, and forward hooks that
push hidden states along it by a per-row amount while keeping each state's norm.

A layer's output (the residual stream after the layer) is where the direction is measured and where it is
applied, so the two always refer to the same representation. Hooks live only inside `steering(...)`: they
are removed on leaving the block, an exception included.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from latentreason.engine.batch import left_pad, positions_from_mask
from latentreason.engine.decoder_layers import decoder_layers

TINY = 1e-12  # floor of a norm we divide by (a zero state stays zero instead of becoming nan)


def _hidden(output) -> torch.Tensor:
    """A decoder layer's hidden states [B, L, d] from its output (a tensor, or a tuple starting with it)."""
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def last_token_states(lm, prompts: list[list[int]], layers: list[int]) -> torch.Tensor:
    """Each prompt's last-token output of each layer in `layers`: [len(layers), N, d], in one batched call."""
    batch = left_pad(prompts, lm.pad_id)
    mask = batch["attention_mask"].to(lm.device)  # [N, P]
    states: dict[int, torch.Tensor] = {}

    def keep(index):
        def hook(module, args, output):
            states[index] = _hidden(output)[:, -1]  # [N, d] left padding: the last column is the last token

        return hook

    stack = decoder_layers(lm)
    handles = []
    try:
        for index in layers:
            handles.append(stack[index].register_forward_hook(keep(index)))
        lm.backbone(
            input_ids=batch["input_ids"].to(lm.device),
            attention_mask=mask,
            position_ids=positions_from_mask(mask),
            use_cache=False,
        )
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([states[index] for index in layers])


def first_principal_direction(differences: torch.Tensor) -> torch.Tensor:
    """The unit vector h maximising sum_i (h . d_i)^2 over the rows d_i of `differences` [..., m, d] (the first
    principal direction, uncentred as the paper defines it), signed so the mean difference projects positively.
    Returns [..., d]."""
    diffs = differences.double()
    direction = torch.linalg.svd(diffs, full_matrices=False).Vh[..., 0, :]  # [..., d] top right-singular vector
    sign = torch.where((direction * diffs.mean(-2)).sum(-1, keepdim=True) < 0, -1.0, 1.0)  # [..., 1]
    return (direction * sign).to(differences.dtype)


def steering_vectors(
    lm, positive: list[list[int]], negative: list[list[int]], layers: list[int], unit: bool = False
) -> torch.Tensor:
    """[len(layers), d]: per layer, the first principal direction of the last-token differences (positive -
    negative) over the m prompt pairs, scaled to the differences' mean length along it (so a scale of 1 is
    the instructions' average shift), or of length 1 with `unit`."""
    states = last_token_states(lm, positive + negative, layers)  # [n, 2m, d]
    m = len(positive)
    differences = states[:, :m] - states[:, m:]  # [n, m, d]
    direction = first_principal_direction(differences)  # [n, d]
    if unit:
        return direction
    length = (differences * direction[:, None]).sum(-1).mean(-1, keepdim=True)  # [n, 1] > 0 by the sign choice
    return direction * length


def steer(hidden: torch.Tensor, vector: torch.Tensor, alpha: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """h <- (h + alpha v) x |h| / |h + alpha v| at the positions `where`, for rows whose alpha is non-zero.

    hidden [B, L, d]; vector [d]; alpha [B]; where [B, L] bool. Computed in at least float32; rows with alpha 0
    and positions outside `where` are returned untouched, bit for bit."""
    h = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
    shifted = h + alpha.to(h.dtype)[:, None, None] * vector.to(h.dtype)  # [B, L, d]
    rescaled = shifted * (h.norm(dim=-1, keepdim=True) / shifted.norm(dim=-1, keepdim=True).clamp_min(TINY))
    apply = where & (alpha != 0)[:, None]  # [B, L]
    return torch.where(apply[..., None], rescaled.to(hidden.dtype), hidden)


@contextmanager
def steering(lm, vectors: torch.Tensor, layers: list[int], alpha: torch.Tensor, where: torch.Tensor) -> Iterator[None]:
    """Inside the block, every forward call of layer `layers[i]` steers its output along `vectors[i]` by the
    per-row `alpha` [B] at the positions `where` [B, L] (the calls must have that batch and length)."""

    def hook_for(vector):
        def hook(module, args, output):
            hidden = _hidden(output)
            if hidden.shape[:2] != where.shape:
                raise RuntimeError(f"steering set up for [B, L] = {list(where.shape)}, called on {list(hidden.shape)}")
            steered = steer(hidden, vector, alpha, where)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    stack = decoder_layers(lm)
    handles = []
    try:
        for vector, index in zip(vectors, layers, strict=True):
            handles.append(stack[index].register_forward_hook(hook_for(vector)))
        yield
    finally:
        for handle in handles:
            handle.remove()
