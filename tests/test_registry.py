"""The benchmark registry: specs, local loading, error messages, and the hub path (offline)."""

from __future__ import annotations

import json
import sys

import pytest

from latentreason.data import registry
from latentreason.data.formats import FORMATS, load_file
from latentreason.data.registry import BENCHMARKS, get_benchmark, list_benchmarks, load_benchmark
from latentreason.errors import DataError, UserError

NAMES = [
    "gsm-hard",
    "gsm8k",
    "gsm8k-aug",
    "mult-4x4",
    "mult-5x5",
    "multiarith",
    "prontoqa",
    "prosqa",
    "svamp",
]


@pytest.fixture(autouse=True)
def no_data_dir_env(monkeypatch):
    """Tests decide the data directory themselves; a developer's own setting must not leak in."""
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)


def test_registered_names_and_spec_consistency():
    assert [spec.name for spec in list_benchmarks()] == NAMES
    for spec in BENCHMARKS.values():
        assert spec.format in FORMATS
        assert spec.default_split in spec.splits
        assert all(not path.startswith("/") and "\\" not in path for path in spec.files.values())
        assert set(spec.hub_splits) <= set(spec.splits)
        assert (spec.hub_id is None) == (not spec.hub_splits)


@pytest.mark.parametrize(
    ("name", "split", "path"),
    [
        ("gsm8k", "train", "gsm8k/train.jsonl"),
        ("gsm8k-aug", "test", "gsm8k_aug/test.txt"),
        ("gsm8k-aug", "valid", "gsm8k_aug/valid.txt"),
        ("gsm8k-aug", "train", "gsm8k_aug/train.txt"),
        ("gsm-hard", "test", "gsm_hard/gsmhardv2.jsonl"),
        ("svamp", "test", "svamp/SVAMP.json"),
        ("multiarith", "test", "multiarith/MultiArith.json"),
        ("prosqa", "valid", "prosqa/prosqa_valid.json"),
        ("prosqa", "train", "prosqa/prosqa_train.json"),
        ("prontoqa", "test", "prontoqa/prontoqa_test.json"),
        ("mult-4x4", "test", "mult_4x4/test_bigbench.txt"),
        ("mult-5x5", "train", "mult_5x5/train.txt"),
    ],
)
def test_split_files(name, split, path):
    assert get_benchmark(name).files[split] == path


def test_hub_ids_and_default_splits():
    hub = {spec.name: (spec.hub_id, spec.hub_config) for spec in list_benchmarks()}
    assert hub["gsm8k"] == ("openai/gsm8k", "main")
    assert hub["gsm8k-aug"] == ("whynlp/gsm8k-aug", None)
    assert hub["gsm-hard"] == ("reasoning-machines/gsm-hard", None)
    assert hub["svamp"] == ("ChilleD/SVAMP", None)
    assert hub["multiarith"] == ("ChilleD/MultiArith", None)
    assert all(hub[name] == (None, None) for name in ("prosqa", "prontoqa", "mult-4x4", "mult-5x5"))
    assert {spec.default_split for spec in list_benchmarks()} == {"test"}


@pytest.mark.parametrize(
    ("name", "split", "count"),
    [
        ("gsm8k", None, 1319),
        ("gsm8k", "train", 7473),
        ("gsm8k-aug", None, 1319),
        ("gsm8k-aug", "valid", 500),
        ("gsm8k-aug", "train_no_aug", 6973),
        ("gsm-hard", None, 1319),
        ("svamp", None, 1000),
        ("prosqa", "valid", 300),
        ("prontoqa", "valid", 200),
        ("mult-4x4", "valid", 1000),
        ("mult-5x5", "valid", 1000),
    ],
)
def test_real_benchmarks_load(shared_data_dir, name, split, count):
    spec = get_benchmark(name)
    if not (shared_data_dir / spec.files[split or spec.default_split]).is_file():
        pytest.skip(f"{spec.files[split or spec.default_split]} not in {shared_data_dir}")
    problems = load_benchmark(name, split=split, data_dir=shared_data_dir)
    assert len(problems) == count


def test_data_dir_from_environment_and_limit(shared_file, monkeypatch):
    path = shared_file("gsm8k/test.jsonl")
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(path.parent.parent))
    first = load_benchmark("gsm8k", limit=5)
    assert [p.question for p in first] == [p.question for p in load_file(path)[:5]]
    assert load_benchmark("gsm8k", source="local", limit=0) == []


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark 'gsm9k'.*gsm-hard, gsm8k, gsm8k-aug"):
        load_benchmark("gsm9k", data_dir=tmp_path)
    with pytest.raises(UserError, match="no split 'dev'; expected one of: train, valid, test, train_no_aug"):
        load_benchmark("gsm8k-aug", split="dev", data_dir=tmp_path)
    with pytest.raises(UserError, match="unknown source 'web'.*auto, local, hub"):
        load_benchmark("gsm8k", source="web", data_dir=tmp_path)
    with pytest.raises(UserError, match="limit"):
        load_benchmark("gsm8k", limit=-1, data_dir=tmp_path)


def test_missing_file_names_the_path_and_how_to_get_it(tmp_path):
    with pytest.raises(UserError) as caught:
        load_benchmark("prosqa", data_dir=tmp_path)
    message = str(caught.value)
    assert str((tmp_path / "prosqa" / "prosqa_test.json").resolve()) in message
    assert "facebookresearch/coconut" in message and "Hugging Face" not in message

    with pytest.raises(UserError) as caught:
        load_benchmark("gsm8k", split="train", data_dir=tmp_path)
    message = str(caught.value)
    assert str((tmp_path / "gsm8k" / "train.jsonl").resolve()) in message
    assert "openai/gsm8k" in message and "pip install latentreason[hub]" in message


def test_no_data_dir_without_a_hub_copy():
    with pytest.raises(UserError, match="needs a data directory.*LATENTREASON_DATA_DIR"):
        load_benchmark("prosqa", split="valid")
    with pytest.raises(UserError, match="source='local' needs a data directory"):
        load_benchmark("gsm8k", source="local")
    with pytest.raises(UserError, match="no Hugging Face hub copy"):
        load_benchmark("mult-4x4", source="hub")
    with pytest.raises(UserError, match="not on the hub; hub splits: train, valid, test"):
        load_benchmark("gsm8k-aug", split="train_no_aug", source="hub")


# ---------------------------------------------------------------- hub path, with fake rows


class FakeHub:
    """Stands in for `fetch_hub_rows`: rows per hub split, and a log of what was asked for."""

    def __init__(self, rows_by_split):
        self.rows_by_split = rows_by_split
        self.calls = []

    def __call__(self, dataset_id, config, split):
        self.calls.append((dataset_id, config, split))
        return iter(self.rows_by_split[split])


GSM8K_ROW = {"question": "Janet has 3 eggs and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"}


def test_hub_rows_go_through_the_file_converters(monkeypatch):
    hub = FakeHub({"test": [GSM8K_ROW, {**GSM8K_ROW, "answer": "#### 1,200"}]})
    monkeypatch.setattr(registry, "fetch_hub_rows", hub)
    problems = load_benchmark("gsm8k")  # no data dir: 'auto' goes to the hub
    assert hub.calls == [("openai/gsm8k", "main", "test")]
    assert [(p.steps, p.answer) for p in problems] == [(["<<3+2=5>>"], "5"), ([], "1200")]
    assert problems[0].meta == {"solution": "3 + 2 = 5", "source": "hf:openai/gsm8k/test#0"}


def test_hub_split_names_and_concatenation(monkeypatch):
    hub = FakeHub({"validation": [{"question": "q1", "steps": ["<<1+1=2>>"], "answer": "2"}]})
    monkeypatch.setattr(registry, "fetch_hub_rows", hub)
    [problem] = load_benchmark("gsm8k-aug", split="valid", source="hub")
    assert hub.calls == [("whynlp/gsm8k-aug", None, "validation")]
    assert (problem.question, problem.steps, problem.answer) == ("q1", ["<<1+1=2>>"], "2")

    svamp_row = {"ID": "chal-1", "Body": "A has 76.", "Question": "How many?", "Equation": "( 76.0 )"}
    hub = FakeHub({"train": [{**svamp_row, "Answer": "76.0"}], "test": [{**svamp_row, "Answer": 2.5}]})
    monkeypatch.setattr(registry, "fetch_hub_rows", hub)
    problems = load_benchmark("svamp", source="hub")
    assert [call[2] for call in hub.calls] == ["train", "test"]
    assert [p.answer for p in problems] == ["76", "2.5"]
    assert [p.meta["source"] for p in problems] == ["hf:ChilleD/SVAMP/train#0", "hf:ChilleD/SVAMP/test#0"]


def test_hub_multiarith_adapter_and_limit(monkeypatch):
    rows = [{"question": f" Question {i}? ", "final_ans": str(i)} for i in range(5)]
    hub = FakeHub({"train": rows, "test": rows})
    monkeypatch.setattr(registry, "fetch_hub_rows", hub)
    problems = load_benchmark("multiarith", source="hub", limit=3)
    assert [(p.question, p.answer) for p in problems] == [(f"Question {i}?", str(i)) for i in range(3)]
    assert [call[2] for call in hub.calls] == ["train"]  # stopped before fetching the test split


def test_bad_hub_row_names_dataset_record_and_column(monkeypatch):
    hub = FakeHub({"train": [{"input": "q", "code": "", "target": 1.0}, {"input": "q", "code": ""}]})
    monkeypatch.setattr(registry, "fetch_hub_rows", hub)
    with pytest.raises(DataError, match=r"reasoning-machines/gsm-hard split train record 1, field 'target'"):
        load_benchmark("gsm-hard", source="hub")
    hub = FakeHub({"train": [{"question": "q", "final_ans": "eight"}]})
    monkeypatch.setattr(registry, "fetch_hub_rows", hub)
    with pytest.raises(DataError, match="record 0, field 'final_ans': expected a number"):
        load_benchmark("multiarith", source="hub")


def test_hub_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match=r"pip install latentreason\[hub\]"):
        load_benchmark("gsm8k", source="hub")


def test_hub_path_with_real_datasets_library(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the optional `datasets` package is not installed")
    fixture = tmp_path / "test.jsonl"
    fixture.write_text("\n".join(json.dumps(row) for row in [GSM8K_ROW] * 3) + "\n", encoding="utf-8")
    real_load = datasets.load_dataset
    asked = []

    def offline_load(path, name=None, split=None, **kwargs):
        # Serve the hub request from the local fixture through the real `datasets` machinery.
        asked.append((path, name, split))
        return real_load("json", data_files=str(fixture), split="train", cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", offline_load)
    problems = load_benchmark("gsm8k", source="hub")
    assert asked == [("openai/gsm8k", "main", "test")]
    assert len(problems) == 3
    assert (problems[2].answer, problems[2].meta["source"]) == ("5", "hf:openai/gsm8k/test#2")
