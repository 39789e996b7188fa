"""Test-time scaling metrics: pass@k, coverage, majority vote, best-of-N and the curves as N grows, and the
harness fields, tables and plot they give an evaluation with several samples per problem."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import fields
from fractions import Fraction
from types import SimpleNamespace

import pytest

from latentreason.data.problems import Problem
from latentreason.data.votes import best_scored, vote_key, voted_index
from latentreason.evaluation import harness
from latentreason.evaluation.harness import evaluate, evaluate_sharded
from latentreason.evaluation.report import write_report
from latentreason.evaluation.solvers import Solution
from latentreason.evaluation.tts_metrics import (
    Samples,
    best_of_n_correct,
    coverage,
    majority_vote_correct,
    pass_at_k,
    sample_sizes,
    scaling_curve,
)

# --- pass@k ------------------------------------------------------------------------------------------------


def test_pass_at_k_hand_computed_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(8, 0, 4) == 0.0
    assert pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(5, 2, 4) == 1.0  # only 3 wrong samples: every 4-subset holds a right one


def test_pass_at_k_equals_enumerating_every_k_subset():
    for n in range(1, 8):
        for c in range(n + 1):
            correct = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(correct, k))
                brute = Fraction(sum(any(s) for s in subsets), len(subsets))
                assert pass_at_k(n, c, k) == pytest.approx(float(brute), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow_a_float():
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)  # C(2000, 1000) has 600 digits
    assert pass_at_k(2000, 10, 1000) == pytest.approx(1 - 0.5**10, abs=1e-3)


@pytest.mark.parametrize(
    "n, c, k, message",
    [
        (5, 2, 6, "k=6 exceeds the n=5"),
        (5, 6, 2, "c=6 correct samples out of n=5"),
        (5, -1, 2, "must not be negative"),
        (-5, 0, 2, "must not be negative"),
        (5, 2, 0, "k must be at least 1"),
    ],
)
def test_pass_at_k_refuses_impossible_counts(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


# --- one problem's aggregators --------------------------------------------------------------------------


def test_vote_keys_compare_numbers_as_numbers_and_sentences_as_the_checker_does():
    assert vote_key("18", "number") == vote_key("18.0", "number") == vote_key("$18", "number") == "18"
    assert vote_key("Tom is a lempus.", "text") == vote_key("tom is  a lempus", "text")
    assert vote_key("0123", "text") != vote_key("123", "text")  # digit strings are compared as text
    assert vote_key(None, "number") is None and vote_key("  ", "text") is None
    with pytest.raises(ValueError, match="unknown answer kind"):
        vote_key("18", "digits")


def test_majority_vote_ties_go_to_the_answer_seen_first_and_samples_without_answer_do_not_vote():
    votes = [vote_key(p, "number") for p in ["7", "12", "12.0", None, "7.0"]]  # 7 and 12 twice each
    assert voted_index(votes) == 0
    assert majority_vote_correct(votes, [True, False, False, False, True])
    assert not majority_vote_correct(votes, [False, True, True, False, False])
    assert voted_index([None, "5", None, None]) == 1  # one vote beats three non-answers
    assert voted_index([None, None]) is None
    assert not majority_vote_correct([None, None], [False, False])


def test_best_of_n_ties_go_to_the_first_and_coverage_is_any_correct():
    assert best_scored([0.1, 0.7, 0.7, -1.0]) == 1
    assert not best_of_n_correct([0.1, 0.7, 0.7], [True, False, True])
    assert best_of_n_correct([0.1, 0.7, 0.9], [False, False, True])
    assert coverage([False, True]) and not coverage([False, False])


def test_samples_refuse_mismatched_or_non_finite_fields():
    with pytest.raises(ValueError, match="at least one sample"):
        Samples([], [])
    with pytest.raises(ValueError, match="2 votes for 3 samples"):
        Samples([True, False, True], ["1", "2"])
    with pytest.raises(ValueError, match="1 scores for 2 samples"):
        Samples([True, False], ["1", "2"], [0.5])
    with pytest.raises(ValueError, match="score of sample 1 is nan"):
        Samples([True, False], ["1", "2"], [0.5, float("nan")])


# --- the curve ----------------------------------------------------------------------------------------------


def test_sample_sizes_double_and_end_at_the_total():
    assert sample_sizes(1) == [1]
    assert sample_sizes(4) == [1, 2, 4]
    assert sample_sizes(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="at least 1 sample"):
        sample_sizes(0)


def test_scaling_curve_of_a_tiny_hand_case():
    # Problem 1: votes A B B, only sample 0 right. Vote with 2: {0,1} and {0,2} tie, A first -> right; {1,2} B.
    # Best-of-2 by scores 0.5 0.9 0.2: {0,1} -> 1, {0,2} -> 0 (right), {1,2} -> 1.
    one = Samples([True, False, False], ["a", "b", "b"], [0.5, 0.9, 0.2])
    # Problem 2: only sample 1 answers, and rightly; equal scores: the first of each subset wins.
    two = Samples([False, True, False], [None, "c", None], [1.0, 1.0, 1.0])
    curve = scaling_curve([one, two])
    assert curve.sizes == [1, 2, 3]
    assert curve.pass_at_n == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert curve.majority_vote == pytest.approx([1 / 3, (2 / 3 + 2 / 3) / 2, (0 + 1) / 2])
    assert curve.best_of_n == pytest.approx([1 / 3, (1 / 3 + 1 / 3) / 2, 0.0])
    assert curve.coverage == 1.0
    summary = curve.fields()
    assert summary["pass_at_k"] == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    assert (summary["majority_vote_accuracy"], summary["best_of_n_accuracy"]) == (0.5, 0.0)


def random_problem(rng: random.Random, n: int) -> Samples:
    votes = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
    return Samples([v == "1" for v in votes], votes, [float(rng.randint(0, 3)) for _ in range(n)])


def mean_over_subsets(problems: list[Samples], size: int, aggregate, field: str) -> float:
    """`aggregate` (majority vote or best-of-N) over every `size`-subset of every problem's samples, averaged."""
    outcomes = [
        aggregate([getattr(p, field)[i] for i in subset], [p.correct[i] for i in subset])
        for p in problems
        for subset in itertools.combinations(range(len(p.correct)), size)
    ]
    return sum(outcomes) / len(outcomes)


def test_scaling_curve_equals_enumerating_every_subset():
    rng = random.Random(0)
    problems = [random_problem(rng, 6) for _ in range(20)]
    curve = scaling_curve(problems)
    for size, vote, best in zip(curve.sizes, curve.majority_vote, curve.best_of_n):
        assert vote == pytest.approx(mean_over_subsets(problems, size, majority_vote_correct, "votes")), size
        assert best == pytest.approx(mean_over_subsets(problems, size, best_of_n_correct, "scores")), size


def test_best_of_n_with_a_perfect_scorer_is_pass_at_n():
    rng = random.Random(1)
    problems = [random_problem(rng, 9) for _ in range(10)]
    oracle = [Samples(p.correct, p.votes, [float(c) for c in p.correct]) for p in problems]
    curve = scaling_curve(oracle)
    assert curve.sizes == [1, 2, 4, 8, 9]
    assert curve.best_of_n == pytest.approx(curve.pass_at_n)
    assert curve.majority_vote[0] == pytest.approx(curve.pass_at_n[0])  # one sample: its own answer


def test_monte_carlo_vote_is_seeded_and_close_to_the_exact_average():
    rng = random.Random(2)
    problems = [random_problem(rng, 12) for _ in range(40)]  # C(12, 4) = 495 and C(12, 8) = 495 subsets
    exact = scaling_curve(problems, max_subsets=495).majority_vote
    drawn = scaling_curve(problems, seed=3, max_subsets=100).majority_vote
    assert drawn == scaling_curve(problems, seed=3, max_subsets=100).majority_vote
    assert drawn != exact and drawn == pytest.approx(exact, abs=0.03)


def test_monte_carlo_subsets_keep_the_original_order_for_ties():
    # Twelve different answers, only the last one wrong: in every subset all answers tie and the first wins.
    problem = Samples([True] * 11 + [False], [str(i) for i in range(12)])
    curve = scaling_curve([problem], max_subsets=65)  # C(12, 2) = 66: every N > 1 is drawn, not enumerated
    assert curve.majority_vote == pytest.approx([11 / 12, 1.0, 1.0, 1.0, 1.0])  # alone, the last one loses


def test_scaling_curve_without_scores_or_with_uneven_counts():
    curve = scaling_curve([Samples([True, False, False], ["1", "2", "2"]), Samples([True, True], ["1", "1"], [1, 2])])
    assert curve.sizes == [1, 2] and curve.best_of_n is None  # the fewest samples; one problem unscored
    assert "best_of_n_accuracy" not in curve.fields()
    with pytest.raises(ValueError, match="no problems"):
        scaling_curve([])


# --- the harness and its report ------------------------------------------------------------------------


# question -> (reference, the four sampled replies, their scores)
SAMPLED = {
    # votes 5, 6, 6, 5: a tie, 5 seen first (right); the best score is a 6 (wrong)
    "2 + 3": ("5", ["### 5", "### 6", "### 6.0", "### 5.0"], [0.1, 0.9, 0.3, 0.2]),
    # votes true, none, true, false: true (right); the best score is False (wrong)
    "Is Tom a wumpus?": ("True", ["### True", "", "### true.", "### False"], [0.5, 0.5, 0.1, 0.9]),
}


class SampledSolver:
    def __init__(self, scored: bool = True):
        self.name, self.scored = "sampled", scored

    def solve(self, problems: list[Problem]) -> list[Solution]:
        out = []
        for problem in problems:
            _, texts, scores = SAMPLED[problem.question]
            samples = [Solution(t, 1, 2, score=s if self.scored else None) for t, s in zip(texts, scores)]
            out.append(Solution(texts[0], 1, 2, samples=samples))
        return out


def sampled_problems() -> list[Problem]:
    return [Problem(question, [], reference) for question, (reference, _, _) in SAMPLED.items()]


def test_harness_reports_scaling_metrics_table_plot_and_sample_records(tmp_path):
    result = evaluate(SampledSolver(), sampled_problems(), benchmark="toy", progress=False)
    summary = result.summary()
    assert summary["accuracy"] == pytest.approx(summary["pass_at_k"][1]) == 0.5
    assert summary["pass_at_k"] == {1: pytest.approx(0.5), 2: pytest.approx(5 / 6), 4: 1.0}
    assert (summary["coverage"], summary["majority_vote_accuracy"], summary["best_of_n_accuracy"]) == (1.0, 1.0, 0.0)
    assert summary["accuracy_vs_samples"]["samples"] == [1, 2, 4]

    paths = write_report([result], tmp_path)
    entry = json.loads(paths["json"].read_text())["results"][0]
    assert entry["pass_at_k"] == {"1": pytest.approx(0.5), "2": pytest.approx(5 / 6), "4": 1.0}
    assert entry["best_of_n_accuracy"] == 0.0
    table = paths["markdown"].read_text()
    assert "| method | benchmark | samples N | pass@N | majority vote | best-of-N |" in table
    assert "| sampled | toy | 4 | 100.0% | 100.0% | 0.0% |" in table
    records = [json.loads(line) for line in paths["predictions"].read_text().splitlines()]
    assert [[s["score"] for s in r["samples"]] for r in records] == [scores for _, _, scores in SAMPLED.values()]
    assert [s["prediction"] for s in records[0]["samples"]] == ["5", "6", "6.0", "5.0"]
    if "samples_plot" in paths:  # matplotlib installed
        assert paths["samples_plot"] == tmp_path / "accuracy_vs_samples.png"
        assert paths["samples_plot"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_unscored_samples_give_no_best_of_n():
    summary = evaluate(SampledSolver(scored=False), sampled_problems(), progress=False).summary()
    assert summary["majority_vote_accuracy"] == 1.0 and "best_of_n_accuracy" not in summary
    assert "best_of_n" not in summary["accuracy_vs_samples"]


def test_one_sample_per_problem_adds_no_field_table_or_plot(tmp_path):
    class Single:
        name = "single"

        def solve(self, problems):
            return [Solution(SAMPLED[p.question][1][0], 1, 0) for p in problems]

    result = evaluate(Single(), sampled_problems(), progress=False)
    assert result.scaling is None and result.beam_curve is None
    unreported = {"records", "scaling", "beam_curve", "metrics"}  # metrics: the solver's own, none here
    assert set(result.summary()) == {f.name for f in fields(harness.EvalResult)} - unreported
    paths = write_report([result], tmp_path)
    assert "samples N" not in paths["markdown"].read_text() and "samples_plot" not in paths
    assert not (tmp_path / "accuracy_vs_samples.png").exists()


def test_sharded_evaluation_gives_the_same_scaling_metrics(monkeypatch):
    pytest.importorskip("accelerate")
    gathered = []

    def gather_object(part):  # two processes, run one after the other: the second call sees both shards
        gathered.extend(part)
        return list(gathered)

    monkeypatch.setattr("accelerate.utils.gather_object", gather_object)
    problems = sampled_problems()
    for rank in (0, 1):
        process = SimpleNamespace(process_index=rank, num_processes=2)
        sharded = evaluate_sharded(SampledSolver(), problems, process, "toy", progress=False)
    assert len(gathered) == 2 and sharded.n == 2
    assert sharded.scaling == evaluate(SampledSolver(), problems, "toy", progress=False).scaling
