"""SASRec / ReaRec / PLR: the encoder is causal, streams see each other only through the shared history,
batched scoring equals one user at a time, the vectorised ranking equals a slow loop over items."""

from __future__ import annotations

import pytest
import torch

from latentreason.rec.config import ModelSettings
from latentreason.rec.metrics import target_ranks
from latentreason.rec.model import Recommender
from latentreason.rec.reasoning import stream_similarity

NUM_ITEMS = 30
TINY = dict(max_seq_length=8, hidden_size=16, num_layers=2, num_heads=2, inner_size=32)
KINDS = {
    "sasrec": dict(model="sasrec", reasoning_steps=0, streams=1),
    "rearec": dict(model="rearec", reasoning_steps=3, streams=1),
    "plr": dict(model="plr", reasoning_steps=3, streams=4),
}


def build(kind: str, **extra) -> Recommender:
    torch.manual_seed(0)
    model = Recommender(ModelSettings(**TINY, **KINDS[kind], **extra), NUM_ITEMS).eval()
    with torch.no_grad():  # distinct triggers and a live gate, as after training
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def histories(rows: int = 5, length: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, NUM_ITEMS + 1, (rows, length), generator=g)
    for row in range(rows):  # left padding of different lengths
        items[row, : row % 4] = 0
    return items


@pytest.mark.parametrize("kind", KINDS)
def test_an_item_never_sees_later_items(kind):
    model = build(kind)
    items = histories()
    changed = items.clone()
    changed[:, 5] = changed[:, 5] % NUM_ITEMS + 1
    with torch.no_grad():
        before = model.represent(items, every_position=True).final  # [B, L, d]
        after = model.represent(changed, every_position=True).final
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_streams_are_independent_except_through_the_shared_history():
    model = build("plr")
    items = histories()
    with torch.no_grad():
        base = model.represent(items).streams  # [B, 1, M, d]
        # perturb stream 2's start only, along a random direction: a constant shift of every entry would be
        # removed by the layer norms and pass by rounding alone
        model.reasoner.triggers[2] += torch.randn(
            model.reasoner.triggers.shape[-1], generator=torch.Generator().manual_seed(3)
        )
        moved = model.represent(items).streams
    others = [0, 1, 3]
    torch.testing.assert_close(base[:, :, others], moved[:, :, others])
    assert not torch.allclose(base[:, :, 2], moved[:, :, 2])


def test_one_stream_plr_without_trigger_effect_matches_its_own_streams_run_one_by_one():
    """The batched pass over M streams equals M separate one-stream passes started from each trigger."""
    model = build("plr")
    items = histories()
    with torch.no_grad():
        together = model.represent(items).streams  # [B, 1, M, d]
        triggers = model.reasoner.triggers.clone()
        for m in range(4):
            model.reasoner.triggers.copy_(triggers[m].expand_as(triggers))  # every stream starts as stream m
            alone = model.represent(items).streams[:, :, 0]
            torch.testing.assert_close(alone, together[:, :, m])


@pytest.mark.parametrize("kind", KINDS)
def test_batched_scores_equal_one_user_at_a_time(kind):
    model = build(kind)
    items = histories(rows=6)
    with torch.no_grad():
        batched = model.scores(items)
        one_by_one = torch.cat([model.scores(items[i : i + 1]) for i in range(len(items))])
    torch.testing.assert_close(batched, one_by_one)


@pytest.mark.parametrize("kind", KINDS)
def test_last_position_of_the_training_pass_equals_the_ranking_pass(kind):
    model = build(kind)
    items = histories()
    with torch.no_grad():
        every = model.represent(items, every_position=True).final[:, -1]
        last = model.represent(items).final[:, -1]
    torch.testing.assert_close(every, last)


@pytest.mark.parametrize("kind", KINDS)
def test_full_ranking_equals_a_slow_loop_over_items(kind):
    model = build(kind)
    items = histories()
    targets = torch.tensor([1, 7, 13, 22, 30])
    with torch.no_grad():
        users = model.represent(items).final[:, -1]  # [B, d]
        ranks = target_ranks(model.scores(items), targets)
        embeddings = model.encoder.items.weight
        for b in range(len(items)):
            target = float(users[b] @ embeddings[targets[b]])
            above = 0
            for item in range(1, NUM_ITEMS + 1):
                if item != targets[b] and float(users[b] @ embeddings[item]) >= target:
                    above += 1
            assert ranks[b] == above


def test_stream_similarity_is_zero_for_orthogonal_streams_and_one_for_equal_ones():
    orthogonal = torch.eye(3)[None].expand(2, 3, 3)  # [N, M, d]
    assert float(stream_similarity(orthogonal)) == pytest.approx(0.0)
    same = torch.ones(2, 3, 4)
    assert float(stream_similarity(same)) == pytest.approx(1.0)


def test_save_and_load_keep_every_weight_and_the_record(tmp_path):
    model = build("plr")
    model.meta["data"] = {"dataset": "x.inter"}
    model.save_pretrained(tmp_path)
    loaded = Recommender.from_pretrained(tmp_path).eval()
    items = histories()
    with torch.no_grad():
        torch.testing.assert_close(loaded.scores(items), model.scores(items))
    assert loaded.meta["data"] == {"dataset": "x.inter"}
