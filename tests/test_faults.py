"""Faults: a run killed with SIGKILL resumes to the same parameters; half-written checkpoints are
skipped by name; the last K checkpoints are kept; an existing output_dir is never overwritten unasked."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentreason.errors import UserError
from latentreason.train_config import SFTConfig
from latentreason.training import outputs
from latentreason.training.checkpoint import list_checkpoints, save_checkpoint
from latentreason.training.outputs import trim_log
from latentreason.training.run import run_training
from tests.helpers import TINY_TRAIN_MODEL, build_tiny_lm, kill_cli_run_after_checkpoint, tiny_train_config

# Enough steps that the run is still going when the kill lands (each step also writes a checkpoint).
KILL_RUN = dict(
    num_train_examples=96,
    per_device_train_batch_size=16,
    max_steps=48,
    save_steps=1,
    learning_rate=3e-3,
    seed=5,
)


def config(base, **overrides) -> SFTConfig:
    """A run writing into base/run."""
    return tiny_train_config(SFTConfig, base / "run", **{**KILL_RUN, **overrides})


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def cli_flags(cfg: SFTConfig) -> list[str]:
    """`latentreason train` flags reproducing the fields of `cfg` that tiny_train_config and KILL_RUN set."""
    fields = {**KILL_RUN, "dataset_params": "{num_steps: 2}", "num_eval_examples": 0, "max_new_tokens": 8}
    fields["tiny_model"] = "{" + ", ".join(f"{k}: {v}" for k, v in TINY_TRAIN_MODEL.items()) + "}"
    flags = ["train", "--method", "cot", "--output_dir", cfg.output_dir, "--logging_steps", "1"]
    for name, value in fields.items():
        flags += [f"--{name}", str(value)]
    return flags


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path):
    expected = weights(run_training("cot", config(tmp_path / "straight"), progress=False).final_dir)

    killed = config(tmp_path / "killed")
    kill_cli_run_after_checkpoint(cli_flags(killed), tmp_path / "killed" / "run", max_step=16)
    with (tmp_path / "killed" / "run" / "log.jsonl").open("a") as log:  # as if killed a step past its checkpoint,
        log.write('{"step": 17, "loss": 1.0}\n{"step": 18, "lo')  # mid-line

    resumed = run_training("cot", config(tmp_path / "killed", resume_from_checkpoint="auto"), progress=False)
    assert resumed.global_step == KILL_RUN["max_steps"]
    assert_same_weights(weights(resumed.final_dir), expected)
    # The log reads as one run: what the killed run logged past its checkpoint was dropped, not repeated.
    assert logged_steps(tmp_path / "killed") == logged_steps(tmp_path / "straight")


def logged_steps(root) -> list[int]:
    lines = (root / "run" / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_resume_trims_the_log_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    trim_log(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2}\n'


def test_half_written_checkpoints_are_named_and_skipped_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run_training("cot", config(tmp_path, max_steps=2, save_total_limit=0), progress=False)
    torn = run / ".tmp-checkpoint-3"  # killed while writing the step-3 checkpoint
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    unmarked = run / "checkpoint-4"  # copied without its trainer_state.json
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_bytes(b"partial")
    capsys.readouterr()

    result = run_training(
        "cot", config(tmp_path, max_steps=4, save_total_limit=0, resume_from_checkpoint="auto"), progress=False
    )
    out = capsys.readouterr().out
    assert f"skipping incomplete checkpoint {torn} (a save that never finished)" in out
    assert f"skipping incomplete checkpoint {unmarked} (no trainer_state.json)" in out
    assert f"resumed from {run / 'checkpoint-2'} at step 2" in out
    assert result.global_step == 4
    # The resumed run rewrote both steps: complete checkpoints, no temporary directory left.
    assert [p.name for p in list_checkpoints(run)] == [f"checkpoint-{s}" for s in (1, 2, 3, 4)]
    assert not torn.exists()
    assert weights(run / "checkpoint-4").keys() == weights(run / "checkpoint-2").keys()


def test_resume_auto_with_only_incomplete_checkpoints_refuses_the_non_empty_dir(tmp_path, capsys):
    torn = tmp_path / "run" / ".tmp-checkpoint-1"
    torn.mkdir(parents=True)
    with pytest.raises(UserError, match="is not empty"):
        run_training("cot", config(tmp_path, max_steps=1, resume_from_checkpoint="auto"), progress=False)
    assert f"skipping incomplete checkpoint {torn}" in capsys.readouterr().out


@pytest.mark.parametrize(("limit", "kept"), [(2, [4, 5]), (1, [5]), (0, [1, 2, 3, 4, 5])])
def test_save_total_limit_keeps_the_latest_checkpoints(tmp_path, limit, kept):
    run_training("cot", config(tmp_path, max_steps=5, save_total_limit=limit), progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [f"checkpoint-{s}" for s in kept]
    assert not list((tmp_path / "run").glob(".tmp-*"))


def test_existing_output_dir_is_left_untouched_unless_overwrite_is_asked(tmp_path):
    run = tmp_path / "run"
    run_training("cot", config(tmp_path, max_steps=4, save_steps=2, save_total_limit=0), progress=False)
    (run / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(UserError, match=f"output_dir {run} is not empty.*overwrite_output_dir=true"):
        run_training("cot", config(tmp_path, max_steps=1), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before

    run_training("cot", config(tmp_path, max_steps=2, save_steps=1, overwrite_output_dir=True), progress=False)
    # The old run's checkpoint-4 is gone (it would have outranked the new ones); other files stay.
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1", "checkpoint-2"]
    assert (run / "notes.txt").read_text() == "mine"
    assert len((run / "log.jsonl").read_text().splitlines()) == 2  # the new run's log only


def test_checkpoint_files_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(outputs, "_fsync", lambda path: synced.append(path))
    lm = build_tiny_lm("llama")
    optimizer = torch.optim.AdamW(lm.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    final = save_checkpoint(tmp_path, 3, lm, optimizer.state_dict(), scheduler, {"global_step": 3}, keep=0)
    tmp = tmp_path / ".tmp-checkpoint-3"
    files = [tmp / p.relative_to(final) for p in final.rglob("*") if p.is_file()]
    assert len(files) >= 5 and set(files) <= set(synced)  # model, optimizer, scheduler, rng, state...
    assert synced.index(tmp) > max(synced.index(f) for f in files)  # the directory after its files
    assert synced[-1] == tmp_path  # then the rename itself
    assert not tmp.exists()
