"""The two latent engines against the slow reference: batched == one-by-one, cached == recomputed.

The models here are float64. In float32 the batched pass and the reference sum in different orders and
drift apart (measured: up to 8.9e-4 in a Qwen2 row with 3 latents and left padding, whose q/k/v biases
and the `scaled` map amplify the rounding), which would force a tolerance that also hides small bugs.
In float64 the two agree to about 1e-14, so `EXACT` can be tight: a wrong mask or position moves values
by more than 1e-3 (test_the_row_by_row_check_catches_a_masking_or_position_bug breaks them on
purpose).
"""

from __future__ import annotations

import pytest
import torch

from latentreason.engine import latent_pass
from latentreason.engine.batch import IGNORE
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.reference import reference_latent_forward, reference_rollout
from latentreason.engine.rollout import fixed_latents, latent_rollout
from tests.helpers import EXACT, MODEL_TYPES, build_tiny_lm

_MODELS: dict = {}


def tiny_lm(model_type: str):
    """A tiny model whose three new special tokens have distinct rows: copies of '<<' tie exactly in the
    logits, and a tie broken differently by float noise is not an engine difference."""
    if model_type not in _MODELS:
        lm = build_tiny_lm(model_type, dtype=torch.float64)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            rows = lm.embed.weight[[lm.bot_id, lm.latent_id, lm.eot_id]]
            noise = torch.randn(rows.shape, generator=gen, dtype=rows.dtype)
            lm.embed.weight[[lm.bot_id, lm.latent_id, lm.eot_id]] = rows + noise
        _MODELS[model_type] = lm
    return _MODELS[model_type]


def identity(hidden, slot):
    return hidden, None


def scaled(hidden, slot):  # a thought map with parameters-free but non-trivial arithmetic
    return torch.tanh(hidden) * (1.0 + 0.1 * slot), None


def rows(lm):
    """Three rows with different prompt lengths, latent counts (incl. 0) and suffix lengths."""
    tok = lm.tokenizer
    prefixes = [
        [tok.bos_token_id] + tok(q + "\n")["input_ids"] + [lm.bot_id]
        for q in ("7 + 5 - 3", "2 * 9", "4 - 1 + 8 * 2 - 6")
    ]
    suffixes = [[lm.eot_id] + tok(s)["input_ids"] + [lm.eos_id] for s in ("### 9", "<<2*9=8>>\n### 8", "### 4")]
    return prefixes, [3, 0, 5], suffixes


def batched_and_reference(lm, thought_map):
    """[(batched, reference)] for every row's thoughts and suffix hidden states."""
    prefixes, ks, suffixes = rows(lm)
    labels = [[IGNORE] + s[1:] for s in suffixes]
    batch = build_latent_batch(prefixes, ks, suffixes, labels, lm.pad_id)
    pairs = []
    with torch.no_grad():
        out = latent_forward(lm, batch, thought_map)
        for row, (prefix, k, suffix) in enumerate(zip(prefixes, ks, suffixes)):
            thoughts, suffix_hidden = reference_latent_forward(lm, prefix, k, suffix, thought_map)
            assert out.slot_mask[row].sum() == k
            pairs += [(out.latent_inputs[row, :k], thoughts), (out.suffix_hidden[row, : len(suffix)], suffix_hidden)]
    return pairs


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("thought_map", [identity, scaled])
def test_latent_pass_matches_reference_row_by_row(model_type, thought_map):
    for got, want in batched_and_reference(tiny_lm(model_type), thought_map):
        torch.testing.assert_close(got, want, **EXACT)


def attend_to_padding(mask):
    return torch.ones_like(mask)


def positions_ignoring_the_mask(mask, offset=None):
    return torch.arange(mask.shape[1]).expand_as(mask)  # [B, L]: pads and unused slots counted


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("bug", [attend_to_padding, positions_ignoring_the_mask])
def test_the_row_by_row_check_catches_a_masking_or_position_bug(model_type, bug, monkeypatch):
    """The two classic padding bugs, put into the engine on purpose: the float64 comparison above sees each
    of them by far more than `EXACT` allows (so that tolerance is not what keeps it passing)."""
    from latentreason.engine import forward

    real_forward_step = forward.forward_step
    if bug is attend_to_padding:

        def broken(lm, cache, attention_mask, **kwargs):
            return real_forward_step(lm, cache, attend_to_padding(attention_mask), **kwargs)

        monkeypatch.setattr(latent_pass, "forward_step", broken)
    else:
        monkeypatch.setattr(forward, "positions_from_mask", bug)
    pairs = batched_and_reference(tiny_lm(model_type), scaled)
    worst = max(float((got - want).abs().max()) for got, want in pairs if got.numel())
    assert worst > 1e-3, worst


def test_latent_pass_independent_of_batch_composition():
    lm = tiny_lm("llama")
    prefixes, ks, suffixes = rows(lm)
    labels = [[IGNORE] + s[1:] for s in suffixes]
    with torch.no_grad():
        together = latent_forward(lm, build_latent_batch(prefixes, ks, suffixes, labels, lm.pad_id), identity)
        alone = latent_forward(
            lm, build_latent_batch(prefixes[:1], ks[:1], suffixes[:1], labels[:1], lm.pad_id), identity
        )
    k, s = ks[0], len(suffixes[0])
    torch.testing.assert_close(together.latent_inputs[0, :k], alone.latent_inputs[0, :k], **EXACT)
    torch.testing.assert_close(together.suffix_hidden[0, :s], alone.suffix_hidden[0, :s], **EXACT)


def test_gradients_reach_every_latent():
    lm = tiny_lm("llama")
    prefixes, ks, suffixes = rows(lm)
    labels = [[IGNORE] + s[1:] for s in suffixes]
    batch = build_latent_batch(prefixes, ks, suffixes, labels, lm.pad_id)
    kept = []

    def recording(hidden, slot):
        z = torch.tanh(hidden)
        z.retain_grad()
        kept.append(z)
        return z, None

    out = latent_forward(lm, batch, recording)
    out.suffix_hidden.sum().backward()
    assert len(kept) == max(ks)
    for slot, z in enumerate(kept):
        used = torch.tensor([slot < k for k in ks])
        grad_norm = z.grad.norm(dim=-1)  # [B]
        assert (grad_norm[used] > 0).all(), f"slot {slot} got no gradient"
        assert (grad_norm[~used] == 0).all(), f"masked slot {slot} leaked into the loss"
    lm.zero_grad(set_to_none=True)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_rollout_matches_reference_and_batch_size(model_type):
    lm = tiny_lm(model_type)
    prefixes, ks, _ = rows(lm)
    k_tensor = torch.tensor(ks)
    batched = latent_rollout(lm, prefixes, scaled, fixed_latents(k_tensor), max(ks), 6)
    assert batched.num_latents.tolist() == ks
    for row, (prompt, k) in enumerate(zip(prefixes, ks)):
        thoughts, answer = reference_rollout(lm, prompt, k, scaled, 6, [lm.eos_id])
        torch.testing.assert_close(batched.latent_inputs[row, :k], thoughts, **EXACT)
        got = batched.tokens[row, : batched.lengths[row]].tolist()
        assert got == answer
        single = latent_rollout(lm, [prompt], scaled, fixed_latents(k), max(k, 1), 6)
        assert single.tokens[0, : single.lengths[0]].tolist() == answer


def test_rollout_stops_early_when_all_rows_stop():
    lm = tiny_lm("llama")
    prefixes, _, _ = rows(lm)
    calls = []

    def counting(hidden, slot):
        calls.append(slot)
        return hidden, None

    out = latent_rollout(lm, prefixes, counting, fixed_latents(torch.tensor([1, 2, 0])), 20, 3)
    assert out.num_latents.tolist() == [1, 2, 0]
    assert max(calls) == 2  # slot 2 is where every row has stopped: the loop ends there, not at 20


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("capacity", [None, 4])  # None: the pass's own capacity hint; 4: forces regrowth
def test_append_cache_gives_the_concatenating_cache_gradients(model_type, capacity, monkeypatch):
    from transformers import DynamicCache

    from latentreason.engine import latent_pass
    from latentreason.engine.cache import training_cache
    from latentreason.engine.loss import next_token_loss

    lm = tiny_lm(model_type)
    prefixes, counts, suffixes = rows(lm)
    batch = build_latent_batch(prefixes, counts, suffixes, [[IGNORE] + s[1:] for s in suffixes], lm.pad_id)
    params = [p for p in lm.model.parameters() if p.requires_grad]

    def grads():
        out = latent_forward(lm, batch, scaled)
        loss = next_token_loss(lm, out.suffix_hidden, batch.suffix_labels)[0] + out.latent_hidden.pow(2).mean()
        return [loss.detach(), *torch.autograd.grad(loss, params, allow_unused=True)]

    if capacity is not None:
        monkeypatch.setattr(latent_pass, "training_cache", lambda config, hint: training_cache(config, capacity))
    appended = grads()
    monkeypatch.setattr(latent_pass, "training_cache", lambda config, hint: DynamicCache(config=config))
    concatenated = grads()
    for got, want in zip(appended, concatenated):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **EXACT)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_one_call_with_known_thoughts_equals_the_sequential_pass(model_type):
    """RL recomputes thoughts it already drew: one call over prefix + thoughts + suffix gives the states of
    the N + 1 sequential calls (rows with 3, 0 and 5 latents, different prompt and suffix lengths)."""
    lm = tiny_lm(model_type)
    prefixes, ks, suffixes = rows(lm)
    batch = build_latent_batch(prefixes, ks, suffixes, [[IGNORE] + s[1:] for s in suffixes], lm.pad_id)
    with torch.no_grad():
        sequential = latent_forward(lm, batch, scaled)
        known = latent_pass.known_latent_forward(lm, batch, sequential.latent_inputs)
    torch.testing.assert_close(known.bot_hidden, sequential.bot_hidden, **EXACT)
    used = sequential.slot_mask  # [B, N] the slots rows use (the rest are masked and differ freely)
    torch.testing.assert_close(known.latent_hidden[used], sequential.latent_hidden[used], **EXACT)
    for row, suffix in enumerate(suffixes):
        torch.testing.assert_close(
            known.suffix_hidden[row, : len(suffix)], sequential.suffix_hidden[row, : len(suffix)], **EXACT
        )
