"""Loaders for the benchmark file formats; each returns a list of `Problem`.

Every record is validated; a bad one raises `DataError` naming the file, the line ('path:12') or the
JSON record ('path record 3', 0-based) and the field. With `on_invalid="skip"` a bad record is left
out instead and the count is reported on stderr; damage to the file as a whole (a JSON list that does
not parse, invalid UTF-8 in a JSON list, a Git LFS pointer, no valid record at all) is always an
error. The per-record converters (`*_to_problem`) are public so the benchmark registry can feed them
rows from the Hugging Face hub.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from latentreason.data.problems import Problem
from latentreason.errors import DataError, UserError

FORMATS = ("icot", "icot-mult", "coconut", "gsm8k", "gsm-hard", "svamp", "multiarith")
ON_INVALID = ("error", "skip")
# Longest question, step or answer accepted: real ones are under 10k characters; a megabyte of text
# is a broken file and would only fail later, far from its cause, in the tokenizer or the model.
MAX_TEXT_CHARS = 100_000

_ANNOTATION = re.compile(r"<<.*?>>")
_DIGITS = re.compile(r"\d( \d)*")
_MULT_QUESTION = re.compile(r"(\d(?: \d)*) \* (\d(?: \d)*)")
_GSM8K_NUMBER = re.compile(r"-?[\d,]*\.?\d+")
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_BOM = b"\xef\xbb\xbf"


# ---------------------------------------------------------------- reading files


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e
    raw = raw.removeprefix(_BOM)
    # Upstream keeps the large training sets in Git LFS; a clone without LFS leaves a pointer file.
    if raw.startswith(_LFS_POINTER):
        raise DataError(f"{path}:1", None, "this is a Git LFS pointer, not the data: run `git lfs pull`")
    return raw


def _decode(raw: bytes, path: Path, first_line: int = 1) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw[: e.start].count(b"\n")
        raise DataError(f"{path}:{line}", None, f"invalid UTF-8 (byte {e.start}): {e.reason}") from None


def _read_text(path: Path) -> str:
    return _decode(_read_bytes(path), path)


def _text_lines(path: Path) -> Iterator[tuple[str, str, tuple[int, bytes]]]:
    """(where, source, (line number, raw line)) for each non-blank line, numbered from 1. Lines are split
    on b'\\n' only (questions may hold U+2028) and decoded one by one: a bad byte costs only its line."""
    for number, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        if raw.strip():
            where = f"{path}:{number}"
            yield where, where, (number, raw.removesuffix(b"\r"))


def _parse_json(text: str, where: Callable[[int], str]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(where(e.lineno), None, f"invalid JSON: {e.msg} (column {e.colno})") from None


def _jsonl_record(line: tuple[int, bytes], path: Path, where: str) -> dict:
    """One (number, raw) line of a JSON Lines file as a record."""
    text = _decode(line[1], path, line[0])
    return _as_record(_parse_json(text, lambda _lineno: where), where)


def _json_records(path: Path) -> Iterator[tuple[str, str, Any]]:
    """(where, source, element) for each element of a file holding one JSON list."""
    data = _parse_json(_read_text(path), lambda lineno: f"{path}:{lineno}")
    if not isinstance(data, list):
        raise DataError(str(path), None, f"expected a JSON list of records, found {_kind(data)}")
    for index, record in enumerate(data):
        yield f"{path} record {index}", f"{path}#{index}", record


def _as_record(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(where, None, f"expected a JSON object, found {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


# ---------------------------------------------------------------- field checks


def _bounded(value: str, where: str, key: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise DataError(where, key, f"{len(value)} characters, more than the limit of {MAX_TEXT_CHARS}")
    return value


def _text(record: dict, key: str, where: str, *, allow_empty: bool = False) -> str:
    if key not in record:
        raise DataError(where, key, "missing (expected a string)")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(where, key, f"expected a string, found {_kind(value)}")
    if not allow_empty and not value.strip():
        raise DataError(where, key, "must not be empty")
    return _bounded(value, where, key)


def _string_list(record: dict, key: str, where: str) -> list[str]:
    if key not in record:
        raise DataError(where, key, "missing (expected a list of strings)")
    value = record[key]
    if not isinstance(value, list):
        raise DataError(where, key, f"expected a list of strings, found {_kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(where, key, f"expected a list of strings, found {_kind(item)} at index {index}")
        _bounded(item, where, key)
    return value


def _number(record: dict, key: str, where: str) -> float:
    if key not in record:
        raise DataError(where, key, "missing (expected a number)")
    value = record[key]
    # bool is an int subclass; a True answer is a data bug, not the number 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(where, key, f"expected a number, found {_kind(value)}")
    if not math.isfinite(value):
        raise DataError(where, key, f"expected a finite number, found {value}")
    return value


def numeric_answer(value: float) -> str:
    """Answer text for a numeric answer: 18.0 -> '18', 2.5 -> '2.5' (shortest repr otherwise)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _check_question_answer(question: str, answer: str, where: str) -> None:
    if not question:
        raise DataError(where, "question", "must not be empty")
    if not answer:
        raise DataError(where, "answer", "must not be empty")
    _bounded(question, where, "question")
    _bounded(answer, where, "answer")


# ---------------------------------------------------------------- record converters


def _split_icot_line(line: str, where: str) -> tuple[str, str, str]:
    """'question||cot #### answer' -> (question, cot, answer), all stripped."""
    if line.count("||") != 1:
        found = "no" if "||" not in line else "more than one"
        raise DataError(where, "question", f"expected 'question||steps #### answer', found {found} '||'")
    question, rest = line.split("||")
    cot, sep, answer = rest.rpartition("####")
    if not sep:
        raise DataError(where, "answer", "expected '#### <answer>' after the steps")
    question, cot, answer = question.strip(), cot.strip(), answer.strip()
    _check_question_answer(question, answer, where)
    return question, cot, answer


def icot_line_to_problem(line: str, where: str) -> Problem:
    """One line of iCoT text (GSM8k-Aug): steps are the '<<...>>' calculator groups, in order."""
    question, cot, answer = _split_icot_line(line, where)
    if not _GSM8K_NUMBER.fullmatch(answer):
        raise DataError(where, "answer", f"expected a number after '####', found {answer[:40]!r}")
    _bounded(cot, where, "steps")
    groups = _ANNOTATION.findall(cot)
    if cot.count("<<") != len(groups) or cot.count(">>") != len(groups):
        raise DataError(where, "steps", "unbalanced '<<' / '>>' in the steps")
    if _ANNOTATION.sub("", cot).strip():
        # Free-text CoT (e.g. train_no_aug.txt): keep it whole rather than drop the words.
        steps = [cot]
    else:
        steps = groups
    return Problem(question=question, steps=steps, answer=answer)


def _reversed_digits(digits: str) -> int:
    return int(digits.replace(" ", "")[::-1])


def icot_mult_line_to_problem(line: str, where: str) -> Problem:
    """One line of iCoT multiplication; digits are least significant first."""
    question, cot, answer = _split_icot_line(line, where)
    match = _MULT_QUESTION.fullmatch(question)
    if not match:
        raise DataError(where, "question", "expected '<digits> * <digits>' with space-separated digits")
    if not _DIGITS.fullmatch(answer):
        raise DataError(where, "answer", "expected space-separated digits, e.g. '5 5 6 0 8 2 0 1'")
    a, b, product = _reversed_digits(match[1]), _reversed_digits(match[2]), _reversed_digits(answer)
    if a * b != product:
        raise DataError(where, "answer", f"expected the product {a} * {b} = {a * b}, found {product}")
    if not re.fullmatch(r"[\d ()+]*", cot):
        raise DataError(where, "steps", "expected digits, ' + ' and '( ... )' running sums only")
    # Split before each ' + ' so that ' '.join(steps) gives back the CoT exactly.
    parts = cot.split(" + ") if cot else []
    steps = parts[:1] + ["+ " + part for part in parts[1:]]
    return Problem(question=question, steps=steps, answer=answer, meta={"answer_value": product})


def coconut_record_to_problem(record: dict, where: str) -> Problem:
    """A Coconut JSON record {question, steps, answer, ...}; other fields go into meta."""
    question = _text(record, "question", where).strip()
    # Coconut's own conversion writes steps [""] when the CoT is empty; an empty step carries nothing.
    steps = [step for step in _string_list(record, "steps", where) if step.strip()]
    answer = _text(record, "answer", where).strip()
    meta = {key: value for key, value in record.items() if key not in ("question", "steps", "answer")}
    return Problem(question=question, steps=steps, answer=answer, meta=meta)


def gsm8k_record_to_problem(record: dict, where: str) -> Problem:
    """A GSM8K record {question, answer}; the answer text ends with a line '#### <number>'."""
    question = _text(record, "question", where).strip()
    text = _text(record, "answer", where).strip()
    solution, _, last = text.rpartition("\n")
    number = last.removeprefix("####").strip()
    if not last.startswith("####") or not _GSM8K_NUMBER.fullmatch(number):
        raise DataError(where, "answer", "expected a final line '#### <number>'")
    steps = _ANNOTATION.findall(solution)
    # The calculator annotations are in `steps`; the solution keeps only the words.
    natural = _ANNOTATION.sub("", solution).strip()
    return Problem(question=question, steps=steps, answer=number.replace(",", ""), meta={"solution": natural})


def gsm_hard_record_to_problem(record: dict, where: str) -> Problem:
    """A GSM-Hard record {input, code, target}; target is a float."""
    question = _text(record, "input", where).strip()
    answer = numeric_answer(_number(record, "target", where))
    code = _text(record, "code", where, allow_empty=True)
    return Problem(question=question, steps=[], answer=answer, meta={"code": code})


def svamp_record_to_problem(record: dict, where: str) -> Problem:
    """A SVAMP record {ID, Body, Question, Equation, Answer, Type}; question = Body + Question."""
    body = _text(record, "Body", where, allow_empty=True)
    asked = _text(record, "Question", where)
    equation = _text(record, "Equation", where).strip()
    answer = numeric_answer(_number(record, "Answer", where))
    # SVAMP text has stray double spaces; collapse all runs of whitespace.
    question = " ".join(f"{body} {asked}".split())
    meta = {"id": record.get("ID"), "type": record.get("Type")}
    return Problem(question=question, steps=[equation], answer=answer, meta=meta)


def multiarith_record_to_problem(record: dict, where: str) -> Problem:
    """A MultiArith record {iIndex, sQuestion, lEquations, lSolutions, lAlignments}."""
    question = _text(record, "sQuestion", where).strip()
    equations = [eq.strip() for eq in _string_list(record, "lEquations", where) if eq.strip()]
    solutions = record.get("lSolutions")
    if not isinstance(solutions, list) or not solutions:
        raise DataError(where, "lSolutions", f"expected a non-empty list of numbers, found {_kind(solutions)}")
    answer = numeric_answer(_number({"lSolutions": solutions[0]}, "lSolutions", where))
    return Problem(question=question, steps=equations, answer=answer, meta={"id": record.get("iIndex")})


# ---------------------------------------------------------------- file loaders


class InvalidRecords:
    """`on_invalid` for one source: re-raise a bad record's `DataError`, or count it and report once."""

    def __init__(self, on_invalid: str, source: str):
        if on_invalid not in ON_INVALID:
            raise UserError(f"on_invalid: expected one of {', '.join(ON_INVALID)}, got {on_invalid!r}")
        self.skip, self.source, self.errors = on_invalid == "skip", source, []

    def handle(self, error: DataError) -> None:
        if not self.skip:
            raise error
        self.errors.append(error)

    def report(self) -> None:
        if self.errors:
            count, first = len(self.errors), self.errors[0]
            print(f"{self.source}: skipped {count} invalid records (on_invalid=skip); first: {first}", file=sys.stderr)

    def check_nonempty(self, problems: list[Problem]) -> list[Problem]:
        if self.errors and not problems:
            first = self.errors[0]
            raise DataError(self.source, None, f"no valid records: all {len(self.errors)} are invalid; first: {first}")
        if not problems:
            raise DataError(self.source, None, "no records found (the file is empty)")
        self.report()
        return problems


def _load(
    items: Iterator[tuple[str, str, Any]], path: Path, build: Callable[[Any, str], Problem], on_invalid: str
) -> list[Problem]:
    """Problems built from (where, source, raw) items; a bad item is handled as `on_invalid` says."""
    invalid = InvalidRecords(on_invalid, str(path))
    problems = []
    for where, source, raw in items:
        try:
            problem = build(raw, where)
        except DataError as error:
            invalid.handle(error)
            continue
        problem.meta["source"] = source
        problems.append(problem)
    return invalid.check_nonempty(problems)


def _load_lines(path: Path, convert: Callable[[str, str], Problem], on_invalid: str) -> list[Problem]:
    def build(line: tuple[int, bytes], where: str) -> Problem:
        return convert(_decode(line[1], path, line[0]), where)

    return _load(_text_lines(path), path, build, on_invalid)


def _load_jsonl(path: Path, convert: Callable[[dict, str], Problem], on_invalid: str) -> list[Problem]:
    def build(line: tuple[int, bytes], where: str) -> Problem:
        return convert(_jsonl_record(line, path, where), where)

    return _load(_text_lines(path), path, build, on_invalid)


def _load_json(path: Path, convert: Callable[[dict, str], Problem], on_invalid: str) -> list[Problem]:
    def build(element: Any, where: str) -> Problem:
        return convert(_as_record(element, where), where)

    return _load(_json_records(path), path, build, on_invalid)


def load_icot(path: str | Path, on_invalid: str = "error") -> list[Problem]:
    """iCoT text, one 'question||<<a=b>> <<c=d>> #### answer' per line (GSM8k-Aug)."""
    return _load_lines(Path(path), icot_line_to_problem, on_invalid)


def load_icot_mult(path: str | Path, on_invalid: str = "error") -> list[Problem]:
    """iCoT multiplication text ('5 6 3 2 * 7 4 3 4||... #### 5 5 6 0 8 2 0 1')."""
    return _load_lines(Path(path), icot_mult_line_to_problem, on_invalid)


def load_coconut(path: str | Path, on_invalid: str = "error") -> list[Problem]:
    """Coconut JSON: a list of {question, steps, answer, ...} (GSM8k-Aug json, ProsQA, ProntoQA)."""
    return _load_json(Path(path), coconut_record_to_problem, on_invalid)


def write_coconut(problems: list[Problem], path: str | Path) -> None:
    """Write `problems` as Coconut JSON, the format `load_coconut` (and `eval --file`) reads back."""
    records = [{"question": p.question, "steps": p.steps, "answer": p.answer} for p in problems]
    Path(path).write_text(json.dumps(records, indent=1))


def load_gsm8k(path: str | Path, on_invalid: str = "error") -> list[Problem]:
    """GSM8K JSON Lines {question, answer}."""
    return _load_jsonl(Path(path), gsm8k_record_to_problem, on_invalid)


def load_gsm_hard(path: str | Path, on_invalid: str = "error") -> list[Problem]:
    """GSM-Hard JSON Lines {input, code, target}."""
    return _load_jsonl(Path(path), gsm_hard_record_to_problem, on_invalid)


def load_svamp(path: str | Path, on_invalid: str = "error") -> list[Problem]:
    """SVAMP JSON list."""
    return _load_json(Path(path), svamp_record_to_problem, on_invalid)


def load_multiarith(path: str | Path, on_invalid: str = "error") -> list[Problem]:
    """MultiArith JSON list."""
    return _load_json(Path(path), multiarith_record_to_problem, on_invalid)


# Each loader: (path, on_invalid="error") -> problems.
LOADERS: dict[str, Callable[..., list[Problem]]] = {
    "icot": load_icot,
    "icot-mult": load_icot_mult,
    "coconut": load_coconut,
    "gsm8k": load_gsm8k,
    "gsm-hard": load_gsm_hard,
    "svamp": load_svamp,
    "multiarith": load_multiarith,
}

CONVERTERS: dict[str, Callable[[Any, str], Problem]] = {
    "icot": icot_line_to_problem,
    "icot-mult": icot_mult_line_to_problem,
    "coconut": coconut_record_to_problem,
    "gsm8k": gsm8k_record_to_problem,
    "gsm-hard": gsm_hard_record_to_problem,
    "svamp": svamp_record_to_problem,
    "multiarith": multiarith_record_to_problem,
}


# ---------------------------------------------------------------- format detection


def _format_of_keys(keys: set[str]) -> str | None:
    if {"question", "steps", "answer"} <= keys:
        return "coconut"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    if {"input", "target"} <= keys:
        return "gsm-hard"
    if {"Body", "Question", "Answer"} <= keys:
        return "svamp"
    if {"sQuestion", "lSolutions"} <= keys:
        return "multiarith"
    return None


def detect_format(path: str | Path) -> str | None:
    """The format name for a file, from its extension and first record; None when unclear."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".json"):
        return None
    # Only the first record matters here; a bad byte later is reported (or skipped) by the loader.
    text = _read_bytes(path).decode("utf-8", errors="replace")
    if suffix == ".json":
        # Decode only the first record: enough to see the keys, and the loader reports later damage.
        start = re.match(r"\s*\[\s*", text)
        try:
            record, _ = json.JSONDecoder().raw_decode(text, start.end() if start else 0)
        except json.JSONDecodeError:
            return None
        return _format_of_keys(set(record)) if isinstance(record, dict) else None
    first = next((line for line in text.split("\n") if line.strip()), None)
    if first is None:
        return None
    if suffix == ".jsonl":
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            return None
        return _format_of_keys(set(record)) if isinstance(record, dict) else None
    if "||" not in first:
        return None
    return "icot-mult" if _MULT_QUESTION.fullmatch(first.split("||")[0].strip()) else "icot"


def load_file(path: str | Path, fmt: str | None = None, on_invalid: str = "error") -> list[Problem]:
    """Load a data file in the named format, or guess the format from the file name and content."""
    path = Path(path)
    names = ", ".join(FORMATS)
    if fmt is None:
        if not path.is_file():
            raise UserError(f"file not found: {path}")
        fmt = detect_format(path)
        if fmt is None:
            raise UserError(
                f"cannot tell the format of {path} from its name and first record; name it explicitly, one of: {names}"
            )
    if fmt not in LOADERS:
        raise UserError(f"unknown format {fmt!r}; expected one of: {names}")
    return LOADERS[fmt](path, on_invalid)
