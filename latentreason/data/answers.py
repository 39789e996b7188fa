"""Pull the final answer out of generated text and decide whether it matches the reference.

Numbers are compared as exact rationals (``fractions.Fraction``), never through floats or ``eval``:
"18.0" == "18", "1/2" == "0.5", "4" != "14". Sentence answers (ProsQA, ProntoQA, digit strings) are
compared after case, whitespace and trailing-period normalisation. The optional ``math_verify``
package, when installed, is a fallback for answers that are not plain numbers (LaTeX such as
``\\frac{1}{2}``).

Chat models are asked to put their answer in ``\\boxed{}``: mode ``boxed`` reads only that, ``auto``
reads the box when there is one and the last number otherwise (see `extract_answer`).
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from fractions import Fraction
from typing import Literal

Mode = Literal["strict", "flexible", "sentence", "boxed", "auto"]
Kind = Literal["number", "text"]
MODES: tuple[str, ...] = ("strict", "flexible", "sentence", "boxed", "auto")
KINDS: tuple[str, ...] = ("number", "text")

# One number as it appears in prose: optional sign and currency, digits with optional thousands
# commas, an optional decimal part or "/denominator", an optional percent sign. The look-behind keeps
# the "-" of "16-3" (a subtraction) and digits glued to a word ("x2") from starting a number.
_NUMBER = (
    r"(?<![\w.])[-\u2212]?\$?"
    r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)"
    r"%?"
)
_NUMBER_RE = re.compile(_NUMBER)
# Strict mode: a number right at the start of the text after the last '#' run ("#### 18", "### 18").
_MARKED_RE = re.compile(r"\s*(" + _NUMBER + r")")
# A whole string that is one number (commas and a trailing full stop already removed).
_VALUE_RE = re.compile(
    r"(?P<sign>[+-])?\s*[$€£]?\s*(?P<sign2>[+-])?\s*"
    r"(?:(?P<num>\d+)\s*/\s*(?P<den>\d+)|(?P<dec>\d+(?:\.\d*)?|\.\d+))"
    r"\s*(?P<pct>%)?"
)


# The start of a box; its content runs to the matching closing brace (found by counting, not by regex).
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# \text{...} and friends around words or units inside a box: their content is kept.
_TEXT_COMMAND_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
# LaTeX spellings of characters a plain number may carry: \$18, 50\%, 1{,}234, thin spaces.
_LATEX_CHARS = (("\\$", "$"), ("\\%", "%"), ("{,}", ","), ("\\,", ""), ("\\!", ""), ("\\ ", " "), ("~", " "))
# A number followed only by words ("18 dollars" once \text{} is unwrapped): the number is the answer.
_NUMBER_THEN_WORDS_RE = re.compile(r"(" + _NUMBER + r")\s+[A-Za-z][A-Za-z .]*")


def last_boxed(text: str) -> str | None:
    """The content of the last closed ``\\boxed{...}`` (or ``\\fbox{...}``) in `text`, braces balanced, or None.

    ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. A box left open (output cut at the token limit) and
    an empty one (a small model echoing "put your final answer within \\boxed{}") are skipped in favour of
    an earlier box.
    """
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth = 1
        for end in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                content = text[match.end() : end].strip()
                if content:
                    return content
                break
    return None


def _box_answer(content: str) -> str:
    """A box's content as an answer: \\text{} unwrapped, LaTeX-escaped characters plain, math `$` dropped,
    a unit after a number dropped ("18 dollars" -> "18"); anything else kept for math_verify."""
    plain = _TEXT_COMMAND_RE.sub(r"\1", content)
    for latex, char in _LATEX_CHARS:
        plain = plain.replace(latex, char)
    plain = plain.strip()
    if plain.startswith("$") and plain.endswith("$") and len(plain) > 1:  # $...$ math, not a price
        plain = plain[1:-1].strip()
    units = _NUMBER_THEN_WORDS_RE.fullmatch(plain)
    return units.group(1) if units else plain


def _tail_after_hashes(text: str) -> str | None:
    """The text after the last '#', or None when there is no '#'."""
    if "#" not in text:
        return None
    return text.rsplit("#", 1)[1]


def extract_answer(text: str, mode: str = "flexible") -> str | None:
    """The answer part of a model's generated text (the continuation after the question).

    strict: the number right after the last '#' run ("... #### 18" or Coconut's "... ### 18").
    flexible: the last number anywhere in the text.
    sentence: the content of the last ``\\boxed{}`` when there is one, else the first non-empty line
    after the last '#' (the whole text when there is no '#'), stripped; for answers such as
    "Tom is a lempus." or "True".
    boxed: the content of the last ``\\boxed{}`` only (None without a box: the format is part of the
    score), with ``\\text{}`` unwrapped, ``\\$``/``\\%`` made plain and a trailing unit dropped.
    auto: as boxed when the text has a box, else as flexible (a chat model that forgot the box still
    gets its last number read; `is_correct` uses sentence instead for sentence answers).
    Returns None when nothing fits. Numbers come back as written ("$1,234"); pass them through
    `normalize_number` or `answers_equivalent` to compare.
    """
    if mode not in MODES:
        raise ValueError(f"unknown answer extraction mode {mode!r}; expected one of {', '.join(MODES)}")
    boxed = last_boxed(text)
    if boxed is not None and mode in ("boxed", "auto", "sentence"):
        return _box_answer(boxed)
    if mode == "boxed":
        return None
    if mode == "strict":
        tail = _tail_after_hashes(text)
        if tail is None:
            return None
        match = _MARKED_RE.match(tail)
        return match.group(1) if match else None
    if mode in ("flexible", "auto"):
        numbers = _NUMBER_RE.findall(text)
        return numbers[-1] if numbers else None
    tail = _tail_after_hashes(text)
    body = text if tail is None else tail
    # Only the first line: a model that keeps generating after its answer adds unrelated lines.
    for line in body.splitlines():
        if line.strip():
            return line.strip()
    return None


def parse_number(s: str, *, percent_as_fraction: bool = False) -> Fraction | None:
    """The exact value of a number written as text, or None when `s` is not just a number.

    Accepts "1,234", "$5", "-$5", "-9867630.0", ".5", "3/4", "18." (a sentence's full stop),
    "50%" (read as 50 unless `percent_as_fraction`, then as 1/2), a leading "+" and the Unicode
    minus sign. Anything else around the number ("18 apples", "x=5") gives None.
    """
    t = s.strip().replace("\u2212", "-").replace(",", "").rstrip(".")
    match = _VALUE_RE.fullmatch(t)
    if match is None or (match["sign"] and match["sign2"]):
        return None
    if match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        value = Fraction(int(match["num"]), int(match["den"]))
    else:
        value = Fraction(Decimal(match["dec"]))
    if match["pct"] and percent_as_fraction:
        value /= 100
    return -value if "-" in (match["sign"] or "", match["sign2"] or "") else value


def format_number(value: Fraction) -> str:
    """A canonical text form: "18", "-0.5", "1.25", or "p/q" when the decimal would not terminate."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def normalize_number(s: str, *, percent_as_fraction: bool = False) -> str | None:
    """`s` in canonical form (see `format_number`), or None when it is not a number.

    Two strings normalise to the same text exactly when they denote the same rational number:
    "1,234" -> "1234", "$18." -> "18", "-9867630.0" -> "-9867630", ".5" and "1/2" -> "0.5".
    """
    value = parse_number(s, percent_as_fraction=percent_as_fraction)
    return None if value is None else format_number(value)


def normalize_text(s: str) -> str:
    """Lower-cased, runs of whitespace collapsed, trailing full stops dropped."""
    return " ".join(s.split()).lower().rstrip(".").rstrip()


def _as_latex(s: str) -> str:
    """Bare LaTeX ("\\sqrt{4}") wrapped in $...$, which math_verify needs to find some expressions."""
    return f"${s.strip()}$" if "\\" in s and "$" not in s else s


def _math_verify_equal(pred: str, ref: str) -> bool:
    """math_verify's judgement, or False when the package is missing or cannot parse either side."""
    try:
        import math_verify
    except ImportError:
        return False
    # math_verify times out with signal.alarm, which only works in the main thread.
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    try:
        gold = math_verify.parse(_as_latex(ref), parsing_timeout=timeout)
        target = math_verify.parse(_as_latex(pred), parsing_timeout=timeout)
        if not gold or not target:
            return False
        return bool(math_verify.verify(gold, target, timeout_seconds=timeout))
    # A parser failure on odd model output means "not shown equal", not a crash of the evaluation.
    except Exception:  # noqa: BLE001
        return False


def answers_equivalent(pred: str | None, ref: str, kind: str = "number") -> bool:
    """Whether the predicted answer `pred` matches the reference `ref`.

    kind="number": exact rational comparison after `parse_number`; if either side is not a plain
    number (e.g. LaTeX), math_verify decides when installed, otherwise the answer is wrong.
    kind="text": equal after `normalize_text` ("tom is a lempus" == "Tom is a lempus.").
    """
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if pred is None or not pred.strip():
        return False
    if kind == "text":
        return normalize_text(pred) == normalize_text(ref)
    p, r = parse_number(pred), parse_number(ref)
    if p is not None and r is not None:
        return p == r
    return _math_verify_equal(pred, ref)


def guess_kind(reference: str) -> str:
    """ "number" for a numeric reference (or a LaTeX one, such as "\\frac{1}{2}"), else "text"."""
    if parse_number(reference) is not None or "\\" in reference:
        return "number"
    return "text"


def default_mode(kind: str) -> str:
    """The extraction mode `is_correct` uses when none is given: last number, or the sentence."""
    return "flexible" if kind == "number" else "sentence"


def is_correct(generated_text: str, problem_answer: str, kind: str | None = None, mode: str | None = None) -> bool:
    """Whether the model's generated text answers the problem whose reference answer is given.

    `kind` defaults to `guess_kind(problem_answer)` and `mode` to `default_mode(kind)`; mode "auto"
    reads a sentence answer in sentence mode.
    """
    kind = kind or guess_kind(problem_answer)
    mode = mode or default_mode(kind)
    if mode == "auto" and kind == "text":
        mode = "sentence"
    return answers_equivalent(extract_answer(generated_text, mode), problem_answer, kind)
