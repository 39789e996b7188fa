"""`latentreason train-rm`: labelled questions, the shared loop's steps, logs and checkpoints, recall@1 on
held-out questions selecting output_dir/best. A tiny untrained Coconut model answers nothing right, so the
verdicts come from a fixed fake judge (by the answer text), which makes the outcomes mixed and known."""

from __future__ import annotations

import json

import pytest
import torch

from latentreason import cli
from latentreason.tts import rm_run
from latentreason.tts.reward_model import LatentRM
from latentreason.tts.rm_config import RMConfig
from latentreason.tts.rm_run import run_train_rm
from tests.helpers import build_tiny_lm


@pytest.fixture(scope="module")
def coconut_model(tmp_path_factory):
    lm = build_tiny_lm("llama", seed=1)
    lm.meta["method"] = "coconut"
    path = tmp_path_factory.mktemp("coconut") / "final"
    lm.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def parity_judge(monkeypatch):
    def judge_by(answer_mode):
        return lambda problem, text: sum(map(ord, text)) % 2 == 0

    monkeypatch.setattr(rm_run, "answer_judge", judge_by)


def rm_config(model, output_dir, **overrides) -> RMConfig:
    values = dict(
        model_name_or_path=str(model),
        dataset="synthetic:chain",
        dataset_params={"num_steps": 2},
        num_train_examples=12,
        num_eval_examples=6,
        output_dir=str(output_dir),
        latent_sampler_args={"sigma": 1.0, "scale": "rms"},
        trajectories=4,
        continuations=1,
        per_device_train_batch_size=2,
        max_new_tokens=6,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        max_steps=4,
        eval_steps=2,
        logging_steps=1,
        save_steps=2,
        seed=3,
    )
    return RMConfig(**{**values, **overrides})


def test_train_rm_logs_its_loss_and_keeps_the_best_model_by_recall(tmp_path, coconut_model):
    out = tmp_path / "rm"
    result = run_train_rm(rm_config(coconut_model, out), progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3, 4]
    recalls = [row["eval_recall_at_1"] for row in log if "eval_recall_at_1" in row]
    assert len(recalls) == 2 and result.eval.recall_at_1 == recalls[-1]
    chances = {row["eval_recall_at_1_chance"] for row in log if "eval_recall_at_1" in row}
    assert len(chances) == 1 and 0 < chances.pop() < 1  # held-out questions keep right and wrong trajectories
    best = json.loads((out / "best" / "latentreason.json").read_text())["selected"]
    assert best["recall_at_1"] == max(recalls) and best["step"] in (2, 4)
    assert (out / "checkpoint-2").is_dir()

    final = LatentRM.from_pretrained(out / "final")
    best_rm = LatentRM.from_pretrained(out / "best")
    start = build_tiny_lm("llama", seed=1)
    for name, weight in start.model.state_dict().items():  # train_backbone false: only the head learned
        torch.testing.assert_close(final.lm.model.state_dict()[name], weight)
        torch.testing.assert_close(best_rm.lm.model.state_dict()[name], weight)
    halfway = LatentRM.from_pretrained(out / "checkpoint-2")
    assert not torch.equal(final.head.net[0].weight, halfway.head.net[0].weight)  # steps 3 and 4 moved the head


def test_train_rm_resumes_from_its_checkpoint(tmp_path, coconut_model):
    out = tmp_path / "rm"
    run_train_rm(rm_config(coconut_model, out, max_steps=2), progress=False)
    resumed = run_train_rm(rm_config(coconut_model, out, resume_from_checkpoint="auto"), progress=False)
    assert resumed.global_step == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3, 4]


def test_train_rm_of_a_model_without_thoughts_is_a_user_error(tmp_path, capsys):
    lm = build_tiny_lm("llama")
    lm.meta["method"] = "cot"
    lm.save_pretrained(tmp_path / "cot")
    argv = ["train-rm", "--model_name_or_path", str(tmp_path / "cot"), "--output_dir", str(tmp_path / "rm")]
    assert cli.main(argv) == 2
    assert "trained with 'cot', which has no latent thoughts" in capsys.readouterr().err
