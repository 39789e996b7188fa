"""RL faults: a GRPO run killed with SIGKILL at a random step resumes to the same weights."""

from __future__ import annotations

import dataclasses
import json

import torch
from safetensors.torch import load_file

from latentreason.rl.run import run_rl
from tests.helpers import kill_cli_run_after_checkpoint
from tests.test_rl_trainer import rl_config, sft_model  # noqa: F401  (the fixture)

STEPS = 24


def test_sigkill_at_a_random_rl_step_then_resume_matches_an_uninterrupted_run(tmp_path, sft_model):  # noqa: F811
    # Flexible answers: an untrained model writes a number now and then, so the format reward varies within
    # groups and the updates have gradients (strict, every reward is 0 and only weight decay moves the weights,
    # with Adam's moments 0: a resume that lost them would still match).
    cfg = rl_config(
        sft_model, tmp_path / "straight", max_steps=STEPS, save_steps=1, num_eval_examples=0, answer_mode="flexible"
    )
    straight = run_rl(cfg, progress=False).final_dir
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert sum(row["grad_norm"] > 0 for row in log if "grad_norm" in row) > STEPS // 2

    killed = dataclasses.replace(cfg, output_dir=str(tmp_path / "killed"))
    flags = ["rl", "--model_name_or_path", str(sft_model), "--output_dir", killed.output_dir]
    for name in (
        "dataset",
        "num_train_examples",
        "num_eval_examples",
        "questions_per_step",
        "num_generations",
        "per_device_train_batch_size",
        "max_completion_length",
        "max_new_tokens",
        "learning_rate",
        "lr_scheduler_type",
        "max_steps",
        "seed",
        "save_steps",
        "answer_mode",
    ):
        flags += [f"--{name}", str(getattr(killed, name))]
    flags += ["--dataset_params", "{num_steps: 2}"]
    kill_cli_run_after_checkpoint(flags, tmp_path / "killed", max_step=STEPS // 2)

    resumed = run_rl(dataclasses.replace(killed, resume_from_checkpoint="auto"), progress=False)
    assert resumed.global_step == STEPS
    for name in ("model.safetensors", "heads.safetensors"):  # the base model and the latent and stop heads
        got, expected = load_file(str(resumed.final_dir / name)), load_file(str(straight / name))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected), name
