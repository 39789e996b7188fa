"""Recommenders in the shared training loop: a SIGKILLed run resumes to the same weights, the recipes run,
the objective adds the fast-state loss as computed by hand, early stopping waits for min_epochs, `rec eval`
reads a saved model back, and `rec train` refuses bad settings with the field's name."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from latentreason.cli import main
from latentreason.config import load_config
from latentreason.errors import ConfigError
from latentreason.rec.bench import REC_RECIPES
from latentreason.rec.config import RecConfig
from latentreason.rec.model import Recommender
from latentreason.rec.run import TEST_FILE, run_rec_training
from latentreason.rec.trainer import RecObjective
from tests.helpers import kill_cli_run_after_checkpoint

RUN = dict(
    model="plr",
    reasoning_steps=2,
    streams=3,
    max_seq_length=8,
    hidden_size=16,
    num_heads=2,
    inner_size=32,
    per_device_train_batch_size=8,
    max_steps=30,
    save_steps=1,
    eval_steps=5,
    patience=0,
    logging_steps=1,
    seed=3,
)


@pytest.fixture
def interactions(tmp_path):
    rng = random.Random(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(40):
        start = rng.randrange(20)
        lines += [f"u{user}\ti{(start + k) % 20}\t{k}" for k in range(12)]  # a walk over 20 items
    path = tmp_path / "walks.inter"
    path.write_text("\n".join(lines) + "\n")
    return path


def config(interactions, out, **overrides) -> RecConfig:
    return RecConfig(**{**RUN, "dataset": str(interactions), "output_dir": str(out), **overrides})


def flags(cfg: RecConfig) -> list[str]:
    args = ["rec", "train", "--data", cfg.dataset, "--output_dir", cfg.output_dir]
    for key, value in RUN.items():
        args += [f"--{key}", str(value)]
    return args


def test_sigkill_then_resume_matches_an_uninterrupted_run(interactions, tmp_path):
    straight = run_rec_training(config(interactions, tmp_path / "straight"), progress=False)
    expected = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))

    killed = config(interactions, tmp_path / "killed")
    kill_cli_run_after_checkpoint(flags(killed), tmp_path / "killed", max_step=12)
    resumed = run_rec_training(config(interactions, tmp_path / "killed", resume_from_checkpoint="auto"), False)
    got = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert resumed.test == straight.test and resumed.valid == straight.valid


def test_a_walk_is_learnt_and_the_test_split_is_read_once_from_the_best_model(interactions, tmp_path):
    result = run_rec_training(config(interactions, tmp_path / "run", max_steps=60, save_steps=0), progress=False)
    record = json.loads((tmp_path / "run" / TEST_FILE).read_text())
    assert record["test"] == result.test and record["valid"] == result.valid
    assert result.test["recall@10"] > 0.9  # the next item of a walk is always the following one


@pytest.mark.parametrize("recipe", sorted(REC_RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_runs_a_step(recipe, interactions, tmp_path):
    tiny = dict(max_seq_length=8, hidden_size=16, inner_size=32, per_device_train_batch_size=8)
    run = {"dataset": str(interactions), "output_dir": str(tmp_path / "run"), "max_steps": 1, "eval_steps": 1}
    overrides = {**tiny, **run}
    result = run_rec_training(load_config(RecConfig, recipe, overrides), progress=False)
    assert result.global_step == 1 and (result.best_dir / "model.safetensors").is_file()


def test_fast_loss_adds_the_cross_entropy_of_the_encoders_own_state(interactions, tmp_path):
    cfg = config(interactions, tmp_path)
    torch.manual_seed(0)
    model = Recommender(cfg.model_settings(), num_items=20).eval()
    histories = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])  # [B, L], left-padded
    following = torch.tensor([[0, 0, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7]])  # the item after each position
    with torch.no_grad():
        plain, parts = RecObjective(model, diversity_weight=0.1, fast_loss_weight=0.0).objective(histories, following)
        both, both_parts = RecObjective(model, 0.1, fast_loss_weight=0.5).objective(histories, following)
        states, _ = model.encoder.encode(histories)  # [B, L, d]: the fast state at every position
        scores = states @ model.encoder.items.weight.T  # [B, L, 21]
        real = following > 0
        fast_ce = torch.nn.functional.cross_entropy(scores[real][:, 1:], following[real] - 1)
    assert "fast_ce" not in parts and both_parts["ce"] == parts["ce"]
    assert both_parts["fast_ce"] == pytest.approx(float(fast_ce), rel=1e-5)
    assert float(both) == pytest.approx(float(plain) + 0.5 * float(fast_ce), rel=1e-5)


def test_early_stopping_waits_for_min_epochs(interactions, tmp_path):
    eager = dict(patience=1, eval_steps=1, save_steps=0, max_steps=40)
    stopped = run_rec_training(config(interactions, tmp_path / "eager", min_epochs=0, **eager), progress=False)
    assert stopped.global_step < 40  # one evaluation without a better NDCG@10 stops it
    waited = run_rec_training(config(interactions, tmp_path / "wait", min_epochs=1000, **eager), progress=False)
    assert waited.global_step == 40


def test_rec_eval_reads_a_saved_model(interactions, tmp_path, capsys):
    run_rec_training(config(interactions, tmp_path / "run", max_steps=5, save_steps=0), progress=False)
    capsys.readouterr()
    assert main(["rec", "eval", "--model", str(tmp_path / "run" / "best"), "--split", "valid"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["users"] == 40 and 0 <= out["ndcg@10"] <= out["recall@10"] <= 1 and out["latency_ms_per_user"] > 0


def test_bad_settings_name_the_field(interactions, tmp_path, capsys):
    with pytest.raises(ConfigError, match="streams"):
        config(interactions, tmp_path, model="rearec", streams=2)
    with pytest.raises(ConfigError, match="reasoning_steps"):
        config(interactions, tmp_path, model="sasrec", reasoning_steps=1)
    with pytest.raises(ConfigError, match="fast_loss_weight"):
        config(interactions, tmp_path, model="sasrec", reasoning_steps=0, streams=1, fast_loss_weight=1.0)
    assert main(["rec", "train", "--data", str(interactions), "--stream_pooling", "max"]) == 2
    assert "stream_pooling" in capsys.readouterr().err
