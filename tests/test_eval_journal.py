"""An interrupted evaluation resumes from its journal: solved problems are read back, not solved again."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from latentreason.evaluation import harness
from latentreason.evaluation.harness import evaluate
from latentreason.evaluation.journal import Journal, journal_key, model_fingerprint
from tests.test_evaluation import FakeClock, FakeSolver, case_problems


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(harness, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


class Killed(Exception):
    pass


class DiesAfter(FakeSolver):
    """FakeSolver that dies (as a killed process would) on its call number `calls` + 1."""

    def __init__(self, clock, calls: int):
        super().__init__(clock)
        self.calls = calls

    def solve(self, problems):
        if len(self.batches) == self.calls:
            raise Killed
        return super().solve(problems)


def journal(tmp_path, **settings) -> Journal:
    return Journal(tmp_path / "progress.jsonl", journal_key({"model": "m", **settings}, case_problems()))


def test_a_killed_evaluation_resumes_with_the_unsolved_problems_only(clock, tmp_path):
    whole = evaluate(FakeSolver(clock), case_problems(), "toy", batch_size=1, progress=False)
    with pytest.raises(Killed):
        evaluate(DiesAfter(clock, 2), case_problems(), "toy", batch_size=1, progress=False, journal=journal(tmp_path))
    rest = FakeSolver(clock)
    resumed = evaluate(rest, case_problems(), "toy", batch_size=3, progress=False, journal=journal(tmp_path))
    assert rest.batches == [["Is Tom a wumpus?", "7 - 8"]]  # the first two came from the journal
    assert [r["question"] for r in resumed.records] == [r["question"] for r in whole.records]
    assert [r["correct"] for r in resumed.records] == [r["correct"] for r in whole.records]
    assert resumed.accuracy == whole.accuracy
    assert resumed.latency_s == (1 + 1 + 1) / 4  # two journaled one-second batches and one new one


def test_a_journal_of_other_settings_is_discarded(clock, tmp_path):
    with pytest.raises(Killed):
        evaluate(DiesAfter(clock, 1), case_problems(), "toy", batch_size=2, progress=False, journal=journal(tmp_path))
    other = journal(tmp_path, max_new_tokens=7)
    assert other.solved() == ({}, 0.0) and other.stale
    solver = FakeSolver(clock)
    evaluate(solver, case_problems(), "toy", batch_size=4, progress=False, journal=other)
    assert solver.batches == [[p.question for p in case_problems()]]
    assert json.loads((tmp_path / "progress.jsonl").read_text().splitlines()[0])["key"] == other.key


def test_a_half_written_last_line_is_solved_again_and_cut(clock, tmp_path):
    with pytest.raises(Killed):
        evaluate(DiesAfter(clock, 1), case_problems(), "toy", batch_size=2, progress=False, journal=journal(tmp_path))
    path = tmp_path / "progress.jsonl"
    path.write_text(path.read_text() + '{"positions": [2, 3], "reco')  # the process died mid-line
    solver = FakeSolver(clock)
    result = evaluate(solver, case_problems(), "toy", batch_size=2, progress=False, journal=journal(tmp_path))
    assert solver.batches == [["Is Tom a wumpus?", "7 - 8"]]
    assert result.n == 4
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)  # header + two whole batches


def test_a_retrained_model_directory_is_another_model(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 8)
    before = model_fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"y" * 9)
    assert model_fingerprint(str(tmp_path)) != before
    assert model_fingerprint("smollm2") == {"model": "smollm2"}
