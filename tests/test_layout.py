"""encode_problem: the pieces a problem becomes, tokenized as the tokenizer's own call tokenizes each."""

from __future__ import annotations

from latentreason.data.problems import Problem
from latentreason.layout import ANSWER_MARKER, encode_problem
from tests.helpers import tiny_lm

PROBLEMS = [
    Problem("7 + 5 - 3", ["<<7+5=2>>", "<<2-3=9>>"], "9"),
    Problem("  4 * 8 \n", [], "2"),  # no steps: an empty CoT, question stripped
    Problem("2 - 9 * 3 + 1", ["<<2-9=3>>", "<<3*3=9>>", "<<9+1=0>>"], "0"),
]


def by_the_wrapper(tokenizer, problem: Problem) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    """What encode_problem must give, one `tokenizer(...)` call per piece."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    cot, spans = [], []
    for i, step in enumerate(problem.steps):
        piece = ids((" " if i else "") + step)
        spans.append((len(cot), len(cot) + len(piece)))
        cot += piece
    cot += ids("\n") if cot else []
    answer = ids(f"{ANSWER_MARKER} {problem.answer}") + [tokenizer.eos_token_id]
    return bos + ids(problem.question.strip() + "\n"), cot, answer, spans


class WrapperOnly:
    """A tokenizer without a Rust backend (like a slow tokenizer): encode_problem falls back to its call."""

    def __init__(self, tokenizer):
        self.inner = tokenizer
        self.bos_token_id, self.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_encoding_equals_the_tokenizer_call_per_piece():
    tokenizer = tiny_lm("llama").tokenizer
    for problem in PROBLEMS:
        expected = by_the_wrapper(tokenizer, problem)
        for tok in (tokenizer, WrapperOnly(tokenizer)):
            enc = encode_problem(tok, problem)
            assert (enc.prompt, enc.cot, enc.answer, enc.step_spans) == expected
