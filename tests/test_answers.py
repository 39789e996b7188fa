"""Answer extraction and equivalence: number formats, extraction modes, sentence answers, math_verify."""

from __future__ import annotations

import builtins
import importlib.util
import threading
from fractions import Fraction

import pytest

from latentreason.data import answers
from latentreason.data.answers import (
    answers_equivalent,
    extract_answer,
    format_number,
    guess_kind,
    is_correct,
    normalize_number,
    normalize_text,
    parse_number,
)

HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18", "18"),
        ("1,234", "1234"),
        ("1,234,567", "1234567"),
        ("$18", "18"),
        ("$1,200.00", "1200"),
        ("-$5", "-5"),
        ("$-5", "-5"),
        ("18.", "18"),
        ("$18.", "18"),
        ("-9867630.0", "-9867630"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("1/2", "0.5"),
        ("3/4", "0.75"),
        ("6/4", "1.5"),
        ("1/3", "1/3"),
        ("-2/6", "-1/3"),
        ("-0.05", "-0.05"),
        ("+7", "7"),
        ("\u22123", "-3"),
        ("  42  ", "42"),
        ("50%", "50"),
        ("007", "7"),
    ],
)
def test_normalize_number(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", ".", "x", "18 apples", "x=5", "1/0", "1e5", "-$-5", "five", "1.2.3", "\\frac{1}{2}"]
)
def test_normalize_number_rejects_non_numbers(raw: str) -> None:
    assert normalize_number(raw) is None
    assert parse_number(raw) is None


def test_percent_as_fraction() -> None:
    assert normalize_number("50%", percent_as_fraction=True) == "0.5"
    assert parse_number("12.5%", percent_as_fraction=True) == Fraction(1, 8)


@pytest.mark.parametrize(
    ("value", "text"),
    [(Fraction(18), "18"), (Fraction(-1, 2), "-0.5"), (Fraction(1, 40), "0.025"), (Fraction(2, 3), "2/3")],
)
def test_format_number_round_trips(value: Fraction, text: str) -> None:
    assert format_number(value) == text
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("<<16-3-4=9>><<9*2=18>> ### 18", "18", "18"),
        ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18", "18", "18"),
        ("#### 18 apples, then 3 more", "18", "3"),
        ("####18", "18", "18"),
        ("#### -5", "-5", "-5"),
        ("#### $1,200 is the price", "$1,200", "$1,200"),
        ("The answer is 5", None, "5"),
        ("### The answer is 5", None, "5"),
        ("She has 5, 6 and 7. The total is 1,234.", None, "1,234"),
        ("16-3", None, "3"),  # a subtraction, not a negative 3
        ("it went down by -5", None, "-5"),
        ("half is 1/2", None, "1/2"),
        ("about 0.5.", None, "0.5"),
        ("#### 12 #### 13", "13", "13"),  # the last marked answer, as Coconut reads it
        ("no number here", None, None),
        ("", None, None),
        ("####", None, None),
    ],
)
def test_strict_and_flexible_extraction(text: str, strict: str | None, flexible: str | None) -> None:
    assert extract_answer(text, "strict") == strict
    assert extract_answer(text, "flexible") == flexible


def test_flexible_is_the_default_mode() -> None:
    assert extract_answer("2 + 3 = 5, then 5 * 4 = 20") == "20"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<bot><eot> ### Tom is a lempus.", "Tom is a lempus."),
        ("Every yumpus is a lempus. ### Tom is a lempus.\nQuestion: Is Sam a ...", "Tom is a lempus."),
        ("### True", "True"),
        ("#   False  ", "False"),
        ("True", "True"),
        ("### 5 5 6 0 8 2 0 1", "5 5 6 0 8 2 0 1"),
        ("###\n\n  Tom is a wumpus.  \n", "Tom is a wumpus."),
        ("###   ", None),
        ("", None),
    ],
)
def test_sentence_extraction(text: str, expected: str | None) -> None:
    assert extract_answer(text, "sentence") == expected


def test_unknown_mode_and_kind_are_rejected() -> None:
    with pytest.raises(ValueError, match="strict"):
        extract_answer("#### 1", "exact")
    with pytest.raises(ValueError, match="number"):
        answers_equivalent("1", "1", kind="float")


@pytest.mark.parametrize(
    ("pred", "ref", "equal"),
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("18.", "18", True),
        ("$18", "18", True),
        ("1,234", "1234", True),
        ("-9867630.0", "-9867630", True),
        ("0.50", ".5", True),
        ("1/2", "0.5", True),
        ("2/4", "1/2", True),
        ("4", "14", False),
        ("14", "4", False),
        ("-5", "5", False),
        ("0.333333", "1/3", False),  # exact rationals: a rounded decimal is not a third
        ("18", "18.5", False),
        (None, "18", False),
        ("", "18", False),
    ],
)
def test_number_equivalence(pred: str | None, ref: str, equal: bool) -> None:
    assert answers_equivalent(pred, ref, "number") is equal


@pytest.mark.parametrize(
    ("pred", "ref", "equal"),
    [
        ("tom is a lempus", "Tom is a lempus.", True),
        ("Tom  is a\tlempus.", "Tom is a lempus.", True),
        ("Tom is a lempus..", "Tom is a lempus.", True),
        ("Tom is not a lempus.", "Tom is a lempus.", False),
        ("Tom is a wumpus.", "Tom is a lempus.", False),
        ("True", "true", True),
        ("true.", "True", True),
        ("False", "True", False),
        ("5 5 6 0 8 2 0 1", "5 5 6 0 8 2 0 1", True),
        ("5  5 6 0 8 2 0 1", "5 5 6 0 8 2 0 1", True),
        ("5 5 6 0 8 2 0 2", "5 5 6 0 8 2 0 1", False),
        ("5 5 6 0 8 2 0", "5 5 6 0 8 2 0 1", False),
        (None, "True", False),
    ],
)
def test_text_equivalence(pred: str | None, ref: str, equal: bool) -> None:
    assert answers_equivalent(pred, ref, "text") is equal


def test_normalize_text() -> None:
    assert normalize_text("  Tom   IS a Lempus. ") == "tom is a lempus"


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("18", "number"),
        ("-3.5", "number"),
        ("1,234", "number"),
        ("\\frac{1}{2}", "number"),
        ("True", "text"),
        ("Tom is a lempus.", "text"),
        ("5 5 6 0 8 2 0 1", "text"),  # a multiplication digit string is compared as text
    ],
)
def test_guess_kind(ref: str, kind: str) -> None:
    assert guess_kind(ref) == kind


@pytest.mark.parametrize(
    ("generated", "ref", "kind", "mode", "correct"),
    [
        ("<<16-3-4=9>><<9*2=18>> ### 18", "18", None, None, True),
        ("<<16-3-4=9>><<9*2=18>> ### 18", "18", "number", "strict", True),
        ("9 eggs at $2 each is $18", "18", None, None, True),
        ("9 eggs at $2 each is $18", "18", None, "strict", False),  # no '#' marker
        ("#### 4", "14", None, None, False),
        ("#### 14", "4", None, None, False),
        ("#### 18.00", "18", None, None, True),
        ("#### 18 and then 3", "18", None, "strict", True),
        ("#### 18 and then 3", "18", None, None, False),  # flexible reads the last number
        ("I don't know", "18", None, None, False),
        ("<bot><latent><eot> ### Tom is a lempus.", "Tom is a lempus.", None, None, True),
        ("### tom is a lempus", "Tom is a lempus.", None, None, True),
        ("### Tom is a wumpus.", "Tom is a lempus.", None, None, False),
        ("### True", "True", None, None, True),
        ("### False", "True", None, None, False),
        ("### 5 5 6 0 8 2 0 1", "5 5 6 0 8 2 0 1", None, None, True),
        ("### 5 5 6 0 8 2 0 2", "5 5 6 0 8 2 0 1", None, None, False),
    ],
)
def test_is_correct(generated: str, ref: str, kind: str | None, mode: str | None, correct: bool) -> None:
    assert is_correct(generated, ref, kind=kind, mode=mode) is correct


@pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify is not installed (pip install math-verify)")
@pytest.mark.parametrize(
    ("pred", "ref", "equal"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("$\\frac{3}{4}$", "3/4", True),
        ("\\boxed{18}", "18", True),
        ("\\frac{1}{3}", "0.5", False),
        ("\\sqrt{4}", "2", True),
    ],
)
def test_math_verify_fallback(pred: str, ref: str, equal: bool) -> None:
    assert answers_equivalent(pred, ref, "number") is equal


@pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify is not installed (pip install math-verify)")
def test_math_verify_fallback_outside_the_main_thread() -> None:
    # math_verify's own timeout uses signal.alarm, which raises outside the main thread.
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(answers_equivalent("\\frac{1}{2}", "0.5")))
    worker.start()
    worker.join()
    assert results == [True]


@pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify is not installed (pip install math-verify)")
def test_is_correct_with_latex_answer_in_sentence_mode() -> None:
    assert is_correct("### \\frac{1}{2}", "0.5", kind="number", mode="sentence")
    assert not is_correct("### \\frac{1}{3}", "0.5", kind="number", mode="sentence")


def test_without_math_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_math_verify(name: str, *args: object, **kwargs: object) -> object:
        if name == "math_verify" or name.startswith("math_verify."):
            raise ImportError("math_verify hidden for this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "math_verify", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    # Plain numbers and text still work; LaTeX can no longer be shown equal.
    assert answers_equivalent("1/2", "0.5")
    assert answers_equivalent("1,234.0", "1234")
    assert not answers_equivalent("4", "14")
    assert answers_equivalent("true", "True.", "text")
    assert not answers_equivalent("\\frac{1}{2}", "0.5")
    assert not answers._math_verify_equal("0.5", "0.5")
    assert is_correct("<<9*2=18>> ### 18", "18")


# --- boxed answers (chat models) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so \\boxed{18}.", "18"),
        ("\\boxed{3} first, then \\boxed{18}", "18"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{ {a}{b} }", "{a}{b}"),
        ("\\boxed{5} then \\boxed{6", "5"),  # a box left open (cut at the token limit) is skipped
        ("\\fbox{7}", "7"),
        ("\\boxed{4} ... so the final answer is within \\boxed{}.", "4"),  # an echoed empty box is no answer
        ("The final answer is within \\boxed{ }.", None),
        ("no box, 18", None),
        ("\\boxed{", None),
    ],
)
def test_last_boxed_balances_braces(text: str, content: str | None) -> None:
    assert answers.last_boxed(text) == content


@pytest.mark.parametrize(
    ("text", "boxed", "auto"),
    [
        ("It is 9 eggs. \\boxed{18}", "18", "18"),
        ("\\boxed{\\$18}", "$18", "$18"),
        ("\\boxed{\\$1,200.00}", "$1,200.00", "$1,200.00"),
        ("\\boxed{1{,}234}", "1,234", "1,234"),
        ("\\boxed{50\\%}", "50%", "50%"),
        ("\\boxed{18 \\text{ dollars}}", "18", "18"),
        ("\\boxed{$18$}", "18", "18"),
        ("\\boxed{\\text{True}}", "True", "True"),
        ("The answer is 12. The answer is 12.", None, "12"),  # no box: boxed reads nothing, auto the last number
        ("", None, None),
    ],
)
def test_boxed_and_auto_extraction(text: str, boxed: str | None, auto: str | None) -> None:
    assert extract_answer(text, "boxed") == boxed
    assert extract_answer(text, "auto") == auto


@pytest.mark.parametrize(
    ("generated", "ref", "mode", "correct"),
    [
        ("9 * 2 = 18, so \\boxed{18}", "18", "boxed", True),
        ("\\boxed{\\$18.00}", "18", "boxed", True),
        ("\\boxed{17} and 18", "18", "auto", False),  # the box wins over a later number
        ("18", "18", "boxed", False),  # no box
        ("18", "18", "auto", True),
        ("So, the answer is 48.\n\nThe final answer is within \\boxed{}.", "48", "auto", True),
        ("\\boxed{Tom is a lempus.}", "Tom is a lempus.", "auto", True),  # a sentence answer read as a sentence
        ("Tom is a lempus.", "Tom is a lempus.", "auto", True),
        ("### \\boxed{False}", "True", "sentence", False),
        ("### 18", "18", "strict", True),  # strict and flexible do not look at boxes
        ("\\boxed{18} #### 17", "18", "strict", False),
    ],
)
def test_is_correct_with_boxes(generated: str, ref: str, mode: str, correct: bool) -> None:
    assert is_correct(generated, ref, mode=mode) is correct


@pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify is not installed (pip install math-verify)")
def test_boxed_latex_is_compared_by_math_verify() -> None:
    assert is_correct("so \\boxed{\\frac{1}{2}}", "0.5", mode="boxed")
    assert is_correct("\\boxed{\\dfrac{3}{4}}", "3/4", mode="auto")
    assert not is_correct("\\boxed{\\frac{1}{3}}", "0.5", mode="boxed")
