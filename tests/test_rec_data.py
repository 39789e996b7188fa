"""The atomic-file loader, the leave-one-out split and the full-ranking metrics, on tiny hand-made data."""

from __future__ import annotations

import math

import pytest
import torch

from latentreason.errors import DataError, UserError
from latentreason.rec.data import read_interactions, resolve_dataset
from latentreason.rec.metrics import ranking_metrics, target_ranks
from latentreason.rec.split import LeaveOneOut

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write(tmp_path, rows: list[str], header: str = HEADER):
    path = tmp_path / "tiny.inter"
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def test_sequences_are_time_ordered_ties_in_file_order_and_short_users_dropped(tmp_path):
    rows = ["u1\ta\t5\t30", "u1\tb\t5\t10", "u1\tc\t5\t10", "u1\td\t5\t20", "u1\te\t5\t40", "u2\ta\t1\t1"]
    data = read_interactions(write(tmp_path, rows), min_user_interactions=5)
    assert data.dropped_users == 1
    tokens = [data.item_tokens[i - 1] for i in data.sequences[0]]
    assert tokens == ["b", "c", "d", "a", "e"]
    assert data.num_items == 5 and data.num_interactions == 5


@pytest.mark.parametrize(
    ("rows", "header", "where", "field"),
    [
        (["u1\ta\t5"], HEADER, ":2", None),  # a missing column
        (["u1\ta\t5\tyesterday"], HEADER, ":2", "timestamp"),
        (["u1\t\t5\t1"], HEADER, ":2", "item_id"),
        ([], "user_id:token\titem_id:token\trating:float\n", ":1", "timestamp"),
        ([], "user_id:token\titem_id:float\ttimestamp:float\n", ":1", "item_id"),
    ],
)
def test_malformed_files_name_file_line_and_field(tmp_path, rows, header, where, field):
    with pytest.raises(DataError) as err:
        read_interactions(write(tmp_path, rows, header))
    assert err.value.where.endswith(where) and err.value.field == field
    assert "tiny.inter" in str(err.value)


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="not a packaged data set"):
        resolve_dataset("no-such-file.inter")


def test_leave_one_out_windows_and_targets():
    split = LeaveOneOut([[1, 2, 3, 4, 5, 6, 7]], num_items=7, max_len=3)
    histories, following = split.batch(split.eval_examples("test"))
    assert histories.tolist() == [[4, 5, 6]] and following[:, -1].tolist() == [7]
    histories, following = split.batch(split.eval_examples("valid"))
    assert histories.tolist() == [[3, 4, 5]] and following[:, -1].tolist() == [6]
    # Training targets are items 2..5 (6 is validation, 7 test), each once: windows end at 4, then 1.
    examples = split.train_examples()
    histories, following = split.batch(examples)
    assert histories.tolist() == [[2, 3, 4], [0, 0, 1]]
    assert following.tolist() == [[3, 4, 5], [0, 0, 2]]
    assert sorted(t for t in following.flatten().tolist() if t) == [2, 3, 4, 5]


def test_ranks_count_ties_against_the_target():
    scores = torch.tensor([[-math.inf, 0.9, 0.5, 0.5, 0.1], [-math.inf, 1.0, 1.0, 1.0, 1.0]])
    assert target_ranks(scores, torch.tensor([2, 1])).tolist() == [2, 3]


def test_metrics_against_hand_computed_values():
    ranks = torch.tensor([0, 3, 12, 40])  # 0-based ranks of four users' targets
    metrics = ranking_metrics(ranks)
    assert metrics["recall@10"] == pytest.approx(2 / 4)
    assert metrics["recall@20"] == pytest.approx(3 / 4)
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(5)) / 4)
    assert metrics["ndcg@20"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(5) + 1 / math.log2(14)) / 4)


def test_packaged_ml100k_when_recbole_is_installed():
    try:
        path = resolve_dataset("ml-100k")
    except UserError as err:
        pytest.skip(f"ml-100k not available: {err}")
    data = read_interactions(path)
    assert (len(data.sequences), data.num_items, data.num_interactions) == (943, 1682, 100_000)
    assert min(len(s) for s in data.sequences) >= 5
