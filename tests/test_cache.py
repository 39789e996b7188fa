"""The in-place inference cache returns exactly what concatenation would, across buffer growth."""

from __future__ import annotations

import torch

from latentreason.engine.cache import GrowableLayer, inference_cache
from latentreason.engine.decode import new_cache
from tests.helpers import tiny_lm


def test_growable_layer_matches_concatenation_through_several_regrowths():
    layer = GrowableLayer()
    gen = torch.Generator().manual_seed(0)
    keys, values = torch.empty(2, 3, 0, 4), torch.empty(2, 3, 0, 4)
    for length in [50, 1, 1, 30, 1, 100, 1]:  # crosses the initial capacity of 64 and doubles twice
        k, v = torch.randn(2, 3, length, 4, generator=gen), torch.randn(2, 3, length, 4, generator=gen)
        keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, keys) and torch.equal(got_v, values)
        assert layer.get_seq_length() == keys.shape[2]


def test_new_cache_is_in_place_only_without_gradients():
    lm = tiny_lm("llama")
    with torch.no_grad():
        assert all(isinstance(layer, GrowableLayer) for layer in new_cache(lm).layers)
    assert not any(isinstance(layer, GrowableLayer) for layer in new_cache(lm).layers)
    assert len(inference_cache(lm.model.config).layers) == lm.model.config.num_hidden_layers


def test_the_training_cache_refuses_to_crop():
    import pytest

    from latentreason.engine.cache import training_cache

    cache = training_cache(tiny_lm("llama").model.config, capacity=8)
    cache.layers[0].update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(RuntimeError, match="only appends"):
        cache.layers[0].crop(-1)
