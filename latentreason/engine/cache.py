"""A KV cache for inference that writes new keys/values in place instead of concatenating.

transformers' DynamicLayer concatenates the whole cache at every step; with one call per latent and per
answer token that copy dominated the rollout's time on CPU (~70% in a profile). Here each layer keeps
a buffer that doubles when full and hands attention a view of its filled part. In-place writes would
corrupt tensors autograd saved for backward, so this cache is used only when gradients are off; the
training pass keeps the concatenating cache.
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


def inference_cache(config) -> DynamicCache:
    """A DynamicCache whose plain layers write in place (sliding-window layers are left as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowableLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
