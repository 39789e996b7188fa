"""The evaluation harness, reports and the text solver."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest

from latentreason.data.problems import Problem
from latentreason.engine.batch import left_pad
from latentreason.engine.decode import decode
from latentreason.evaluation import harness
from latentreason.evaluation.harness import EvalResult, evaluate
from latentreason.evaluation.report import markdown_table, write_report
from latentreason.evaluation.solvers import Solution, TextSolver, count_reasoning_tokens
from latentreason.layout import encode_problem
from tests.helpers import chain_problems, tiny_lm

# question -> (reference answer, what the fake model "generates", text tokens, latent tokens)
CASES = {
    "2 + 3": ("5", "<<2+3=5>>\n### 5", 6, 0),  # strict: correct
    "9 * 9": ("1", "### 81", 0, 4),  # wrong number
    "Is Tom a wumpus?": ("True", "### True\nand more text", 2, 6),  # sentence answer: correct
    "7 - 8": ("9", "the answer is 9", 4, 2),  # no marker: wrong in strict mode, right in flexible
}
RECORD_KEYS = {
    "question",
    "reference",
    "generated",
    "prediction",
    "correct",
    "text_tokens",
    "latent_tokens",
    "latency_s",
}


def case_problems() -> list[Problem]:
    return [Problem(q, [], answer) for q, (answer, _, _, _) in CASES.items()]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class FakeSolver:
    """Answers from CASES; each solve() call takes exactly one second on the fake clock."""

    def __init__(self, clock: FakeClock, name: str = "fake"):
        self.clock, self.name, self.batches = clock, name, []

    def solve(self, problems: list[Problem]) -> list[Solution]:
        self.batches.append([p.question for p in problems])
        self.clock.now += 1.0
        return [Solution(CASES[p.question][1], CASES[p.question][2], CASES[p.question][3]) for p in problems]


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(harness, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def run_fake(clock: FakeClock, answer_mode: str = "strict", name: str = "fake") -> tuple[EvalResult, FakeSolver]:
    solver = FakeSolver(clock, name)
    result = evaluate(solver, case_problems(), benchmark="toy", batch_size=3, answer_mode=answer_mode, progress=False)
    return result, solver


# --- harness -----------------------------------------------------------------------------------------


def test_harness_scores_fake_solver_exactly(clock):
    result, solver = run_fake(clock)
    assert solver.batches == [["2 + 3", "9 * 9", "Is Tom a wumpus?"], ["7 - 8"]]
    assert (result.method, result.benchmark, result.n) == ("fake", "toy", 4)
    assert result.accuracy == 0.5
    assert result.text_tokens == (6 + 0 + 2 + 4) / 4
    assert result.latent_tokens == (0 + 4 + 6 + 2) / 4
    assert result.reasoning_tokens == 6.0
    assert result.latency_s == 2.0 / 4  # two solve() calls of one second over four problems
    assert result.problems_per_s == 2.0
    assert "records" not in result.summary()


def test_several_samples_score_their_mean_and_keep_their_own_records(clock):
    class Sampled(FakeSolver):
        def solve(self, problems):
            right, wrong = Solution("### 5", 4, 0), Solution("### 6", 2, 2)
            return [Solution(right.text, 4, 0, samples=[right, wrong, wrong, right]) for _ in problems]

    problems = [Problem("2 + 3", [], "5")]
    result = evaluate(Sampled(clock), problems, benchmark="toy", progress=False)
    assert result.accuracy == 0.5 and result.text_tokens == 3.0 and result.latent_tokens == 1.0
    [record] = result.records
    assert [r["correct"] for r in record["samples"]] == [True, False, False, True]
    assert record["prediction"] == "5" and record["generated"] == "### 5"


def test_harness_records(clock):
    result, _ = run_fake(clock)
    assert [set(r) for r in result.records] == [RECORD_KEYS] * 4
    by_question = {r["question"]: r for r in result.records}
    expected = {  # question: (prediction, correct, latency of its batch share)
        "2 + 3": ("5", True, 1 / 3),
        "9 * 9": ("81", False, 1 / 3),
        "Is Tom a wumpus?": ("True", True, 1 / 3),
        "7 - 8": (None, False, 1.0),
    }
    for question, (prediction, correct, latency) in expected.items():
        record = by_question[question]
        answer, generated, text_tokens, latent_tokens = CASES[question]
        assert record["reference"] == answer
        assert record["generated"] == generated
        assert record["prediction"] == prediction
        assert record["correct"] is correct
        assert (record["text_tokens"], record["latent_tokens"]) == (text_tokens, latent_tokens)
        assert record["latency_s"] == pytest.approx(latency)


def test_harness_flexible_mode_only_changes_numeric_answers(clock):
    result, _ = run_fake(clock, answer_mode="flexible")
    correct = {r["question"]: r["correct"] for r in result.records}
    assert correct == {"2 + 3": True, "9 * 9": False, "Is Tom a wumpus?": True, "7 - 8": True}
    assert result.accuracy == 0.75


def test_harness_rejects_no_problems(clock):
    with pytest.raises(ValueError, match="no problems"):
        evaluate(FakeSolver(clock), [], progress=False)


# --- report ------------------------------------------------------------------------------------------


def two_results(clock) -> list[EvalResult]:
    return [run_fake(clock, "strict", "fake-strict")[0], run_fake(clock, "flexible", "fake-flex")[0]]


def test_report_writes_json_markdown_and_predictions(tmp_path, clock):
    results = two_results(clock)
    paths = write_report(results, tmp_path / "out", extra={"config": {"seed": 1}})
    out = tmp_path / "out"
    assert paths["json"] == out / "results.json" and paths["markdown"] == out / "results.md"

    payload = json.loads(paths["json"].read_text())
    assert payload["config"] == {"seed": 1}
    assert len(payload["results"]) == 2
    for entry, result in zip(payload["results"], results, strict=True):
        for key in ("method", "benchmark", "accuracy", "latent_tokens", "text_tokens", "latency_s", "n"):
            assert entry[key] == getattr(result, key), key
    assert [e["accuracy"] for e in payload["results"]] == [0.5, 0.75]

    lines = paths["markdown"].read_text().splitlines()
    assert lines[0].startswith("| method | benchmark | n | accuracy |")
    assert lines[1] == "|" + "---|" * 9
    assert lines[2] == "| fake-strict | toy | 4 | 50.0% | 3.0 | 3.0 | 6.0 | 500.00 | 2.0 |"
    assert lines[3].startswith("| fake-flex | toy | 4 | 75.0% |")
    assert markdown_table(results) == "\n".join(lines)

    predictions = [json.loads(line) for line in paths["predictions"].read_text().splitlines()]
    assert len(predictions) == 8
    assert {p["method"] for p in predictions} == {"fake-strict", "fake-flex"}
    assert all(p["benchmark"] == "toy" and RECORD_KEYS <= set(p) for p in predictions)
    assert not list(out.glob("*.tmp*"))  # atomic writes leave no temporaries


def test_report_plot_png_with_matplotlib(tmp_path, clock):
    pytest.importorskip("matplotlib", reason="the plot is optional; matplotlib is not installed")
    paths = write_report(two_results(clock), tmp_path)
    assert paths["plot"] == tmp_path / "accuracy_vs_tokens.png"
    data = paths["plot"].read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert not list(tmp_path.glob("*.tmp*"))


def test_report_without_matplotlib_skips_only_the_plot(tmp_path, clock, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    paths = write_report(two_results(clock), tmp_path)
    assert "plot" not in paths
    assert not (tmp_path / "accuracy_vs_tokens.png").exists()
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.md").is_file()


# --- text solver -------------------------------------------------------------------------------------


def test_count_reasoning_tokens():
    tokenizer = tiny_lm("llama").tokenizer
    steps = "<<1+2=3>> <<3*4=2>>"
    expected = len(tokenizer(steps, add_special_tokens=False)["input_ids"])
    assert count_reasoning_tokens(tokenizer, f"{steps}\n### 2") == expected
    assert count_reasoning_tokens(tokenizer, f" {steps} ") == expected  # no marker: all of it, stripped
    assert count_reasoning_tokens(tokenizer, "### 2") == 0


def test_text_solver_on_tiny_model():
    lm = tiny_lm("llama")
    problems = chain_problems(3, seed=21)
    solver = TextSolver(lm, max_new_tokens=8, name="cot")
    solutions = solver.solve(problems)
    assert len(solutions) == 3
    for sol in solutions:
        assert isinstance(sol, Solution)
        assert sol.latent_tokens == 0
        assert sol.text_tokens == count_reasoning_tokens(lm.tokenizer, sol.text)
    assert sum(s.text_tokens for s in solutions) > 0

    # The texts are the greedy continuations of the layout's prompts, special tokens dropped.
    batch = left_pad([encode_problem(lm.tokenizer, p).prompt for p in problems], lm.pad_id)
    out = decode(lm, batch["input_ids"], batch["attention_mask"], 8, stop_ids=[lm.eos_id])
    expected = lm.tokenizer.batch_decode(out.tokens, skip_special_tokens=True)
    assert [s.text for s in solutions] == expected
    # Batching does not change any answer.
    assert [solver.solve([p])[0].text for p in problems] == expected


def test_harness_runs_text_solver():
    lm = tiny_lm("gpt2")
    solver = TextSolver(lm, max_new_tokens=6, name="cot")
    problems = chain_problems(5, seed=4)
    texts = [s.text for s in solver.solve(problems)]
    # An untrained model answers no chain right, so an accuracy of 0 would prove nothing. Problems 0 and 3
    # ask for what the model says (a sentence answer: its first line) and problem 1 for another sentence:
    # 2/5 only when each text is scored against its own problem's reference, in that reference's mode.
    references = {0: texts[0].strip(), 1: "no", 3: texts[3].strip()}
    problems = [replace(p, answer=references.get(i, p.answer)) for i, p in enumerate(problems)]
    result = evaluate(solver, problems, benchmark="chain", batch_size=2, progress=False)
    assert result.n == 5 and result.method == "cot" and result.latent_tokens == 0
    assert [r["generated"] for r in result.records] == texts
    assert [r["correct"] for r in result.records] == [True, False, False, True, False]
    assert result.accuracy == 2 / 5
    assert result.text_tokens == sum(r["text_tokens"] for r in result.records) / 5
    assert result.latency_s > 0
