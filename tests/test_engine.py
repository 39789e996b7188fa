"""Batching and cached decoding: exact agreement with transformers' generate, padding invariance, caches."""

from __future__ import annotations

import pytest
import torch

from latentreason.engine.batch import IGNORE, left_pad, positions_from_mask
from latentreason.engine.decode import decode, decode_from
from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import Prefix
from latentreason.layout import encode_problem
from tests.helpers import MODEL_TYPES, chain_problems, tiny_lm


def prompts_for(lm) -> list[list[int]]:
    """Four prompts of clearly different lengths (one short, one long), so left padding varies per row."""
    problems = chain_problems(4, seed=5)
    prompts = [encode_problem(lm.tokenizer, p).prompt for p in problems]
    prompts[1] = prompts[1][:4]
    prompts[2] = prompts[2] + prompts[3][1:]
    assert len({len(p) for p in prompts}) >= 3
    return prompts


def no_stop(lm) -> list[int]:
    """A stop list no row can hit, so every row runs for the full budget."""
    return [len(lm.tokenizer) + 10]


# --- left_pad / positions_from_mask ------------------------------------------------------------------


def test_left_pad_hand_written():
    out = left_pad([[5, 6, 7], [8], []], pad_id=0, labels=[[IGNORE, 6, 7], [8], []])
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, 8], [IGNORE] * 3]
    assert all(t.dtype == torch.long for t in out.values())


def test_left_pad_without_labels_and_nonzero_pad():
    out = left_pad([[1, 2], [3, 4, 5, 6]], pad_id=9)
    assert "labels" not in out
    assert out["input_ids"].tolist() == [[9, 9, 1, 2], [3, 4, 5, 6]]
    assert out["position_ids"].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_positions_skip_masked_slots_and_add_offset():
    # A row with left padding and a masked slot in the middle (a finished decoding step).
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 1, 0, 2], [0, 1, 2, 3, 4]]
    offset = torch.tensor([3, 10])
    assert positions_from_mask(mask, offset).tolist() == [[0, 3, 4, 0, 5], [10, 11, 12, 13, 14]]


# --- decode against transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_greedy_decode_matches_hf_generate(model_type):
    lm = tiny_lm(model_type)
    batch = left_pad(prompts_for(lm), lm.pad_id)
    new = 10
    ours = decode(lm, batch["input_ids"], batch["attention_mask"], new, stop_ids=[lm.eos_id])
    with torch.no_grad():
        ref = lm.model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=lm.eos_id,
            pad_token_id=lm.pad_id,
        )
    ref = ref[:, batch["input_ids"].shape[1] :]
    assert ours.tokens.tolist() == ref.tolist()
    # The tiny model never says EOS here, so the test really compares `new` free-running steps per row.
    assert ours.tokens.shape == (4, new)
    assert ours.lengths.tolist() == [new] * 4
    assert len({tuple(row) for row in ours.tokens.tolist()}) == 4


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_batched_decode_equals_one_by_one(model_type):
    lm = tiny_lm(model_type)
    prompts = prompts_for(lm)
    batch = left_pad(prompts, lm.pad_id)
    batched = decode(lm, batch["input_ids"], batch["attention_mask"], 8, stop_ids=no_stop(lm))
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        single = decode(lm, ids, torch.ones_like(ids), 8, stop_ids=no_stop(lm))
        assert batched.tokens[row].tolist() == single.tokens[0].tolist(), f"row {row}"


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_decode_from_prefix_cache_equals_full_prompt(model_type):
    lm = tiny_lm(model_type)
    batch = left_pad(prompts_for(lm), lm.pad_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    full = decode(lm, ids, mask, 8, stop_ids=no_stop(lm))

    # Split inside the padding of the short row (its prefix part is all pads) and inside the others.
    split = ids.shape[1] - 4  # the short row has 4 real tokens
    assert mask[1, :split].sum() == 0 and mask[0, :split].sum() > 0
    cache = new_cache(lm)
    with torch.no_grad():
        forward_step(lm, cache, mask[:, :split], input_ids=ids[:, :split])
    assert cache.get_seq_length() == split
    resumed = decode(lm, ids[:, split:], mask, 8, stop_ids=no_stop(lm), cache=cache)
    assert resumed.tokens.tolist() == full.tokens.tolist()

    # The latent solvers' entry point: the whole prompt cached, no new ids, the last hidden state given.
    cache = new_cache(lm)
    with torch.no_grad():
        hidden = forward_step(lm, cache, mask, input_ids=ids)  # [B, L, d]
    from_hidden = decode_from(lm, Prefix(cache, mask, hidden[:, -1]), 8, stop_ids=no_stop(lm))
    assert from_hidden.tokens.tolist() == full.tokens.tolist()


def test_decode_continues_from_its_own_returned_cache():
    lm = tiny_lm("qwen2")
    batch = left_pad(prompts_for(lm), lm.pad_id)
    full = decode(lm, batch["input_ids"], batch["attention_mask"], 10, stop_ids=no_stop(lm))
    first = decode(lm, batch["input_ids"], batch["attention_mask"], 5, stop_ids=no_stop(lm))
    # The state's mask covers exactly what is in the cache (the last sampled token is not fed yet).
    state = first.trace.state
    assert state.attention_mask.shape[1] == state.cache.get_seq_length() == batch["input_ids"].shape[1] + 4
    mask = torch.cat([state.attention_mask, torch.ones(4, 1, dtype=torch.long)], dim=1)
    second = decode(lm, first.tokens[:, -1:], mask, 5, stop_ids=no_stop(lm), cache=state.cache)
    assert torch.cat([first.tokens, second.tokens], dim=1).tolist() == full.tokens.tolist()


# --- sampling and stopping ---------------------------------------------------------------------------


def test_sampled_decode_is_reproducible_with_row_seeds():
    lm = tiny_lm("llama")
    batch = left_pad(prompts_for(lm), lm.pad_id)

    def sample(seed: int, temperature: float = 2.0) -> list[list[int]]:
        out = decode(
            lm,
            batch["input_ids"],
            batch["attention_mask"],
            12,
            stop_ids=no_stop(lm),
            sampling=Sampling(temperature=temperature),
            seeds=torch.arange(4) + 100 * seed,
        )
        return out.tokens.tolist()

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    greedy = decode(lm, batch["input_ids"], batch["attention_mask"], 12, stop_ids=no_stop(lm))
    assert sample(1) != greedy.tokens.tolist()
    # A vanishing temperature turns sampling into argmax.
    assert sample(3, temperature=1e-4) == greedy.tokens.tolist()


def test_rows_stop_independently_at_their_stop_token():
    lm = tiny_lm("gpt2")
    batch = left_pad(prompts_for(lm), lm.pad_id)
    budget = 12
    free = decode(lm, batch["input_ids"], batch["attention_mask"], budget, stop_ids=no_stop(lm)).tokens.tolist()

    def first_hit(row: list[int], token: int) -> int | None:
        return row.index(token) if token in row else None

    # A stop token that ends some row early while another row never produces it.
    chosen = None
    for token in sorted({t for row in free for t in row}):
        hits = [first_hit(row, token) for row in free]
        stopped = [h for h in hits if h is not None]
        if None in hits and stopped and min(stopped) < budget - 3:
            chosen = token
            break
    assert chosen is not None, "the tiny model's outputs offer no usable stop token"

    out = decode(lm, batch["input_ids"], batch["attention_mask"], budget, stop_ids=[chosen])
    hits = [first_hit(row, chosen) for row in free]
    expected_lengths = [budget if h is None else h + 1 for h in hits]
    assert out.lengths.tolist() == expected_lengths
    assert out.tokens.shape == (4, budget)  # one row never stops, so the batch runs the whole budget
    for row, length in enumerate(expected_lengths):
        got = out.tokens[row].tolist()
        assert got[:length] == free[row][:length], f"row {row} changed by another row stopping"
        assert got[length:] == [lm.pad_id] * (budget - length), f"row {row} not padded after its stop"


def test_decode_stops_early_when_every_row_is_done():
    lm = tiny_lm("llama")
    batch = left_pad(prompts_for(lm), lm.pad_id)
    free = decode(lm, batch["input_ids"], batch["attention_mask"], 6, stop_ids=no_stop(lm)).tokens
    # Every row's second token is a stop token: all rows finish at step 2 and decoding ends there.
    out = decode(lm, batch["input_ids"], batch["attention_mask"], 6, stop_ids=free[:, 1].tolist())
    assert out.tokens.shape[1] <= 2
    assert (out.lengths <= 2).all()
    assert out.lengths.max().item() == out.tokens.shape[1]
    for row in range(4):
        n = out.lengths[row].item()
        assert out.tokens[row, :n].tolist() == free[row, :n].tolist()


def test_decode_of_no_new_tokens_returns_empty_rows_and_the_prefilled_cache():
    lm = tiny_lm("llama")
    batch = left_pad([[1, 2, 3], [4, 5]], pad_id=lm.pad_id)
    out = decode(lm, batch["input_ids"], batch["attention_mask"], 0, [lm.eos_id])
    assert out.tokens.shape == (2, 0) and out.logprobs.shape == (2, 0)
    assert out.lengths.tolist() == [0, 0]
    state = out.trace.state
    assert state.cache.get_seq_length() == 3 and torch.equal(state.attention_mask, batch["attention_mask"])
