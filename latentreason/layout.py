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
    steps = [(" " if i else "") + step for i, step in enumerate(problem.steps)]
    pieces = [problem.question.strip() + "\n", *steps, "\n", f"{ANSWER_MARKER} {problem.answer}"]
    ids = _ids(tokenizer, pieces)
    prompt = _bos(tokenizer) + ids[0]
    cot: list[int] = []
    spans = []
    for piece in ids[1 : 1 + len(steps)]:
        spans.append((len(cot), len(cot) + len(piece)))
        cot += piece
    if cot:
        cot += ids[-2]
    answer = ids[-1] + [tokenizer.eos_token_id]
    return EncodedProblem(prompt, cot, answer, spans)


def encode_question(tokenizer, question: str) -> list[int]:
    """The prompt alone (bos + question + newline), as `encode_problem` writes it: what a text method's solver and
    RL from its model feed."""
    return _bos(tokenizer) + _ids(tokenizer, [question.strip() + "\n"])[0]


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _ids(tokenizer, pieces: list[str]) -> list[list[int]]:
    """Each piece tokenized on its own. A fast tokenizer's Rust backend is called directly: the wrapper
    around it took more than half the time of encoding a data set (122 -> 45 us per chain problem)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(pieces, add_special_tokens=False)["input_ids"]
    return [backend.encode(piece, add_special_tokens=False).ids for piece in pieces]
