"""Rows joining a running batch: two KV caches made one (continuous batching).

Every row's cache is right-aligned (its newest position is the last column) and its mask is 0 before its
first real position. Joining drops the columns masked in every row of a cache (left there by rows that have
left the batch), left-pads the shorter cache with masked columns, and stacks the rows. Positions come from
the mask, so the padding changes no row's positions, and attention never reads a masked column.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from latentreason.engine.cache import GrowableLayer
from latentreason.errors import ConfigError


def join_caches(cache, mask: torch.Tensor, other, other_mask: torch.Tensor) -> torch.Tensor:
    """Append `other`'s rows to `cache` in place; returns the joined mask [b + m, S].

    mask: [b, S1] over `cache`; other_mask: [m, S2] over `other`."""
    mask, keep = _trim(mask)
    other_mask, other_keep = _trim(other_mask)
    width = max(mask.shape[1], other_mask.shape[1])
    for layer, other_layer in zip(_layers(cache), _layers(other)):
        keys, values = (_left_pad(_last(t, keep), width) for t in (layer.keys, layer.values))
        other_keys, other_values = (
            _left_pad(_last(t, other_keep), width).to(keys.dtype) for t in (other_layer.keys, other_layer.values)
        )
        _store(layer, torch.cat([keys, other_keys]), torch.cat([values, other_values]))
    return torch.cat([_left_pad(mask, width), _left_pad(other_mask.to(mask.dtype), width)])


def _trim(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the mask without its leading columns masked in every row, how many columns stay)."""
    used = mask.bool().any(0)  # [S]
    first = int(used.int().argmax()) if bool(used.any()) else mask.shape[1]
    return mask[:, first:], mask.shape[1] - first


def _last(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """The last `columns` positions of keys or values [B, H, S, D]."""
    return tensor[..., tensor.shape[-2] - columns :, :]


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """`tensor` with zero columns before its sequence dimension's start, to `width` ([B, S] masks or
    [B, H, S, D] keys and values)."""
    seq_dim = 1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[seq_dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[seq_dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=seq_dim)


def _layers(cache) -> list:
    layers = cache.layers
    unsupported = {type(layer).__name__ for layer in layers if type(layer) not in (GrowableLayer, DynamicLayer)}
    if unsupported:
        # A sliding-window layer keeps only its last positions: rows of different ages cannot share it.
        raise ConfigError(f"continuous batching needs full-attention cache layers; this model has {unsupported}")
    return layers


def _store(layer, keys: torch.Tensor, values: torch.Tensor) -> None:
    if isinstance(layer, GrowableLayer):  # its buffers are what its next update writes into
        layer._k, layer._v, layer._filled = keys, values, keys.shape[-2]
    layer.keys, layer.values = keys, values
