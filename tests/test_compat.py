"""The KV cache is passed under the name each model's forward takes (transformers 5.24 renamed it)."""

from __future__ import annotations

import torch
from torch import nn

from latentreason.engine.compat import cache_kwargs


class OldStyle(nn.Module):  # a model class written before the rename (remote code, older architectures)
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return past_key_values


class NewStyle(nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None):
        return cache


def test_each_model_gets_the_name_its_forward_takes():
    marker = object()
    assert cache_kwargs(OldStyle(), marker) == {"past_key_values": marker}
    assert cache_kwargs(NewStyle(), marker) == {"cache": marker}
    assert OldStyle()(**cache_kwargs(OldStyle(), marker)) is marker
    assert NewStyle()(**cache_kwargs(NewStyle(), marker)) is marker


def test_the_installed_transformers_models_take_the_name_without_warning():
    """With warnings as errors (pyproject's filterwarnings), a cached call under a deprecated name fails."""
    from latentreason.engine.forward import forward_step, new_cache
    from tests.helpers import tiny_lm

    lm = tiny_lm("llama")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        cache = new_cache(lm)
        forward_step(lm, cache, torch.ones_like(ids), input_ids=ids)
    assert cache.get_seq_length() == 3
