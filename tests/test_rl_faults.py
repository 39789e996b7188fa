"""RL faults: a GRPO run killed with SIGKILL at a random step resumes to the same weights."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from latentreason.rl.run import run_rl
from latentreason.training.checkpoint import list_checkpoints
from tests.test_rl_trainer import rl_config, sft_model  # noqa: F401  (the fixture)

STEPS = 24


def test_sigkill_at_a_random_rl_step_then_resume_matches_an_uninterrupted_run(tmp_path, sft_model):  # noqa: F811
    cfg = rl_config(sft_model, tmp_path / "straight", max_steps=STEPS, save_steps=1, num_eval_examples=0)
    straight = run_rl(cfg, progress=False).final_dir

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
    ):
        flags += [f"--{name}", str(getattr(killed, name))]
    flags += ["--dataset_params", "{num_steps: 2}"]
    kill_after = random.SystemRandom().randint(1, STEPS // 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentreason.cli", *flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    run = tmp_path / "killed"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if run.is_dir() and any(int(p.name.split("-")[1]) >= kill_after for p in list_checkpoints(run)):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (kill_after, err.decode()[-2000:])
    assert not (run / "final").exists(), f"the run finished before the kill after step {kill_after}"

    resumed = run_rl(dataclasses.replace(killed, resume_from_checkpoint="auto"), progress=False)
    assert resumed.global_step == STEPS
    for name in ("model.safetensors", "heads.safetensors"):  # the base model and the latent and stop heads
        got, expected = load_file(str(resumed.final_dir / name)), load_file(str(straight / name))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected), name
