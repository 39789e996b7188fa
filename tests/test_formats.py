"""File-format loaders: the real benchmark files, format detection, and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentreason.data.formats import (
    FORMATS,
    detect_format,
    load_coconut,
    load_file,
    load_gsm8k,
    load_icot,
    numeric_answer,
)
from latentreason.errors import DataError, UserError

# (file inside the shared data dir, detected format, record count)
REAL_FILES = [
    ("gsm8k/test.jsonl", "gsm8k", 1319),
    ("gsm8k/train.jsonl", "gsm8k", 7473),
    ("gsm8k_aug/valid.txt", "icot", 500),
    ("gsm8k_aug/test.txt", "icot", 1319),
    ("gsm8k_aug/train_no_aug.txt", "icot", 6973),
    ("gsm8k_aug/coconut_json/gsm_valid.json", "coconut", 500),
    ("gsm8k_aug/coconut_json/gsm_test.json", "coconut", 1319),
    ("gsm_hard/gsmhardv2.jsonl", "gsm-hard", 1319),
    ("svamp/SVAMP.json", "svamp", 1000),
    ("prosqa/prosqa_valid.json", "coconut", 300),
    ("prontoqa/prontoqa_valid.json", "coconut", 200),
    ("mult_4x4/valid.txt", "icot-mult", 1000),
    ("mult_5x5/valid.txt", "icot-mult", 1000),
]


@pytest.mark.parametrize(("relative", "fmt", "count"), REAL_FILES)
def test_real_file_loads_with_detected_format(shared_file, relative, fmt, count):
    path = shared_file(relative)
    assert detect_format(path) == fmt
    problems = load_file(path)
    assert len(problems) == count
    assert all(p.question and p.answer and p.question == p.question.strip() for p in problems)
    assert all(isinstance(step, str) and step for p in problems for step in p.steps)
    sources = [p.meta["source"] for p in problems]
    assert len(set(sources)) == count
    assert sources[0] in (f"{path}:1", f"{path}#0")


def test_gsm8k_steps_answer_and_solution(shared_file):
    problems = load_gsm8k(shared_file("gsm8k/test.jsonl"))
    first = problems[0]
    assert first.steps == ["<<16-3-4=9>>", "<<9*2=18>>"]
    assert first.answer == "18"
    assert first.meta["solution"].startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n")
    assert "<<" not in first.meta["solution"] and "####" not in first.meta["solution"]
    # Thousands separators are dropped: the file has '#### 5,000'-style answers.
    raw = [json.loads(line)["answer"] for line in shared_file("gsm8k/test.jsonl").open(encoding="utf-8")]
    with_commas = [i for i, text in enumerate(raw) if "," in text.rsplit("\n", 1)[1]]
    assert with_commas
    assert all("," not in problems[i].answer for i in with_commas)
    for problem in problems:
        float(problem.answer)  # every answer is a plain number


def test_icot_text_and_coconut_json_agree(shared_file):
    for split in ("valid", "test"):
        text = load_icot(shared_file(f"gsm8k_aug/{split}.txt"))
        coconut = load_coconut(shared_file(f"gsm8k_aug/coconut_json/gsm_{split}.json"))
        assert [(p.question, p.steps, p.answer) for p in text] == [(p.question, p.steps, p.answer) for p in coconut]


def test_icot_steps_are_the_calculator_groups(shared_file):
    problems = load_icot(shared_file("gsm8k_aug/valid.txt"))
    assert problems[0].steps == ["<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>"]
    assert problems[0].answer == "300"
    # Some lines have an empty CoT ('question|| #### 9'); they load with no steps.
    assert any(p.steps == [] for p in problems)


def test_icot_free_text_cot_and_line_separator(shared_file):
    path = shared_file("gsm8k_aug/train_no_aug.txt")
    problems = load_icot(path)
    # U+2028 inside a question must not split the record (str.splitlines would).
    assert any("\u2028" in p.question for p in problems)
    # This file's CoT is natural language: it is kept whole as one step.
    assert problems[0].steps == [
        (
            "The annual budget for policing is 32 / 2 = $16 million. The combined budget for education "
            "and policing is 16 + 12 = $28 million. There is 32 - 28 = $4 million to manage public spaces."
        )
    ]
    lines = path.read_text(encoding="utf-8").split("\n")
    assert all(lines[int(p.meta["source"].rsplit(":", 1)[1]) - 1].startswith(p.question) for p in problems)


def test_gsm8k_aug_test_is_gsm8k_test(shared_file):
    aug = load_icot(shared_file("gsm8k_aug/test.txt"))
    gsm = load_gsm8k(shared_file("gsm8k/test.jsonl"))
    assert [p.question for p in aug] == [p.question for p in gsm]
    assert [p.answer.replace(",", "") for p in aug] == [p.answer for p in gsm]


@pytest.mark.parametrize("relative", ["mult_4x4/valid.txt", "mult_5x5/valid.txt"])
def test_multiplication_steps_rebuild_the_cot(shared_file, relative):
    path = shared_file(relative)
    problems = load_file(path, "icot-mult")
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    for problem, line in zip(problems, lines, strict=True):
        cot = line.split("||")[1].rsplit("####", 1)[0].strip()
        assert " ".join(problem.steps) == cot
        assert all(step.startswith("+ ") for step in problem.steps[1:])
        a, b = (int(n.replace(" ", "")[::-1]) for n in problem.question.split(" * "))
        assert problem.meta["answer_value"] == a * b


def test_multiplication_first_record(shared_file):
    first = load_file(shared_file("mult_4x4/valid.txt"))[0]
    assert first.question == "5 6 3 2 * 7 4 3 4"
    assert first.steps == [
        "5 5 5 6 1",
        "+ 0 0 6 4 9 0 ( 5 5 1 1 1 1 )",
        "+ 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 )",
        "+ 0 0 0 0 6 4 9 0",
    ]
    assert first.answer == "5 5 6 0 8 2 0 1"
    assert first.meta["answer_value"] == 2365 * 4347 == 10280655


def test_gsm_hard(shared_file):
    problems = load_file(shared_file("gsm_hard/gsmhardv2.jsonl"))
    assert problems[0].answer == "-9867630"
    assert problems[0].steps == []
    assert problems[0].meta["code"].lstrip().startswith("def solution():")
    # Integral targets print without '.0'; the others keep their digits.
    assert not any(p.answer.endswith(".0") for p in problems)
    assert any("." in p.answer for p in problems)


def test_svamp(shared_file):
    problems = load_file(shared_file("svamp/SVAMP.json"))
    first = problems[0]
    assert first.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert first.steps == ["( 76.0 - 25.0 )"]
    assert first.answer == "51"
    assert first.meta["id"] == "chal-1" and first.meta["type"] == "Subtraction"
    assert not any("  " in p.question for p in problems)


def test_prosqa_keeps_graph_fields_in_meta(shared_file):
    first = load_file(shared_file("prosqa/prosqa_valid.json"))[0]
    assert first.answer == "Tom is a lempus."
    assert first.steps == ["Tom is a terpus.", "Every terpus is a brimpus.", "Every brimpus is a lempus."]
    assert {"idx_to_symbol", "edges", "root", "target", "neg_target"} <= set(first.meta)
    assert first.meta["idx_to_symbol"][first.meta["root"]] == "Tom"


def test_prontoqa_answers_are_true_or_false(shared_file):
    problems = load_file(shared_file("prontoqa/prontoqa_valid.json"))
    assert {p.answer for p in problems} == {"True", "False"}
    assert all(p.question.count("True or false:") == 1 for p in problems)


def test_multiarith_fixture(tmp_path):
    records = [
        {
            "iIndex": 7,
            "sQuestion": " For Halloween Debby and her sister combined the candy they received. ",
            "lEquations": ["X=((32.0+42.0)-35.0)"],
            "lSolutions": [39.0],
            "lAlignments": [40, 80, 150],
        },
        {"iIndex": 8, "sQuestion": "Half of 5?", "lEquations": ["X=(5.0/2.0)"], "lSolutions": [2.5]},
    ]
    path = tmp_path / "MultiArith.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    assert detect_format(path) == "multiarith"
    problems = load_file(path)
    assert problems[0].question == "For Halloween Debby and her sister combined the candy they received."
    assert problems[0].steps == ["X=((32.0+42.0)-35.0)"]
    assert [p.answer for p in problems] == ["39", "2.5"]
    assert problems[0].meta == {"id": 7, "source": f"{path}#0"}


@pytest.mark.parametrize(
    ("value", "text"),
    [(18.0, "18"), (7, "7"), (2.5, "2.5"), (-9867630.0, "-9867630"), (0.1 + 0.2, "0.30000000000000004")],
)
def test_numeric_answer(value, text):
    assert numeric_answer(value) == text


GOOD_COCONUT = {"question": "q", "steps": ["s"], "answer": "a"}

# (file name, content, format (None: detect it), text the message must contain besides the file path)
MALFORMED = [
    ("bad.txt", b"q||<<1+1=2>> #### 2\n\xff\xfe oops #### 1\n", "icot", ["bad.txt:2", "invalid UTF-8"]),
    ("bad.txt", "q||<<1+1=2>> 2\n", "icot", ["bad.txt:1", "field 'answer'", "'#### <answer>'"]),
    (
        "bad.txt",
        "\n\nq||<<1=1>> #### 1\njust words #### 2\n",
        "icot",
        ["bad.txt:4", "field 'question'", "'||'"],
    ),
    ("bad.txt", "   ||<<1+1=2>> #### 2\n", "icot", ["bad.txt:1", "field 'question'", "must not be empty"]),
    ("bad.txt", "q||<<1+1=2>> ####  \n", "icot", ["bad.txt:1", "field 'answer'", "must not be empty"]),
    ("bad.txt", "q||<<1+1=2 #### 2\n", "icot", ["bad.txt:1", "field 'steps'", "unbalanced"]),
    ("bad.txt", "1 2 * 3||3 6 #### 3 7\n", "icot-mult", ["bad.txt:1", "field 'answer'", "21 * 3 = 63"]),
    (
        "bad.txt",
        "1 2 x 3||3 6 #### 3 6\n",
        "icot-mult",
        ["bad.txt:1", "field 'question'", "'<digits> * <digits>'"],
    ),
    (
        "bad.txt",
        "1 2 * 3||3 6 #### 36\n",
        "icot-mult",
        ["bad.txt:1", "field 'answer'", "space-separated digits"],
    ),
    ("bad.txt", "1 2 * 3||3 six #### 3 6\n", "icot-mult", ["bad.txt:1", "field 'steps'"]),
    (
        "bad.json",
        '[{"question": "q", "steps": [], "answer": "a"},\n {"question": ',
        "coconut",
        ["bad.json:2", "invalid JSON"],
    ),
    (
        "bad.json",
        json.dumps([GOOD_COCONUT, {"question": "q", "answer": "a"}]),
        None,
        ["bad.json record 1", "field 'steps'", "missing"],
    ),
    (
        "bad.json",
        json.dumps([{**GOOD_COCONUT, "steps": "s1 s2"}]),
        "coconut",
        ["bad.json record 0", "field 'steps'", "list of strings"],
    ),
    (
        "bad.json",
        json.dumps([{**GOOD_COCONUT, "answer": 5}]),
        "coconut",
        ["bad.json record 0", "field 'answer'", "expected a string, found a number"],
    ),
    (
        "bad.json",
        json.dumps([{**GOOD_COCONUT, "question": ""}]),
        "coconut",
        ["bad.json record 0", "field 'question'", "must not be empty"],
    ),
    ("bad.json", json.dumps(GOOD_COCONUT), "coconut", ["bad.json", "expected a JSON list"]),
    (
        "bad.json",
        json.dumps([GOOD_COCONUT, "text"]),
        "coconut",
        ["bad.json record 1", "expected a JSON object"],
    ),
    (
        "bad.jsonl",
        '{"question": "q", "answer": "x\\n#### 3"}\n{"question": "q", "answer": "x = 3"}\n',
        None,
        ["bad.jsonl:2", "field 'answer'", "expected a final line '#### <number>'"],
    ),
    (
        "bad.jsonl",
        '{"question": "q", "answer": "#### three"}\n',
        "gsm8k",
        ["bad.jsonl:1", "field 'answer'", "'#### <number>'"],
    ),
    ("bad.jsonl", '{"question": "q", "answer"\n', "gsm8k", ["bad.jsonl:1", "invalid JSON"]),
    ("bad.jsonl", '{"answer": "#### 3"}\n', "gsm8k", ["bad.jsonl:1", "field 'question'", "missing"]),
    (
        "bad.jsonl",
        '{"input": "q", "code": "", "target": "18"}\n',
        "gsm-hard",
        ["bad.jsonl:1", "field 'target'", "expected a number"],
    ),
    (
        "bad.jsonl",
        '{"input": "q", "code": "", "target": NaN}\n',
        "gsm-hard",
        ["bad.jsonl:1", "field 'target'", "finite"],
    ),
    (
        "bad.jsonl",
        '{"input": "q", "code": "", "target": true}\n',
        "gsm-hard",
        ["bad.jsonl:1", "field 'target'", "found a boolean"],
    ),
    (
        "bad.json",
        json.dumps([{"Body": "b", "Question": " ", "Equation": "( 1.0 )", "Answer": 1.0}]),
        "svamp",
        ["bad.json record 0", "field 'Question'", "must not be empty"],
    ),
    (
        "bad.json",
        json.dumps([{"Body": "b", "Question": "q?", "Equation": "( 1.0 )"}]),
        "svamp",
        ["bad.json record 0", "field 'Answer'", "missing"],
    ),
    (
        "bad.json",
        json.dumps([{"sQuestion": "q", "lEquations": [], "lSolutions": []}]),
        "multiarith",
        ["bad.json record 0", "field 'lSolutions'", "non-empty list"],
    ),
    ("bad.txt", "\n\n", "icot", ["bad.txt", "no records"]),
    (
        "train.txt",
        "version https://git-lfs.github.com/spec/v1\noid sha256:0a39\nsize 87805358\n",
        "icot",
        ["train.txt:1", "Git LFS pointer"],
    ),
]


@pytest.mark.parametrize(("name", "content", "fmt", "expected"), MALFORMED)
def test_malformed_input_names_file_line_and_field(tmp_path, name, content, fmt, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_file(path, fmt)
    message = str(caught.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_load_file_explicit_format_ignores_extension(tmp_path):
    path = tmp_path / "data.dat"
    path.write_text("Two plus two?||<<2+2=4>> #### 4\n", encoding="utf-8")
    assert detect_format(path) is None
    [problem] = load_file(path, "icot")
    assert (problem.question, problem.steps, problem.answer) == ("Two plus two?", ["<<2+2=4>>"], "4")


@pytest.mark.parametrize(
    ("name", "content"),
    [("data.csv", "a,b\n"), ("notes.txt", "no separator here\n"), ("odd.json", '[{"text": "x"}]')],
)
def test_load_file_lists_formats_when_it_cannot_tell(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_file(path)
    assert str(path) in str(caught.value)
    assert all(fmt in str(caught.value) for fmt in FORMATS)


def test_load_file_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unknown format 'csv'.*icot-mult"):
        load_file(tmp_path / "x.txt", "csv")
    with pytest.raises(UserError, match="not found"):
        load_file(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="cannot read"):
        load_file(Path(tmp_path / "missing.jsonl"), "gsm8k")
