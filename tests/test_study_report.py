"""The report side of `latentreason study`: run records, paired tests, the report, plots and model cards."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from latentreason.errors import DataError, UserError
from latentreason.study.card import write_model_card
from latentreason.study.environment import study_environment
from latentreason.study.plots import mean_curve
from latentreason.study.records import RunRecord
from latentreason.study.report import write_study_report
from latentreason.study.significance import SignTest, paired_bootstrap, sign_test
from tests.conftest import REPO


def record(method: str, seed: int, solved: int, task: str = "prosqa", n: int = 10, **fields) -> RunRecord:
    """A finished run that solved the first `solved` of `n` problems."""
    correct = [i < solved for i in range(n)]
    values = dict(latent_tokens=0.0, text_tokens=20.0, steps=100, train_seconds=60.0, eval_seconds=2.0)
    values.update(fields)
    return RunRecord(
        task=task,
        method=method,
        seed=seed,
        n=n,
        accuracy=solved / n,
        correct=correct,
        command=f"latentreason train --config {method}-tiny --seed {seed}",
        model_dir=f"runs/{task}/{method}/{seed}/final",
        **values,
    )


# --- significance ------------------------------------------------------------------------------------------


def test_sign_test_exact_binomial_p():
    assert sign_test([1] * 5, [0] * 5) == SignTest(5, 0, 2 / 32)
    # 1 better, 9 worse: 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024; ties add nothing
    result = sign_test([1] + [0] * 9 + [0.5, 1], [0] + [1] * 9 + [0.5, 1])
    assert (result.better, result.worse) == (1, 9)
    assert result.p == pytest.approx(22 / 1024)
    assert sign_test([1, 0, 1], [0, 1, 1]).p == 1.0  # one each way: as balanced as it gets
    assert sign_test([0.5, 1], [0.5, 1]) == SignTest(0, 0, 1.0)


def test_bootstrap_on_identical_scores_gives_no_difference():
    scores = [1, 0, 0.5, 1, 0]
    result = paired_bootstrap(scores, scores)
    assert (result.difference, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_of_one_problem_has_no_spread_and_the_smallest_p():
    result = paired_bootstrap([1.0], [0.0], resamples=999)
    assert (result.difference, result.low, result.high) == (1.0, 1.0, 1.0)
    assert result.p == pytest.approx(2 / 1000)  # no resample on the other side: 2 * (0 + 1) / (999 + 1)


def test_bootstrap_finds_a_clear_difference_and_brackets_it():
    a = [1.0] * 80 + [0.0] * 20
    b = [1.0] * 30 + [0.0] * 70
    result = paired_bootstrap(a, b, seed=3)
    assert result.difference == pytest.approx(0.5)
    assert 0 < result.low < 0.5 < result.high < 1
    assert result.p < 0.01
    assert paired_bootstrap(b, a, seed=3).difference == pytest.approx(-0.5)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = random.Random(0)
    a = [float(rng.random() < 0.6) for _ in range(200)]
    b = [float(rng.random() < 0.5) for _ in range(200)]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7).low != paired_bootstrap(a, b, seed=8).low


def test_paired_tests_reject_unpaired_input():
    with pytest.raises(ValueError, match="same problems: got 2 and 3"):
        paired_bootstrap([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="no problems"):
        sign_test([], [])


# --- RunRecord JSON ---------------------------------------------------------------------------------------


def test_run_record_json_round_trip():
    run = record("coconut", 1, 4, curve=[(0, 0.1), (50, 0.4)], latent_tokens=6.0)
    back = RunRecord.from_json(run.to_json(), where="runs/a.json")
    assert back == run
    assert back.curve == [(0, 0.1), (50, 0.4)]
    payload = json.loads(run.to_json())
    del payload["curve"]  # optional: a run that logged no validation accuracy
    assert RunRecord.from_json(json.dumps(payload), where="runs/a.json").curve == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": "one"}, "runs/a.json, field 'seed': expected a whole number, got \"one\""),
        ({"n": 0}, "field 'n': expected a whole number >= 1, got 0"),
        ({"accuracy": 1.5}, "field 'accuracy': expected a number between 0 and 1, got 1.5"),
        ({"train_seconds": True}, "field 'train_seconds': expected a number >= 0, got true"),
        ({"correct": [1, 0]}, "field 'correct': expected a list of true/false"),
        ({"curve": [[0, 0.5], [10]]}, "field 'curve': entry 1: expected [step, validation accuracy], got [10]"),
        ({"correct": [True] * 4}, "field 'correct': has 4 entries, expected n = 10"),
        ({"accuracy": 0.5}, "field 'accuracy': is 0.5, but 'correct' gives 0.4"),
        ({"gpu": "none"}, "field 'gpu': unknown field; a run record has task, method"),
        ({"command": None}, "field 'command': expected a string, got null"),
    ],
)
def test_run_record_bad_field_names_the_file_and_field(change, message):
    payload = {**json.loads(record("cot", 0, 4).to_json()), **change}
    with pytest.raises(DataError) as caught:
        RunRecord.from_json(json.dumps(payload), where="runs/a.json")
    assert message in str(caught.value)


def test_run_record_missing_field_and_bad_json():
    payload = json.loads(record("cot", 0, 4).to_json())
    del payload["steps"]
    with pytest.raises(DataError, match=r"runs/a.json, field 'steps': missing"):
        RunRecord.from_json(json.dumps(payload), where="runs/a.json")
    with pytest.raises(DataError, match=r"runs/a.json: not valid JSON"):
        RunRecord.from_json("{", where="runs/a.json")
    with pytest.raises(DataError, match=r"runs/a.json: expected a JSON object, got list"):
        RunRecord.from_json("[]", where="runs/a.json")


# --- the report -------------------------------------------------------------------------------------------

META = {
    "machine": {"cpu": "Test CPU", "cores": 2, "threads": 4},
    "versions": {"python": "3.11.2", "torch": "2.13.0"},
    "git_commit": "abc123",
    "started": "2025-01-01 10:00",
    "ended": "2025-01-01 11:00",
    "config": {"tasks": ["prosqa"], "seeds": [0, 1, 2]},
}


def study_runs() -> list[RunRecord]:
    """prosqa: cot solves 9 of 10 problems, no-cot 3, coconut 5 and 6 (seed 2 never finished); a second task."""
    runs = [record("cot", seed, 9) for seed in (0, 1, 2)] + [record("no-cot", seed, 3) for seed in (0, 1, 2)]
    runs += [
        record("coconut", 0, 5, latent_tokens=6.0, text_tokens=0.0, train_seconds=120.0, curve=[(0, 0.2), (50, 0.4)]),
        record("coconut", 1, 6, latent_tokens=6.0, text_tokens=0.0, train_seconds=180.0, curve=[(0, 0.4), (50, 0.6)]),
    ]
    runs += [record("cot", seed, 4, task="multiplication", n=5) for seed in (0, 1, 2)]
    return runs


def test_report_table_marks_missing_seeds_and_shows_the_paper(tmp_path):
    published = {"prosqa": {"coconut": (97.0, 14.2)}}
    paths = write_study_report("tiny", study_runs(), tmp_path, META, published=published)
    text = paths["markdown"].read_text()
    assert paths["markdown"] == tmp_path / "tiny.md"
    head = "| method | seeds | accuracy: mean ± std | min-max | paper: acc / tok | seed 0 | seed 1 | seed 2 |"
    assert head in text
    # coconut: 50% and 60% -> mean 55%, sample std 7.1 points; train 120 s and 180 s -> 2.5 min
    coconut = "| coconut | **2 of 3** | 55.0% ± 7.1 | 50.0%-60.0% | 97.0% / 14.2 | 50.0% | 60.0% | missing |"
    assert coconut + " 6.0 | 0.0 | 2.5 min | 10 |" in text
    cot = "| cot | 3 of 3 | 90.0% ± 0.0 | 90.0%-90.0% | — | 90.0% | 90.0% | 90.0% |"
    assert cot + " 0.0 | 20.0 | 1.0 min | 10 |" in text
    lines = text.splitlines()
    prosqa_rows = [line.split(" | ")[0] for line in lines[lines.index("## prosqa") :] if line.startswith("| ")]
    assert prosqa_rows[1:4] == ["| cot", "| no-cot", "| coconut"]  # references first
    assert "11 of 12 planned runs finished" in text and "prosqa/coconut seed 2" in text
    # multiplication has no published numbers: no paper column there
    assert "| cot | 3 of 3 | 80.0% ± 0.0 | 80.0%-80.0% | 80.0% |" in text


def test_report_significance_lines(tmp_path):
    text = write_study_report("tiny", study_runs(), tmp_path, META)["markdown"].read_text()
    lines = {line.split(":")[0]: line for line in text.splitlines() if " vs " in line}
    # coconut over seeds 0, 1 scores 1 on problems 0-4, 0.5 on 5, 0 after; cot scores 1 on 0-8:
    # 0.55 - 0.9 = -35 points, worse on problems 5-8 (4) and better on none: sign p = 2 / 2^4
    coconut = lines["- coconut vs cot"]
    assert coconut.startswith("- coconut vs cot: -35.0 points [")
    assert "sign test p=0.125 (better on 0 problems, worse on 4, of 10; seeds 0, 1)" in coconut
    expected = paired_bootstrap([1] * 5 + [0.5] + [0] * 4, [1] * 9 + [0])
    assert f"[{100 * expected.low:.1f}, {100 * expected.high:.1f}], bootstrap p={expected.p:.3f}," in coconut
    assert "- no-cot vs cot: -60.0 points" in lines["- no-cot vs cot"]
    assert "sign test p=0.031 (better on 0 problems, worse on 6, of 10; seeds 0, 1, 2)" in lines["- no-cot vs cot"]
    assert "- coconut vs no-cot: +25.0 points" in lines["- coconut vs no-cot"]
    assert "sign test p=0.250 (better on 3 problems, worse on 0" in lines["- coconut vs no-cot"]
    assert "- cot vs no-cot" not in lines and "- cot vs cot" not in lines  # no mirror, no self-comparison


def test_report_is_deterministic_and_says_how_it_was_run(tmp_path):
    runs = study_runs()
    first = write_study_report("tiny", runs, tmp_path / "a", META)["markdown"].read_text()
    second = write_study_report("tiny", list(reversed(runs)), tmp_path / "b", META)["markdown"].read_text()
    assert first == second
    how = first[first.index("## How this was run") :]
    # 11 runs: 60 s x 9 + 120 s + 180 s = 840 s of training, 22 s of evaluation
    assert "11 runs: 14.0 min of training and 22.0 s of evaluation, 14.4 min in all" in how
    assert "- machine:\n  - cpu: Test CPU\n  - cores: 2\n  - threads: 4" in how
    assert "- git commit: abc123" in how and "- started: 2025-01-01 10:00" in how
    assert "```yaml\nseeds:\n- 0\n- 1\n- 2\ntasks:\n- prosqa\n```" in how
    assert "<details><summary>the 11 commands</summary>" in how
    block = "**prosqa / coconut**\n\n```bash\n# seed 0: 100 steps, train 2.0 min, eval 2.0 s, model "
    assert block + "runs/prosqa/coconut/0/final\nlatentreason train --config coconut-tiny --seed 0\n# seed 1:" in how


def test_report_writes_the_plots(tmp_path):
    pytest.importorskip("matplotlib", reason="the plots are optional; matplotlib is not installed")
    paths = write_study_report("tiny", study_runs(), tmp_path, META)
    for key in ("prosqa/accuracy-vs-tokens", "prosqa/training-curves", "multiplication/accuracy-vs-tokens"):
        data = paths[key].read_bytes()
        assert paths[key].parent == tmp_path / "tiny"
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert "multiplication/training-curves" not in paths  # no run of that task logged a curve
    text = paths["markdown"].read_text()
    assert "![prosqa: validation accuracy during training](tiny/prosqa-training-curves.png)" in text
    assert not list(tmp_path.rglob("*.tmp*"))


def test_report_without_matplotlib_still_writes_the_markdown(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    paths = write_study_report("tiny", study_runs(), tmp_path, META)
    assert list(paths) == ["markdown"]
    assert "![" not in paths["markdown"].read_text()


def test_expected_runs_that_never_finished_show_as_missing(tmp_path):
    runs = [record("cot", 0, 9)]
    expected = [("prosqa", "cot", 0), ("prosqa", "icot", 0)]
    text = write_study_report("tiny", runs, tmp_path, META, expected=expected)["markdown"].read_text()
    assert "| icot | **0 of 1** | — | — | missing | — | — | — | — |" in text
    assert "- icot vs cot: not tested, no seed finished for both" in text


def test_report_rejects_inconsistent_runs(tmp_path):
    with pytest.raises(UserError, match="two records of prosqa/cot seed 0"):
        write_study_report("tiny", [record("cot", 0, 9), record("cot", 0, 8)], tmp_path, META)
    with pytest.raises(UserError, match=r"task prosqa: every run must be evaluated on the same problems.*n=12"):
        write_study_report("tiny", [record("cot", 0, 9), record("icot", 0, 9, n=12)], tmp_path, META)
    short = replace(record("cot", 0, 9), correct=[True] * 9)
    with pytest.raises(UserError, match=r"cot seed 0: n=10, 9 scored"):
        write_study_report("tiny", [short], tmp_path, META)


def test_mean_curve_averages_the_steps_every_seed_logged():
    runs = [
        record("cot", 0, 9, curve=[(0, 0.1), (10, 0.5), (20, 0.7)]),
        record("cot", 1, 9, curve=[(0, 0.3), (10, 0.7)]),
        record("cot", 2, 9),  # logged nothing: not part of the mean
    ]
    steps, accuracies = zip(*mean_curve(runs))
    assert steps == (0, 10) and accuracies == pytest.approx((0.2, 0.6))
    assert mean_curve(runs[2:]) == []


def test_study_environment_describes_this_machine():
    env = study_environment()
    assert env["machine"]["threads"] == os.cpu_count()
    assert env["versions"]["python"] == platform.python_version()
    assert env["versions"]["latentreason"] == "0.1.0"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert env["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)


# --- model card -------------------------------------------------------------------------------------------


def test_model_card(tmp_path):
    data = {"train": "9,000 generated ProsQA-style graphs (seed 1)", "test": "data/prosqa/test.json"}
    command = "latentreason train --config coconut-tiny --seed 1"
    facts = dict(task="prosqa", method="coconut", seed=1, steps=1200, validation_accuracy=0.975, data=data)
    path = write_model_card(tmp_path, **facts, command=command, study="tiny")
    text = path.read_text()
    assert path == tmp_path / "README.md"
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "latentreason"
    assert front["tags"] == ["latent-reasoning", "coconut"]
    assert front["datasets"] == ["prosqa"]
    assert "- train: 9,000 generated ProsQA-style graphs (seed 1)" in text
    assert "- optimizer steps: 1200" in text and "- seed: 1" in text
    assert "- validation accuracy at the end of training: 97.5%" in text
    assert f"```bash\n{command}\n```" in text
    assert f"latentreason eval --model {tmp_path} --file data/prosqa/test.json --output-dir" in text
    with pytest.raises(UserError, match="is not a directory"):
        write_model_card(tmp_path / "nope", **facts, command=command, study="tiny")
