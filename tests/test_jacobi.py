"""Jacobi latent pass (PCCoT): T = N reproduces the sequential engines; T < N fixes only the first T slots.

On the float64 models of test_latent_engine, so equal means equal up to float64 rounding (`EXACT`)."""

from __future__ import annotations

import pytest
import torch

from latentreason.engine.batch import IGNORE
from latentreason.engine.cache import GrowableLayer
from latentreason.engine.jacobi import jacobi_latent_forward, jacobi_rollout
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.rollout import fixed_latents, latent_rollout
from tests.helpers import EXACT, MODEL_TYPES
from tests.test_latent_engine import identity, rows, scaled
from tests.test_latent_engine import tiny_lm as engine_lm


def batch_of(lm, pick=slice(None)):
    prefixes, ks, suffixes = rows(lm)  # latents [3, 0, 5]
    labels = [[IGNORE] + s[1:] for s in suffixes]
    return build_latent_batch(prefixes[pick], ks[pick], suffixes[pick], labels[pick], lm.pad_id)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("thought_map", [identity, scaled])
def test_as_many_iterations_as_latents_is_the_sequential_pass(model_type, thought_map):
    lm = engine_lm(model_type)
    batch = batch_of(lm)
    with torch.no_grad():
        sequential = latent_forward(lm, batch, thought_map)
        jacobi = jacobi_latent_forward(lm, batch, thought_map, iterations=batch.max_latents)
    used = sequential.slot_mask
    torch.testing.assert_close(jacobi.latent_inputs[used], sequential.latent_inputs[used], **EXACT)
    torch.testing.assert_close(jacobi.latent_hidden[used], sequential.latent_hidden[used], **EXACT)
    real = batch.suffix_mask.bool()
    torch.testing.assert_close(jacobi.suffix_hidden[real], sequential.suffix_hidden[real], **EXACT)
    torch.testing.assert_close(jacobi.bot_hidden, sequential.bot_hidden, **EXACT)


def test_fewer_iterations_fix_the_first_slots_only_and_make_fewer_calls():
    lm = engine_lm("llama")
    batch = batch_of(lm)
    calls = []
    hook = lm.backbone.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with torch.no_grad():
            sequential = latent_forward(lm, batch, scaled)
            assert len(calls) == 6  # N + 1 for N = 5
            calls.clear()
            jacobi = jacobi_latent_forward(lm, batch, scaled, iterations=2)
            assert len(calls) == 3  # T + 1
    finally:
        hook.remove()
    row = 2  # the row with 5 latents
    torch.testing.assert_close(jacobi.latent_inputs[row, :2], sequential.latent_inputs[row, :2], **EXACT)
    gap = (jacobi.latent_inputs[row, 2:] - sequential.latent_inputs[row, 2:]).abs().max()
    assert gap > 1e-2  # slots 2..4 are still approximations after two updates


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_jacobi_pass_is_independent_of_batch_composition(iterations):
    lm = engine_lm("llama")
    with torch.no_grad():
        together = jacobi_latent_forward(lm, batch_of(lm), scaled, iterations)
        alone = jacobi_latent_forward(lm, batch_of(lm, slice(2, 3)), scaled, iterations)
    s = int(batch_of(lm, slice(2, 3)).suffix_mask.sum())
    torch.testing.assert_close(together.latent_inputs[2], alone.latent_inputs[0], **EXACT)
    torch.testing.assert_close(together.suffix_hidden[2, :s], alone.suffix_hidden[0, :s], **EXACT)


def test_gradients_reach_every_thought_through_the_iterations():
    lm = engine_lm("llama")
    weight = torch.ones(lm.embed.weight.shape[1], requires_grad=True)  # a thought map with one parameter

    def weighted(hidden, slot):
        return torch.tanh(hidden) * weight, None

    out = jacobi_latent_forward(lm, batch_of(lm), weighted, iterations=3)
    out.suffix_hidden.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    lm.zero_grad(set_to_none=True)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_jacobi_rollout_with_as_many_iterations_as_latents_is_the_sequential_rollout(model_type):
    lm = engine_lm(model_type)
    prompts, _, _ = rows(lm)
    sequential = latent_rollout(lm, prompts, scaled, fixed_latents(4), 4, 6)
    jacobi = jacobi_rollout(lm, prompts, scaled, num_latents=4, iterations=4, max_new_tokens=6)
    assert jacobi.num_latents.tolist() == [4, 4, 4]
    torch.testing.assert_close(jacobi.latent_inputs, sequential.latent_inputs, **EXACT)
    assert jacobi.tokens.tolist() == sequential.tokens.tolist()
    assert jacobi.lengths.tolist() == sequential.lengths.tolist()


@pytest.mark.parametrize("num_latents", [1, 2])
def test_more_iterations_than_latents_are_the_sequential_rollout_in_n_plus_one_calls(num_latents):
    lm = engine_lm("llama")
    prompts, _, _ = rows(lm)
    sequential = latent_rollout(lm, prompts, scaled, fixed_latents(num_latents), num_latents, 6)
    calls = []
    hook = lm.backbone.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        jacobi = jacobi_rollout(lm, prompts, scaled, num_latents=num_latents, iterations=3, max_new_tokens=6)
    finally:
        hook.remove()
    torch.testing.assert_close(jacobi.latent_inputs, sequential.latent_inputs, **EXACT)
    assert jacobi.tokens.tolist() == sequential.tokens.tolist()
    assert len(calls) == num_latents + 1 + int(jacobi.lengths.max()) - 1  # N thought calls, <eot>, the answer


def test_growable_cache_crop_then_update_equals_concatenation():
    layer = GrowableLayer()
    gen = torch.Generator().manual_seed(0)
    first, second = torch.randn(1, 2, 10, 4, generator=gen), torch.randn(1, 2, 3, 4, generator=gen)
    layer.update(first, first)
    layer.crop(-4)
    assert layer.get_seq_length() == 6
    keys, values = layer.update(second, second)
    expected = torch.cat([first[..., :6, :], second], dim=2)
    assert torch.equal(keys, expected) and torch.equal(values, expected)
