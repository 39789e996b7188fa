"""The in-place inference cache returns exactly what concatenation would, across buffer growth."""

from __future__ import annotations

import pytest
import torch

from latentreason.engine.cache import GrowableLayer, inference_cache
from latentreason.engine.forward import new_cache
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
    from latentreason.engine.cache import training_cache

    cache = training_cache(tiny_lm("llama").model.config, capacity=8)
    cache.layers[0].update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(RuntimeError, match="only appends"):
        cache.layers[0].crop(-1)


ROW_OPERATIONS = {
    "reorder_cache": torch.tensor([2, 0, 1]),
    "batch_select_indices": torch.tensor([2, 0]),
    "batch_repeat_interleave": 2,
}


@pytest.mark.parametrize("operation", ROW_OPERATIONS)
def test_row_operations_act_on_what_later_updates_extend(operation):
    """Each row operation, then more writes (one of them regrowing the buffer): the same keys and values as
    transformers' concatenating layer."""
    from transformers.cache_utils import DynamicLayer

    ours, reference = GrowableLayer(), DynamicLayer()
    gen = torch.Generator().manual_seed(0)

    def write(batch: int, length: int) -> None:
        k, v = torch.randn(batch, 2, length, 4, generator=gen), torch.randn(batch, 2, length, 4, generator=gen)
        got, want = ours.update(k, v), reference.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    write(3, 10)
    getattr(ours, operation)(ROW_OPERATIONS[operation])
    getattr(reference, operation)(ROW_OPERATIONS[operation])
    batch = reference.keys.shape[0]
    for length in (1, 1, 70):  # the last write outgrows the buffer
        write(batch, length)
    assert ours.get_seq_length() == reference.get_seq_length() == 82


@pytest.mark.parametrize("operation", ROW_OPERATIONS)
def test_a_model_continues_on_a_reindexed_cache_as_on_a_recomputed_one(operation):
    """Prefill three prompts, re-index the cache's rows, decode one more token: the hidden states equal a
    plain cache's (float64, `EXACT`); the in-place cache once lost a reorder at the next write."""
    from transformers import DynamicCache

    from latentreason.engine.forward import forward_step
    from tests.helpers import EXACT, build_tiny_lm

    lm = build_tiny_lm("llama", dtype=torch.float64)
    ids = torch.tensor([[5, 6, 7, 8], [0, 9, 10, 11], [0, 0, 12, 13]])  # [3, 4], left-padded
    mask = (ids != 0).long()
    rows = ROW_OPERATIONS[operation]
    picked = mask.repeat_interleave(rows, dim=0) if isinstance(rows, int) else mask[rows]
    nxt = torch.full((picked.shape[0], 1), 14)
    with torch.no_grad():
        hidden = []
        for cache in (inference_cache(lm.model.config), DynamicCache(config=lm.model.config)):
            forward_step(lm, cache, mask, input_ids=ids)
            getattr(cache, operation)(rows)
            grown = torch.cat([picked, torch.ones_like(nxt)], dim=1)
            hidden.append(forward_step(lm, cache, grown, input_ids=nxt))  # [B', 1, d]
    torch.testing.assert_close(hidden[0], hidden[1], **EXACT)
