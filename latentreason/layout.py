"""How a problem becomes tokens: `[bos] question \\n | steps \\n | ### answer <eos>`.

Every method and solver builds its sequences from these three pieces so that training and
evaluation prompts are identical token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

from latentreason.data.problems import Problem

ANSWER_MARKER = "###"


@dataclass
class EncodedProblem:
    prompt: list[int]  # bos + question + newline
    cot: list[int]  # all steps + newline (empty list when the problem has no steps)
    answer: list[int]  # '### answer' + eos
    step_spans: list[tuple[int, int]]  # [start, end) of each step inside `cot`


def encode_problem(tokenizer, problem: Problem) -> EncodedProblem:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt = bos + _ids(tokenizer, problem.question.strip() + "\n")
    cot: list[int] = []
    spans = []
    for i, step in enumerate(problem.steps):
        piece = _ids(tokenizer, (" " if i else "") + step)
        spans.append((len(cot), len(cot) + len(piece)))
        cot += piece
    if cot:
        cot += _ids(tokenizer, "\n")
    answer = _ids(tokenizer, f"{ANSWER_MARKER} {problem.answer}") + [tokenizer.eos_token_id]
    return EncodedProblem(prompt, cot, answer, spans)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]
