"""`latentreason study`: configs, the plan of runs, and a tiny study end to end (resume, report, models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from latentreason import cli
from latentreason.data.generators import generate
from latentreason.errors import ConfigError, UserError
from latentreason.study.config import SHIPPED_STUDIES, load_study
from latentreason.study.plan import plan_runs
from latentreason.study.runner import run_study, select

TINY = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}


def chain_study(tmp_path: Path) -> Path:
    """A study small enough for a test: 2-step chains, CoT / No-CoT / Coconut from CoT, one seed."""
    data = tmp_path / "valid.json"
    problems = generate("chain", 8, seed=99, num_steps=2)
    data.write_text(json.dumps([{"question": p.question, "steps": p.steps, "answer": p.answer} for p in problems]))
    study = {
        "name": "chains",
        "question": "Does anything learn in two steps?",
        "seeds": [3],
        "fields": {
            "tiny_model": {**TINY, "intermediate_size": 32},
            "dataset": "synthetic:chain",
            "dataset_params": {"num_steps": 2},
            "num_train_examples": 64,
            "num_eval_examples": 8,
            "per_device_train_batch_size": 16,
            "max_steps": 2,
            "warmup_steps": 0,
            "eval_steps": 1,
            "max_new_tokens": 12,
        },
        "tasks": {"chain": {"evaluate": {"file": str(data)}}},
        "rows": {
            "cot": {"recipe": "cot-tiny"},
            "no-cot": {"recipe": "no-cot-tiny"},
            "coconut": {"recipe": "coconut-tiny", "start": "cot"},
        },
        "published": {"chain": {"cot": [100.0, 12.0]}},
    }
    path = tmp_path / "chains.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize("profile", [None, "quick", "full"])
def test_every_shipped_study_plans_valid_runs(profile):
    for path in sorted(SHIPPED_STUDIES.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if profile is not None and profile not in raw.get("profiles", {}):
            continue
        study = load_study(str(path), profile)
        runs = plan_runs(study, Path("/nonexistent/out"), "/nonexistent/data")
        assert len(runs) == len(study.tasks) * len(study.rows) * len(study.seeds)
        for run in runs:  # every latent row starts from its own task and seed's run
            if run.start is not None:
                assert run.start.startswith(f"{run.task}/") and run.start.endswith(f"/seed-{run.seed}")


# Processes a shipped study is written for (its header says how it is launched); 1 for the others.
STUDY_PROCESSES = {"coconut-tasks-gpt2": 4}


def test_every_curriculum_in_a_shipped_study_reaches_its_final_layout():
    # Coconut's last stage and iCoT's whole-CoT removal are the methods the rows name: a run that stops
    # before them reports a partly-latent model (the stage length is an epoch, so data size counts too).
    from latentreason.methods.base import get_method
    from latentreason.recipes import RL_METHODS
    from latentreason.study.plan import _checked_config
    from latentreason.training.trainer import curriculum_warning

    for path in sorted(SHIPPED_STUDIES.glob("*.yaml")):
        study = load_study(str(path))
        for run in plan_runs(study, Path("/nonexistent/out"), "/nonexistent/data"):
            if read_method(run.train[2]) in RL_METHODS:
                continue  # GRPO on a finished SFT model: no curriculum
            argv = dict(zip(run.train[3::2], run.train[4::2]))
            config = _checked_config(run.train[2], {k[2:]: yaml.safe_load(v) for k, v in argv.items()}, run.key)
            if not config.num_train_examples:
                continue
            method = get_method(read_method(run.train[2]))(config)
            batch = config.per_device_train_batch_size * config.gradient_accumulation_steps
            steps_per_epoch = config.num_train_examples // (batch * STUDY_PROCESSES.get(study.name, 1))
            assert curriculum_warning(method, steps_per_epoch, config.max_steps) is None, (study.name, run.key)


def read_method(recipe: str) -> str:
    from latentreason.config import read_yaml
    from latentreason.recipes import resolve_config_path

    return read_yaml(resolve_config_path(recipe))["method"]


def test_a_run_starts_from_its_start_rows_final_model_with_the_study_fields_on_top(tmp_path):
    study = load_study(str(chain_study(tmp_path)))
    runs = {run.key: run for run in plan_runs(study, tmp_path / "out", None)}
    coconut = runs["chain/coconut/seed-3"]
    argv = dict(zip(coconut.train[3::2], coconut.train[4::2]))  # after `train --config coconut-tiny`
    assert coconut.train[:3] == ["train", "--config", "coconut-tiny"]
    assert argv["--model_name_or_path"] == str(tmp_path / "out/runs/chain/cot/seed-3/final")
    assert (argv["--seed"], argv["--max_steps"], argv["--resume_from_checkpoint"]) == ("3", "2", "auto")
    assert "--tiny_model" not in argv  # its shape comes with the CoT model it starts from
    assert coconut.start == "chain/cot/seed-3" and coconut.steps == 2
    assert coconut.eval[:3] == ["eval", "--model", str(tmp_path / "out/runs/chain/coconut/seed-3/final")]
    cot = runs["chain/cot/seed-3"].command("train")
    assert cot.startswith("latentreason train --config cot-tiny --") and " --tiny_model '{" in cot


def test_a_launcher_trains_each_run_on_several_devices(tmp_path):
    study = load_study(str(chain_study(tmp_path)))
    launcher = ("accelerate", "launch", "--num_processes", "4")
    run = plan_runs(study, tmp_path / "out", None, launcher)[0]
    assert run.command("train").startswith("accelerate launch --num_processes 4 -m latentreason.cli train --config ")
    assert run.command("eval").startswith("latentreason eval --model ")  # evaluation stays one process


def test_selecting_rows_adds_the_rows_they_start_from(tmp_path):
    runs = plan_runs(load_study(str(chain_study(tmp_path))), tmp_path, None)
    assert sorted(run.row for run in select(runs, None, ["coconut"])) == ["coconut", "cot"]
    with pytest.raises(UserError, match="--rows: unknown icot; the study's rows are coconut, cot, no-cot"):
        select(runs, None, ["icot"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rows": {"coconut": {"recipe": "coconut-tiny", "start": "icot"}}}, "rows.coconut: starts from 'icot'"),
        ({"rows": {"a": {"recipe": "cot-tiny", "start": "b"}, "b": {"recipe": "cot-tiny", "start": "a"}}}, "cycle"),
        ({"tasks": {"chain": {"evaluate": {"split": "valid"}}}}, "tasks.chain.evaluate: expected"),
        ({"rows": {"cot": {"recipe": "cot-tiny", "fields": {"max_stesp": 3}}}}, "row cot: unknown field 'max_stesp'"),
        ({"rows": {"cot": {"recipe": "cot-tiny", "stat": "x"}}}, "rows.cot: unknown field 'stat'"),
        ({"seeds": [1, 1]}, "seeds: expected distinct seeds"),
        ({"profiles": {"tiny": {}}}, "'profiles' must be a mapping with keys among default, quick, full"),
    ],
)
def test_a_bad_study_names_its_file_and_field(tmp_path, change, message):
    path = chain_study(tmp_path)
    study = {**yaml.safe_load(path.read_text()), **change}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=message) as err:
        plan_runs(load_study(str(path)), tmp_path, None)
    assert str(path) in str(err.value)


def test_a_profile_drops_the_tasks_and_rows_it_sets_to_null(tmp_path):
    path = chain_study(tmp_path)
    study = yaml.safe_load(path.read_text())
    study["tasks"]["other"] = {"evaluate": {"file": "x.json"}, "rows": {"coconut": {"c_thought": 2}}}
    study["tasks"]["chain"]["rows"] = {"coconut": {"c_thought": 2}}
    study["profiles"] = {"quick": {"tasks": {"other": None}, "rows": {"coconut": None}}}
    path.write_text(yaml.safe_dump(study))
    assert sorted(load_study(str(path)).tasks) == ["chain", "other"]
    quick = load_study(str(path), "quick")
    assert sorted(quick.tasks) == ["chain"] and sorted(quick.rows) == ["cot", "no-cot"]
    assert quick.tasks["chain"].rows == {}  # the dropped row's task fields go with it
    # Without the profile, a task's fields for a row that does not exist are still an error.
    study["tasks"]["chain"]["rows"] = {"coconutt": {"c_thought": 2}}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="tasks.chain.rows: coconutt not among the study's rows"):
        load_study(str(path))


def test_the_default_profile_applies_without_quick_or_full(tmp_path):
    path = chain_study(tmp_path)
    study = yaml.safe_load(path.read_text())
    study["profiles"] = {"default": {"rows": {"coconut": None}, "seeds": [4, 5]}, "quick": {"seeds": [6]}}
    path.write_text(yaml.safe_dump(study))
    default = load_study(str(path))
    assert sorted(default.rows) == ["cot", "no-cot"] and default.seeds == [4, 5]
    assert default.source.endswith("(profile default)")
    quick = load_study(str(path), "quick")  # --quick starts from the study itself, not from its default
    assert sorted(quick.rows) == ["coconut", "cot", "no-cot"] and quick.seeds == [6]


def test_runs_never_train_on_what_they_are_evaluated_on(tmp_path):
    path = chain_study(tmp_path)
    study = yaml.safe_load(path.read_text())
    study["tasks"]["chain"]["evaluate"] = {"file": "valid.json"}  # beside the study file
    study["tasks"]["bench"] = {"evaluate": {"benchmark": "prosqa", "split": "valid"}}
    path.write_text(yaml.safe_dump(study))
    runs = plan_runs(load_study(str(path)), tmp_path / "out", "/data")
    for run in runs:
        flags = dict(zip(run.train[1::2], run.train[2::2]))  # after "train"
        if run.task == "chain":
            assert flags["--never_train_on"] == str(tmp_path / "valid.json")
            assert run.eval[run.eval.index("--file") + 1] == str(tmp_path / "valid.json")
            assert "--data_dir" not in flags
        else:
            assert flags["--never_train_on"] == "prosqa:valid" and flags["--data_dir"] == "/data"


def test_an_unknown_study_lists_the_shipped_ones():
    with pytest.raises(UserError, match="not a shipped study \\(coconut-tasks"):
        load_study("coconut-task")


def test_a_tiny_study_runs_resumes_and_reports(capsys, tmp_path):
    config = chain_study(tmp_path)
    out, reports = tmp_path / "out", tmp_path / "reports"
    argv = ["study", "--config", str(config), "--output-dir", str(out), "--report-dir", str(reports)]
    assert cli.main(argv) == 0
    page = (reports / "chains.md").read_text()
    for row in ("cot", "no-cot", "coconut"):
        assert f"| {row} | 1 of 1 |" in page
    assert "coconut vs cot:" in page and "100.0% / 12.0" in page
    assert "**The question.** Does anything learn in two steps?" in page
    record = json.loads((out / "runs/chain/coconut/seed-3/record.json").read_text())
    assert (record["n"], record["steps"], len(record["correct"])) == (8, 2, 8)
    assert [step for step, _ in record["curve"]] == [1, 2]
    card = (out / "runs/chain/coconut/seed-3/final/README.md").read_text()
    assert "library_name: latentreason" in card and "optimizer steps: 2" in card

    # A study stopped during the coconut run's evaluation: the next invocation reuses the finished
    # runs and finishes that one only (its training is complete, so only its evaluation runs again).
    coconut = out / "runs/chain/coconut/seed-3"
    (coconut / "record.json").unlink()
    (coconut / "eval/results.json").unlink()
    kept = {row: (out / f"runs/chain/{row}/seed-3/record.json").stat().st_mtime_ns for row in ("cot", "no-cot")}
    final_before = (coconut / "final/model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "2 finished earlier and reused, 1 to run" in capsys.readouterr().out
    assert {row: (out / f"runs/chain/{row}/seed-3/record.json").stat().st_mtime_ns for row in kept} == kept
    assert (coconut / "final/model.safetensors").stat().st_mtime_ns == final_before
    assert json.loads((coconut / "record.json").read_text())["correct"] == record["correct"]

    # Changed settings are refused rather than mixed with the old runs' results.
    study = yaml.safe_load(config.read_text())
    study["rows"]["coconut"]["fields"] = {"max_steps": 3}
    config.write_text(yaml.safe_dump(study))
    assert cli.main(argv) == 2
    assert "settings changed since chain/coconut/seed-3 ran" in capsys.readouterr().err

    # Every model the study saved can be evaluated on other data later.
    assert cli.main(["eval", "--model", str(coconut / "final"), "--file", str(tmp_path / "valid.json"),
                     "--output-dir", str(tmp_path / "again")]) == 0  # fmt: skip
    [again] = json.loads((tmp_path / "again/results.json").read_text())["results"]
    assert again["accuracy"] == record["accuracy"]


def test_report_only_writes_what_is_finished_and_refuses_when_nothing_is(tmp_path):
    study = load_study(str(chain_study(tmp_path)))
    with pytest.raises(UserError, match="no finished runs"):
        run_study(study, tmp_path / "out", "chains", tmp_path / "reports", train=False)


def test_a_second_invocation_on_a_running_study_is_refused(tmp_path):
    import fcntl
    import os

    study = load_study(str(chain_study(tmp_path)))
    out = tmp_path / "out"
    out.mkdir()
    with (out / "study.lock").open("a+") as held:  # as the first invocation holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(str(os.getpid()))
        held.flush()
        with pytest.raises(UserError, match=f"another `latentreason study` is running on it \\(pid {os.getpid()}\\)"):
            run_study(study, out, "chains", tmp_path / "reports")
    assert not (out / "runs").exists()  # nothing started
