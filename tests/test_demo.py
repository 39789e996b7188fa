"""`latentreason demo`: its plan (rows, commands), its scheduler (processes side by side, in dependency
order, failures), and quick runs end to end through the CLI."""

from __future__ import annotations

import json
import shutil
import sys
import time

import pytest

from latentreason import cli
from latentreason.demo import plan
from latentreason.demo.summary import seed_summary, summary_table
from latentreason.errors import UserError
from latentreason.evaluation.harness import EvalResult
from latentreason.scheduler import Job, run_jobs, schedule_seconds
from tests.test_cli import user_error

# A stand-in for a training process: notes when it starts and ends, logs its steps as the trainer does.
FAKE_RUN = """
import json, sys, time
name, events, log, seconds, code = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
open(events, "a").write(f"start {name} {time.time()}\\n")
time.sleep(seconds)
open(log, "a").write(json.dumps({"step": 4}) + "\\n")
if code:
    print(f"{name} broke on purpose", flush=True)
    sys.exit(code)
open(events, "a").write(f"end {name} {time.time()}\\n")
"""


def fake_job(tmp_path, name, start=None, seconds=0.3, expected=1.0, code=0) -> Job:
    log = tmp_path / name / "log.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    events = tmp_path / "events.txt"
    command = [sys.executable, "-c", FAKE_RUN, name, str(events), str(log), str(seconds), str(code)]
    return Job(name, command, start, expected, 4, log, tmp_path / "logs" / f"{name}.txt")


def default_rows(tmp_path) -> list[Job]:
    """Stand-ins for the default demo's rows, with its dependencies and (roughly) its expected times."""
    return [
        fake_job(tmp_path, "cot", expected=150),
        fake_job(tmp_path, "no-cot", expected=75),
        fake_job(tmp_path, "simcot", "cot", expected=210),
        fake_job(tmp_path, "atp", "cot", expected=220),
        fake_job(tmp_path, "atp-rl", "atp", expected=70),
    ]


def events(tmp_path) -> list[tuple[str, str, float]]:
    lines = (tmp_path / "events.txt").read_text().splitlines()
    return sorted(((kind, name, float(t)) for kind, name, t in (line.split() for line in lines)), key=lambda e: e[2])


def test_rows_run_side_by_side_after_the_row_they_start_from(tmp_path):
    jobs = default_rows(tmp_path)
    timings = run_jobs(jobs, parallel=2, threads=1)
    assert set(timings) == {job.name for job in jobs} and all(job.done for job in jobs)
    seen = events(tmp_path)
    time_of = {(kind, name): t for kind, name, t in seen}
    for job in jobs:
        if job.start is not None:
            assert time_of[("start", job.name)] > time_of[("end", job.start)], job.name
    running, most = 0, 0
    for kind, _, _ in seen:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2
    # Once CoT is done, ATP-Latent is launched first: its RL row waits for it (the longer chain).
    began = {job.name: job.began for job in jobs}
    assert began["atp"] < began["simcot"]


def test_a_failing_row_stops_the_others_and_names_its_output(tmp_path):
    jobs = [fake_job(tmp_path, "cot", seconds=0.1, code=3), fake_job(tmp_path, "no-cot", seconds=60)]
    began = time.perf_counter()
    with pytest.raises(UserError, match=r"cot failed \(exit status 3\): cot broke on purpose") as err:
        run_jobs(jobs, parallel=2, threads=1)
    assert str(jobs[0].output) in str(err.value)
    assert time.perf_counter() - began < 30  # no-cot was stopped, not waited for
    assert jobs[1].process.poll() is not None


def test_keep_going_runs_what_does_not_depend_on_a_failed_job(tmp_path):
    jobs = [
        fake_job(tmp_path, "cot", seconds=0.1, code=3),
        fake_job(tmp_path, "coconut", "cot"),
        fake_job(tmp_path, "coconut-rl", "coconut"),
        fake_job(tmp_path, "no-cot", seconds=0.5),
    ]
    timings = run_jobs(jobs, parallel=2, threads=1, keep_going=True)
    assert list(timings) == ["no-cot"]
    assert jobs[0].failure.startswith("cot failed (exit status 3): cot broke on purpose")
    assert jobs[1].failure == "coconut not run: cot failed" and jobs[1].process is None
    assert jobs[2].failure == "coconut-rl not run: coconut failed" and jobs[2].process is None
    assert jobs[3].failure is None and ("end", "no-cot") in [(kind, name) for kind, name, _ in events(tmp_path)]


def test_the_expected_time_follows_the_schedule(tmp_path):
    jobs = default_rows(tmp_path)
    # cot || no-cot; at 150 atp || simcot; at 370 atp-rl: done at 440. One at a time: the sum.
    assert schedule_seconds(jobs, 2) == 440
    assert schedule_seconds(jobs, 1) == 725
    for job in jobs[:3]:  # reused from an earlier sitting: cot, no-cot, simcot
        job.done = True
    assert schedule_seconds(jobs, 2) == 290  # atp, then atp-rl


def replies(out) -> list[tuple]:
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [(r["method"], r["question"], r["generated"], r["correct"]) for r in records]


def test_a_resumed_demo_reuses_saved_rows_and_trains_the_others_again(capsys, tmp_path, small_quick_plan):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--output-dir", str(out), "--rows", "cot,no-cot"]
    assert cli.main(args) == 0
    predictions = replies(out)
    cot_weights = out / "runs" / "cot" / "final" / "model.safetensors"
    written = cot_weights.stat().st_mtime_ns
    shutil.rmtree(out / "runs" / "no-cot" / "final")  # as if stopped mid-row: its log and logs stay behind
    assert (out / "runs" / "no-cot" / "log.jsonl").is_file()
    capsys.readouterr()

    assert cli.main([*args, "--resume"]) == 0
    assert "reused from an earlier sitting: cot" in capsys.readouterr().out
    payload = json.loads((out / "results.json").read_text())
    assert payload["reused"] == ["cot"] and list(payload["timings"]) == ["train_no-cot_s", "total_s"]
    assert cot_weights.stat().st_mtime_ns == written  # not trained again
    assert (out / "runs" / "no-cot" / "final" / "model.safetensors").is_file()
    assert replies(out) == predictions  # the same problems, the same replies

    # Only the same demo continues: other rows, --quick or seeds would mix two demos' models in one table.
    line = user_error(capsys, [*args[:-1], "cot", "--resume"])
    assert "--resume" in line and "rows" in line and str(out / "demo.json") in line
    line = user_error(capsys, [*args, "--seed", "3", "--resume"])
    assert "seeds" in line and "recipes" in line
    assert "pass one of them" in user_error(capsys, [*args, "--resume", "--overwrite"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    line = user_error(capsys, ["demo", "--quick", "--output-dir", str(tmp_path / "other"), "--resume"])
    assert "holds no demo" in line and (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_rows_bring_the_rows_they_start_from():
    assert plan.select_rows(["atp-rl", "no-cot"]) == ["cot", "no-cot", "atp", "atp-rl"]
    assert plan.select_rows(None) == list(plan.DEFAULT_ROWS)
    assert plan.select_rows(["all"]) == list(plan.ROWS)
    with pytest.raises(UserError, match="--rows: unknown cocnut"):
        plan.select_rows(["cocnut"])


def test_a_row_is_its_recipe_run_by_the_cli(tmp_path):
    command = plan.row_command("atp-rl", tmp_path, quick=False, seed=7)
    assert command[1:6] == ["-m", "latentreason.cli", "rl", "--config", "atp-rl-tiny"]
    flags = dict(zip(command[6::2], command[7::2]))
    assert flags["--model_name_or_path"] == str(tmp_path / "runs" / "atp" / "final")
    assert flags["--seed"] == "7" and flags["--output_dir"] == str(tmp_path / "runs" / "atp-rl")
    quick = plan.row_command("cot", tmp_path, quick=True, seed=None)
    assert json.loads(dict(zip(quick[6::2], quick[7::2]))["--tiny_model"]) == plan.QUICK["tiny_model"]


@pytest.fixture
def small_quick_plan(monkeypatch):
    """Shrink the --quick budget further so the test takes seconds (the real one takes ~20 s on 2 cores)."""
    monkeypatch.setattr(
        plan, "QUICK", {**plan.QUICK, "num_train_examples": 64, "per_device_train_batch_size": 16, "max_steps": 1}
    )
    monkeypatch.setattr(plan, "QUICK_NUM_TEST", 8)


def test_demo_quick_writes_results_and_refuses_to_overwrite(capsys, tmp_path, small_quick_plan):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--output-dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    payload = json.loads((out / "results.json").read_text())
    assert payload["quick"] is True and payload["jobs"] == 2
    results = payload["results"]
    assert [r["method"] for r in results] == list(plan.DEFAULT_ROWS)
    assert results[0]["n"] == results[1]["n"] > 0
    assert "| method | benchmark |" in stdout
    assert "| cot | chain-3step (held-out) |" in stdout and "| atp-rl | chain-3step (held-out) |" in stdout
    assert (out / "logs" / "atp-rl.txt").is_file()

    before = (out / "results.json").read_text()
    line = user_error(capsys, ["demo", "--quick", "--output-dir", str(out)])
    assert str(out) in line and "--overwrite" in line
    assert (out / "results.json").read_text() == before  # left alone

    (out / "stale.txt").write_text("old")
    assert cli.main(["demo", "--quick", "--output-dir", str(out), "--overwrite", "--rows", "cot"]) == 0
    assert not (out / "stale.txt").exists()
    [row] = json.loads((out / "results.json").read_text())["results"]
    assert row["method"] == "cot"

    # The table's problems are written out, so `eval --file` scores a row's model on exactly them.
    scored = tmp_path / "eval"
    model = out / "runs" / "cot" / "final"
    assert (
        cli.main(["eval", "--model", str(model), "--file", str(out / "held_out.json"), "--output-dir", str(scored)])
        == 0
    )
    [again] = json.loads((scored / "results.json").read_text())["results"]
    assert (again["n"], again["accuracy"]) == (row["n"], row["accuracy"])


def test_demo_rows_and_seed(capsys, tmp_path, small_quick_plan):
    out = tmp_path / "demo"
    assert (
        cli.main(["demo", "--quick", "--output-dir", str(out), "--rows", "no-cot", "--seed", "5", "--jobs", "1"]) == 0
    )
    payload = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in payload["results"]] == ["no-cot"]
    assert payload["seed"] == 5 and payload["jobs"] == 1
    saved = json.loads((out / "runs" / "no-cot" / "final" / "latentreason.json").read_text())
    assert saved["method_config"]["seed"] == 5
    line = user_error(capsys, ["demo", "--quick", "--output-dir", str(tmp_path / "x"), "--rows", "cocnut"])
    assert "--rows: unknown cocnut" in line


def result(method: str, accuracy: float, latents: float = 0.0) -> EvalResult:
    return EvalResult(method, "chain", 100, accuracy, 0.0, latents, latents, 0.001, 1000.0)


def test_seed_summary_gives_mean_sample_std_and_range():
    per_seed = {
        42: [result("cot", 1.0), result("atp", 0.30, 6)],
        1: [result("cot", 1.0), result("atp", 0.40, 6)],
        2: [result("cot", 1.0), result("atp", 0.20, 4)],
    }
    cot, atp = seed_summary(per_seed)
    assert cot["accuracy_mean"] == 1.0 and cot["accuracy_std"] == 0.0
    assert atp["accuracy_by_seed"] == {42: 0.30, 1: 0.40, 2: 0.20}
    assert atp["accuracy_mean"] == pytest.approx(0.30)
    assert atp["accuracy_std"] == pytest.approx(0.10)  # sample std (n - 1) of 0.3, 0.4, 0.2
    assert (atp["accuracy_min"], atp["accuracy_max"]) == (0.20, 0.40)
    assert atp["latent_tokens_mean"] == pytest.approx(16 / 3)
    assert "| atp | 30.0% ± 10.0 | 20.0%-40.0% | 30.0% | 40.0% | 20.0% | 5.3 |" in summary_table([cot, atp])


def test_demo_over_several_seeds_writes_each_table_and_the_summary(capsys, tmp_path, small_quick_plan):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--output-dir", str(out), "--rows", "no-cot", "--seed", "3,4"]) == 0
    accuracy = {}
    for seed in (3, 4):
        payload = json.loads((out / f"seed-{seed}" / "results.json").read_text())
        assert payload["seed"] == seed
        accuracy[seed] = {r["method"]: r["accuracy"] for r in payload["results"]}
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["no-cot"]
    for row in rows:
        by_seed = [accuracy[s][row["method"]] for s in (3, 4)]
        assert row["accuracy_mean"] == pytest.approx(sum(by_seed) / 2)
    assert "| no-cot |" in (out / "summary.md").read_text()
    line = user_error(capsys, ["demo", "--quick", "--output-dir", str(tmp_path / "x"), "--seed", "1,x"])
    assert "--seed: expected whole numbers separated by commas, got '1,x'" in line
