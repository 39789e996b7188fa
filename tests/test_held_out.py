"""Evaluation during training never reads training problems: where the data has no separate held-out split,
the last num_eval_examples problems are held out and not trained on."""

from __future__ import annotations

import json

import pytest

from latentreason.data.formats import write_coconut
from latentreason.data.generators import generate
from latentreason.data.sources import load_train_and_held_out
from latentreason.errors import UserError
from latentreason.train_config import TrainConfig


def write_gsm8k(root, count: int):
    (root / "gsm8k").mkdir(parents=True)
    rows = [{"question": f"What is {i} plus 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(count)]
    (root / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "gsm8k" / "train.jsonl"


def questions(problems):
    return [p.question for p in problems]


def test_a_benchmark_without_valid_holds_out_its_last_training_problems(tmp_path, capsys):
    write_gsm8k(tmp_path, 10)
    config = TrainConfig(dataset="gsm8k", data_dir=str(tmp_path), num_eval_examples=3)
    train, held_out = load_train_and_held_out(config)
    assert questions(held_out) == [f"What is {i} plus 1?" for i in (7, 8, 9)]
    assert questions(train) == [f"What is {i} plus 1?" for i in range(7)]
    said = capsys.readouterr().out
    assert "last 3 train problems are held out" in said and "7 left to train on" in said


def test_num_train_examples_counts_what_is_left(tmp_path):
    write_gsm8k(tmp_path, 10)
    config = TrainConfig(dataset="gsm8k", data_dir=str(tmp_path), num_eval_examples=3, num_train_examples=5)
    train, held_out = load_train_and_held_out(config)
    assert len(train) == 5 and len(held_out) == 3
    assert not set(questions(train)) & set(questions(held_out))


@pytest.mark.parametrize("as_file", [False, True])
def test_eval_split_equal_to_train_split_and_a_data_file_are_carved_too(tmp_path, as_file):
    path = write_gsm8k(tmp_path, 6)
    if as_file:
        config = TrainConfig(dataset=str(path), num_eval_examples=2)
    else:
        config = TrainConfig(dataset="gsm8k", data_dir=str(tmp_path), eval_split="train", num_eval_examples=2)
    train, held_out = load_train_and_held_out(config)
    assert questions(held_out) == ["What is 4 plus 1?", "What is 5 plus 1?"]
    assert len(train) == 4


def test_without_evaluation_everything_is_trained_on(tmp_path, capsys):
    write_gsm8k(tmp_path, 6)
    train, held_out = load_train_and_held_out(TrainConfig(dataset="gsm8k", data_dir=str(tmp_path), num_eval_examples=0))
    assert len(train) == 6 and held_out == []
    assert capsys.readouterr().out == ""


def test_too_few_problems_to_hold_out_is_a_clear_error(tmp_path):
    write_gsm8k(tmp_path, 4)
    with pytest.raises(UserError, match="4 problems, too few to hold out num_eval_examples=4"):
        load_train_and_held_out(TrainConfig(dataset="gsm8k", data_dir=str(tmp_path), num_eval_examples=4))


def test_a_misspelt_split_is_not_carved_but_refused(tmp_path):
    write_gsm8k(tmp_path, 6)
    config = TrainConfig(dataset="gsm8k", data_dir=str(tmp_path), eval_split="vaild", num_eval_examples=2)
    with pytest.raises(UserError, match="no split 'vaild'"):
        load_train_and_held_out(config)


def test_generated_splits_keep_their_own_streams(capsys):
    config = TrainConfig(dataset="synthetic:chain", num_train_examples=50, num_eval_examples=20)
    train, held_out = load_train_and_held_out(config)
    assert len(train) == 50 and 0 < len(held_out) <= 20
    assert not set(questions(train)) & set(questions(held_out))
    assert capsys.readouterr().out == ""


def test_never_train_on_drops_the_questions_of_a_file(tmp_path, capsys):
    # 2x2 multiplication has 8,100 problems: 2,000 draws repeat some of the 300 evaluated on.
    evaluated = generate("multiplication", 300, 7, num_digits=2)
    path = tmp_path / "valid.json"
    write_coconut(evaluated, path)
    data = {"dataset": "synthetic:multiplication", "dataset_params": {"num_digits": 2}, "num_train_examples": 2000}
    everything, _ = load_train_and_held_out(TrainConfig(**data, num_eval_examples=0))
    repeated = set(questions(everything)) & set(questions(evaluated))
    train, _ = load_train_and_held_out(TrainConfig(**data, num_eval_examples=0, never_train_on=str(path)))
    assert repeated, "the draw should repeat some evaluated questions, or this test checks nothing"
    assert not set(questions(train)) & set(questions(evaluated))
    dropped = 2000 - len(train)
    assert dropped >= len(repeated)  # a repeated question is dropped every time it is drawn
    assert f"{dropped} of 2000 training problems are among its 300 questions" in capsys.readouterr().out


def test_never_train_on_reads_a_benchmark_split(tmp_path):
    write_gsm8k(tmp_path, 10)
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}"}) + "\n" for i in (2, 5))
    )
    config = TrainConfig(dataset="gsm8k", data_dir=str(tmp_path), num_eval_examples=0, never_train_on="gsm8k:test")
    train, _ = load_train_and_held_out(config)
    assert questions(train) == [f"What is {i} plus 1?" for i in (0, 1, 3, 4, 6, 7, 8, 9)]


def test_never_train_on_a_missing_file_names_it(tmp_path):
    config = TrainConfig(
        dataset="synthetic:chain",
        num_train_examples=5,
        num_eval_examples=0,
        never_train_on=str(tmp_path / "valid.json"),
    )
    with pytest.raises(UserError, match="never_train_on: no such file: .*valid.json"):
        load_train_and_held_out(config)
