"""A corpus of malformed inputs: each is one clear error naming file, record and field, or, with
`--on-invalid skip`, left out and counted. The CLI turns each into exit 2 and one stderr line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from latentreason import cli
from latentreason.data.formats import MAX_TEXT_CHARS, load_file
from latentreason.errors import DataError

GOOD = [{"question": f"{a} + 1", "steps": [f"<<{a}+1={a + 1}>>"], "answer": str(a + 1)} for a in range(3)]


def coconut(bad) -> str:
    """A Coconut JSON list with `bad` between good records (as record 1)."""
    return json.dumps([GOOD[0], bad, *GOOD[1:]])


def jsonl(bad_line: str) -> str:
    good = [json.dumps({"question": "q", "answer": f"so\n#### {n}"}) for n in (1, 2, 3)]
    return "\n".join([good[0], bad_line, *good[1:]]) + "\n"


def icot(bad_line: bytes) -> bytes:
    return b"1 + 1||<<1+1=2>> #### 2\n" + bad_line + b"\n2 + 2||<<2+2=4>> #### 4\n3 + 3||<<3+3=6>> #### 6\n"


# (id, file name, content, format (None: detected), where the bad record is, field, words of the message).
# Each file holds 3 good records and 1 bad one (the second record / line 2).
RECORD_CORPUS = [
    ("truncated JSON line", "t.jsonl", jsonl('{"question": "q", "answ'), None, ":2", None, "invalid JSON"),
    ("wrong type", "t.json", coconut({**GOOD[0], "answer": 5}), None, " record 1", "answer", "found a number"),
    ("steps not a list", "t.json", coconut({**GOOD[0], "steps": "a b"}), None, " record 1", "steps", "list of strings"),
    ("step not a string", "t.json", coconut({**GOOD[0], "steps": ["a", 3]}), None, " record 1", "steps", "at index 1"),
    ("record not an object", "t.json", coconut(["q", "a"]), "coconut", " record 1", None, "expected a JSON object"),
    ("missing field", "t.jsonl", jsonl('{"answer": "#### 3"}'), "gsm8k", ":2", "question", "missing"),
    ("missing steps", "t.json", coconut({"question": "q", "answer": "a"}), None, " record 1", "steps", "missing"),
    ("empty question", "t.json", coconut({**GOOD[0], "question": "  "}), None, " record 1", "question", "empty"),
    ("empty icot question", "t.txt", icot(b" ||<<1=1>> #### 1"), None, ":2", "question", "must not be empty"),
    ("empty answer", "t.txt", icot(b"q||<<1=1>> ####"), None, ":2", "answer", "must not be empty"),
    (
        "non-numeric gsm8k",
        "t.jsonl",
        jsonl('{"question": "q", "answer": "#### three"}'),
        None,
        ":2",
        "answer",
        "number",
    ),
    ("non-numeric icot", "t.txt", icot(b"q||<<1=1>> #### seven"), None, ":2", "answer", "expected a number"),
    (
        "numeric answer as text",
        "t.jsonl",
        '{"input": "q", "code": "", "target": 1}\n{"input": "q", "code": "", "target": "18"}\n'
        '{"input": "q", "code": "", "target": 2}\n{"input": "q", "code": "", "target": 3}\n',
        "gsm-hard",
        ":2",
        "target",
        "expected a number, found a string",
    ),
    (
        "1 MB question",
        "t.json",
        coconut({**GOOD[0], "question": "x" * 1_000_000}),
        None,
        " record 1",
        "question",
        f"1000000 characters, more than the limit of {MAX_TEXT_CHARS}",
    ),
    ("invalid UTF-8 line", "t.txt", icot(b"caf\xe9 + 1||<<1+1=2>> #### 2"), "icot", ":2", None, "invalid UTF-8"),
    ("invalid UTF-8 JSON line", "t.jsonl", jsonl('{"question": "q\udcff"}'), "gsm8k", ":2", None, "invalid UTF-8"),
]

# Damage to the file as a whole: an error whatever on_invalid says.
FILE_CORPUS = [
    ("truncated JSON list", "t.json", coconut(GOOD[0])[:-30], "coconut", "t.json:1", "invalid JSON"),
    ("invalid UTF-8 in a JSON list", "t.json", b'[{"question": "\xff"}]', "coconut", "t.json:1", "invalid UTF-8"),
    ("not a list", "t.json", json.dumps(GOOD[0]), "coconut", "t.json", "expected a JSON list"),
    ("empty file", "t.json", "", "coconut", "t.json", "invalid JSON"),
    ("no records", "t.txt", "\n \n", "icot", "t.txt", "no records found (the file is empty)"),
]


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        # Lone surrogates in the text stand for bytes that are not UTF-8.
        content = content.encode("utf-8", errors="surrogateescape")
    path.write_bytes(content)
    return path


RECORD_FIELDS = ("case", "name", "content", "fmt", "where", "field", "words")


def ids(corpus) -> list[str]:
    return [case[0] for case in corpus]


@pytest.mark.parametrize(
    ("case", "name", "content", "fmt", "where", "field", "words"), RECORD_CORPUS, ids=ids(RECORD_CORPUS)
)
def test_bad_record_is_one_line_naming_file_record_and_field(tmp_path, case, name, content, fmt, where, field, words):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        load_file(path, fmt)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}{where}")
    if field:
        assert f"field '{field}'" in message
    assert words in message


@pytest.mark.parametrize(
    ("case", "name", "content", "fmt", "where", "field", "words"), RECORD_CORPUS, ids=ids(RECORD_CORPUS)
)
def test_skip_leaves_the_bad_record_out_and_counts_it(tmp_path, capsys, case, name, content, fmt, where, field, words):
    path = write(tmp_path, name, content)
    problems = load_file(path, fmt, on_invalid="skip")
    assert len(problems) == 3
    assert all(not p.meta["source"].endswith((":2", "#1")) for p in problems)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"{path}: skipped 1 invalid records (on_invalid=skip); first: {path}{where}")


@pytest.mark.parametrize(("case", "name", "content", "fmt", "expected", "words"), FILE_CORPUS, ids=ids(FILE_CORPUS))
def test_file_level_damage_is_an_error_even_when_skipping(tmp_path, case, name, content, fmt, expected, words):
    path = write(tmp_path, name, content)
    for on_invalid in ("error", "skip"):
        with pytest.raises(DataError) as caught:
            load_file(path, fmt, on_invalid=on_invalid)
        assert str(caught.value).startswith(str(tmp_path / expected)) and words in str(caught.value)


def test_skip_with_no_valid_record_left_is_an_error(tmp_path):
    path = write(tmp_path, "t.txt", "a\nb||c\n")
    with pytest.raises(DataError, match=rf"^{path}: no valid records: all 2 are invalid; first: {path}:1, field"):
        load_file(path, "icot", on_invalid="skip")


def test_empty_steps_are_dropped_not_rejected(tmp_path):
    # Coconut's own files write steps [""] for an empty CoT, and GSM8k-Aug has empty CoTs: both are data.
    path = write(tmp_path, "t.json", json.dumps([{"question": "q", "steps": ["", "  "], "answer": "a"}]))
    [problem] = load_file(path)
    assert problem.steps == []


# --- the command line -----------------------------------------------------------------------------


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("corpus_case", RECORD_CORPUS + FILE_CORPUS, ids=ids(RECORD_CORPUS + FILE_CORPUS))
def test_cli_exits_2_with_one_stderr_line_for_every_bad_input(tmp_path, capsys, corpus_case):
    _, name, content, fmt, *_ = corpus_case
    path = write(tmp_path, name, content)
    argv = ["data", "stats", "--file", str(path), *(["--format", fmt] if fmt else [])]
    code, out, err = run_cli(capsys, argv)
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith(f"latentreason: error: {path}")


def test_cli_on_invalid_skip_counts_what_it_left_out(tmp_path, capsys):
    path = write(tmp_path, "t.json", coconut({**GOOD[0], "answer": 5}))
    code, out, err = run_cli(capsys, ["data", "stats", "--file", str(path), "--json", "--on-invalid", "skip"])
    assert code == 0
    assert json.loads(out)["count"] == 3
    assert f"{path}: skipped 1 invalid records" in err and f"{path} record 1, field 'answer'" in err


def test_debug_shows_the_traceback(tmp_path):
    path = write(tmp_path, "t.json", coconut({**GOOD[0], "answer": 5}))
    command = [sys.executable, "-m", "latentreason.cli", "data", "stats", "--file", str(path)]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=60)
    loud = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert loud.returncode == 1
    assert "Traceback (most recent call last)" in loud.stderr
    assert f"DataError: {path} record 1, field 'answer'" in loud.stderr


CONFIG_CORPUS = [
    ("unknown key", "max_step: 3\n", "unknown field 'max_step'", "did you mean 'max_steps'?"),
    ("mistyped value", "max_steps: three\n", "field 'max_steps'", "expected int, got 'three'"),
    ("bad choice", "on_invalid: ignore\n", "field 'on_invalid'", "expected one of ('error', 'skip')"),
    ("not a mapping", "- max_steps\n", "expected a mapping", ""),
    ("truncated YAML", "tiny_model: {hidden_size: 32\n", "not valid YAML", ""),
]


@pytest.mark.parametrize(("case", "text", "names", "words"), CONFIG_CORPUS, ids=ids(CONFIG_CORPUS))
def test_bad_config_is_one_line_naming_file_and_field(tmp_path, capsys, case, text, names, words):
    recipe = write(tmp_path, "recipe.yaml", f"output_dir: {tmp_path / 'run'}\n" if case != "not a mapping" else "")
    recipe.write_text(recipe.read_text() + text)
    code, _, err = run_cli(capsys, ["train", "--config", str(recipe)])
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("latentreason: error: ") and names in line and words in line
    assert str(recipe) in line or case == "bad choice"  # a cross-field check names the field, not the file
    assert not (tmp_path / "run").exists()


def test_train_and_eval_skip_bad_records_only_when_asked(tmp_path, capsys):
    from latentreason.data.generators import generate

    records = [{"question": p.question, "steps": p.steps, "answer": p.answer} for p in generate("chain", 32, 0)]
    path = write(tmp_path, "chain.json", json.dumps([*records, {"question": "q", "steps": [], "answer": 7}]))
    run = tmp_path / "run"
    train = ["train", "--method", "cot", "--dataset", str(path), "--output-dir", str(run), "--max-steps", "1"]
    train += ["--tiny-model", "{hidden_size: 32, num_hidden_layers: 2}", "--per-device-train-batch-size", "16"]
    train += ["--num-eval-examples", "0"]
    code, _, err = run_cli(capsys, train)
    assert code == 2 and err.strip().endswith(f"{path} record 32, field 'answer': expected a string, found a number")
    assert not run.exists()

    code, _, err = run_cli(capsys, [*train, "--on-invalid", "skip"])
    assert code == 0 and f"{path}: skipped 1 invalid records" in err
    out = tmp_path / "eval"
    evaluate = ["eval", "--model", str(run / "final"), "--file", str(path), "--output-dir", str(out), "--device", "cpu"]
    assert run_cli(capsys, evaluate)[0] == 2
    code, _, err = run_cli(capsys, [*evaluate, "--on-invalid", "skip", "--max-new-tokens", "4"])
    assert code == 0 and f"{path}: skipped 1 invalid records" in err
    assert json.loads((out / "results.json").read_text())["results"][0]["n"] == 32
