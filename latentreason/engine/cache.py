"""KV caches that write new keys/values into a buffer instead of concatenating the whole cache.

transformers' DynamicLayer concatenates the whole cache at every step; with one call per latent and per
answer token that copy dominated the rollout's time on CPU (~70% in a profile). Here each layer keeps
a buffer and hands attention a view of its filled part.
  inference_cache  for no-grad decoding: plain in-place writes, the buffer doubles when full.
  training_cache   for the teacher-forced latent pass: writes go through `_Append`, an autograd function
                   whose backward routes each position's gradient to the call that wrote it. Every view
                   attention saves for backward aliases one buffer (memory O(L), not O(latents x L)), and
                   later writes land beyond every saved view, so saved values never change. Writes use
                   `.data` aliases, which keep their own version counters, so autograd's in-place check
                   does not fire on positions it never saved.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowableLayer(DynamicLayer):
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self._filled = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        needed = self._filled + new
        if self._k is None or needed > self._k.shape[-2]:
            capacity = max(needed, 2 * (self._k.shape[-2] if self._k is not None else 0), 64)
            shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
            k = key_states.new_empty(shape)  # [B, H, capacity, D]
            v = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
            if self._filled:
                k[..., : self._filled, :] = self._k[..., : self._filled, :]
                v[..., : self._filled, :] = self._v[..., : self._filled, :]
            self._k, self._v = k, v
        self._k[..., self._filled : needed, :] = key_states
        self._v[..., self._filled : needed, :] = value_states
        self._filled = needed
        self.keys, self.values = self._k[..., :needed, :], self._v[..., :needed, :]  # views, no copy
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last |tokens_to_remove| positions (negative counts, which every transformers version
        reads as "remove"); the buffer keeps them and the next update overwrites them."""
        if not self.is_initialized or self._k is None:
            return
        self._filled -= min(abs(tokens_to_remove), self._filled)
        self.keys, self.values = self._k[..., : self._filled, :], self._v[..., : self._filled, :]

    # Row operations act on the buffers that `update` writes, not on the views it hands out: re-indexing
    # only the views (DynamicLayer's versions) would be lost at the next write.
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows at `indices` (e.g. the rows still generating), in that order."""
        self._rows(lambda t: t[indices.to(t.device) if torch.is_tensor(indices) else indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row `repeats` times in a row (N samples sharing one prefill)."""
        self._rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def _rows(self, pick) -> None:
        """New buffers holding `pick` of the filled positions; the next update regrows them."""
        if not self.is_initialized or self._k is None:
            return
        self._k, self._v = pick(self._k[..., : self._filled, :]), pick(self._v[..., : self._filled, :])
        self.keys, self.values = self._k, self._v


class _Buffer:
    """A growable [B, H, capacity, D] tensor, kept out of autograd's sight (passed as a plain object)."""

    def __init__(self, like: torch.Tensor, capacity: int):
        self.tensor = like.new_empty((*like.shape[:-2], capacity, like.shape[-1])).detach()


class _Append(torch.autograd.Function):
    """`cat([filled, new], -2)` as a view of `buffer`, where `filled` is the buffer's first positions."""

    @staticmethod
    def forward(ctx, filled: torch.Tensor, new: torch.Tensor, buffer: _Buffer) -> torch.Tensor:
        start, end = filled.shape[-2], filled.shape[-2] + new.shape[-2]
        buffer.tensor.data[..., start:end, :] = new
        ctx.start = start
        return buffer.tensor.data[..., :end, :]  # a fresh alias: its version counter is its own

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[..., : ctx.start, :], grad[..., ctx.start :, :], None


class AppendLayer(DynamicLayer):
    """A cache layer for training: `update` appends through `_Append`; the buffer grows by doubling."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._kbuf, self._vbuf = _Buffer(key_states, self.capacity), _Buffer(value_states, self.capacity)
            self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]  # [B, H, 0, D]
        needed = self.keys.shape[-2] + key_states.shape[-2]
        if needed > self._kbuf.tensor.shape[-2]:
            # Move what is filled into a larger buffer, differentiably (rare: the capacity is a hint).
            size = max(needed, 2 * self._kbuf.tensor.shape[-2])
            self._kbuf, self._vbuf = _Buffer(key_states, size), _Buffer(value_states, size)
            self.keys = _Append.apply(self.keys[..., :0, :], self.keys, self._kbuf)
            self.values = _Append.apply(self.values[..., :0, :], self.values, self._vbuf)
        self.keys = _Append.apply(self.keys, key_states, self._kbuf)
        self.values = _Append.apply(self.values, value_states, self._vbuf)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        # A later write would land inside views attention saved for backward, unseen by autograd's checks.
        raise RuntimeError("the training cache only appends; crop a DynamicCache instead")


def training_cache(config, capacity: int) -> DynamicCache:
    """A DynamicCache for a grad-enabled pass of about `capacity` positions (sliding layers left as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [AppendLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def inference_cache(config) -> DynamicCache:
    """A DynamicCache whose plain layers write in place (sliding-window layers are left as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowableLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
