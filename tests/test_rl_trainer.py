"""The GRPO trainer (ATP-Latent, CoLaR): it runs, logs TRL's metric names, moves the policy the right way, resumes
exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from latentreason.cli import main
from latentreason.errors import ConfigError, UserError
from latentreason.methods.atp import ATPConfig, ATPLatent
from latentreason.methods.colar import STD_KEY, CoLaR, CoLaRConfig
from latentreason.rl.config import RLConfig
from latentreason.rl.rewards import register_reward
from latentreason.rl.run import run_rl
from tests.helpers import build_tiny_lm, eot_at_varied_steps


@register_reward("test_short_plan")
def short_plan(context):
    """A reward that varies within every group of an untrained model: fewer latents are better."""
    return lambda problems, completions: [-float(c.num_latents) for c in completions]


# The default rewards are 0 for every rollout of an untrained model: every advantage, and every gradient, is
# then 0, and only weight decay moves the weights.
SHORT_PLAN = {"reward_funcs": ["test_short_plan"], "reward_weights": [1.0]}


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """A saved (untrained) ATP-Latent model, as `latentreason train --method atp` would leave it."""
    lm = build_tiny_lm("llama", seed=2)
    config = ATPConfig(c_thought=1, max_latent_stage=3, step_decoder="small", step_decoder_layers=1, max_new_tokens=8)
    torch.manual_seed(0)
    ATPLatent(config).prepare(lm)
    lm.meta = {"method": "atp", "method_config": dataclasses.asdict(config)}
    path = tmp_path_factory.mktemp("atp") / "final"
    lm.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def colar_model(tmp_path_factory):
    """A saved (untrained) CoLaR model whose rows stop thinking at varied steps, by soft decisions."""
    lm = build_tiny_lm("llama", seed=2)
    config = CoLaRConfig(max_latents=6, compression_factor=2, embedding_std=0.25, max_new_tokens=8)
    torch.manual_seed(0)
    CoLaR(config).prepare(lm)
    with torch.no_grad():  # flatter logits: p(<eot>) is rarely near 0 or 1, so RL can move the stop decisions
        lm.model.model.norm.weight.mul_(0.3)
    eot_at_varied_steps(lm)
    lm.meta.update(method="colar", method_config=dataclasses.asdict(config))
    path = tmp_path_factory.mktemp("colar") / "final"
    lm.save_pretrained(path)
    return path


def rl_config(sft_model, output_dir, **overrides) -> RLConfig:
    values = dict(
        model_name_or_path=str(sft_model),
        dataset="synthetic:chain",
        dataset_params={"num_steps": 2},
        num_train_examples=32,
        num_eval_examples=8,
        output_dir=str(output_dir),
        questions_per_step=4,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        max_new_tokens=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_steps=2,
        seed=3,
    )
    values.update(overrides)
    return RLConfig(**values)


def test_rl_runs_and_logs_trl_and_latent_metrics(tmp_path, sft_model):
    # The default rewards and one that gives gradients; no weight decay: what moves was trained.
    rewards = {
        "reward_funcs": ["accuracy", "format", "coherence", "test_short_plan"],
        "reward_weights": [1, 0.5, 0.1, 1],
    }
    result = run_rl(rl_config(sft_model, tmp_path / "rl", weight_decay=0.0, **rewards), progress=False)
    log = [json.loads(line) for line in (tmp_path / "rl" / "log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "reward" in row]
    assert [row["step"] for row in steps] == [1, 2]
    for key in (
        "reward",
        "reward_std",
        "rewards/accuracy/mean",
        "rewards/format/mean",
        "rewards/coherence/mean",
        "frac_reward_zero_std",
        "kl",
        "clip_ratio/region_mean",
        "log_ratio/clamped_frac",
        "latents/mean_active",
        "latents/norm",
        "grad_norm",
        "time/rollout_s",
    ):
        assert key in steps[0], key
    assert 0 <= steps[0]["latents/mean_active"] <= 3
    assert min(row["grad_norm"] for row in steps) > 0
    meta = json.loads((result.final_dir / "latentreason.json").read_text())
    assert meta["method"] == "atp" and meta["rl_config"]["num_generations"] == 4
    assert meta["method_config"]["c_thought"] == 1  # evaluation rebuilds the SFT solver settings
    assert result.eval is not None and result.eval.n > 0
    # Only the policy moved: the step decoder is frozen.
    before, after = (
        load_file(str(sft_model / "heads.safetensors")),
        load_file(str(result.final_dir / "heads.safetensors")),
    )
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"latent_head", "stop_head"}
    assert not torch.equal(
        load_file(str(sft_model / "model.safetensors"))["model.embed_tokens.weight"],
        load_file(str(result.final_dir / "model.safetensors"))["model.embed_tokens.weight"],
    )


def test_one_update_raises_the_log_prob_of_rollouts_with_positive_advantage(tmp_path, sft_model):
    from latentreason.layout import encode_problem
    from latentreason.methods.saved import method_for
    from latentreason.model.latent_lm import LatentLM
    from latentreason.rl.grpo import clipped_policy_loss
    from latentreason.rl.policy import LatentPolicy
    from tests.helpers import chain_problems

    lm = LatentLM.from_pretrained(sft_model).eval()
    method = method_for(lm, "test")
    method.prepare(lm)
    policy = LatentPolicy(lm, method, max_completion_length=6)
    prompts = [encode_problem(lm.tokenizer, p).prompt + [lm.bot_id] for p in chain_problems(8, seed=1)]
    batch = policy.sample(prompts, torch.Generator().manual_seed(0))
    advantages = torch.tensor([1.0, -1.0] * 4)
    optimizer = torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    for loss_type in ("sequence-ratio", "token-mean"):
        new = policy.logprobs(batch)
        out = clipped_policy_loss(new.flat(), batch.old.flat(), batch.action_mask, advantages, loss_type=loss_type)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        moved = (policy.logprobs(batch).flat() - batch.old.flat()).masked_fill(~batch.action_mask, 0).sum(1)  # [B]
    assert (moved * advantages).sum() > 0
    assert moved[advantages > 0].mean() > moved[advantages < 0].mean()


def split_and_resume(sft_model, tmp_path, **overrides) -> list[dict]:
    """Run 3 steps straight, and 2 steps then a resume to 3; check equal weights; return the split run's log."""
    whole = run_rl(rl_config(sft_model, tmp_path / "whole", max_steps=3, num_eval_examples=0, **overrides), False)
    first = rl_config(sft_model, tmp_path / "split", max_steps=2, num_eval_examples=0, **overrides)
    run_rl(first, progress=False)
    resumed = run_rl(dataclasses.replace(first, max_steps=3, resume_from_checkpoint="auto"), progress=False)
    a = load_file(str(whole.final_dir / "model.safetensors"))
    b = load_file(str(resumed.final_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    return [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]


def test_resumed_rl_run_ends_with_the_same_weights(tmp_path, sft_model):
    log = split_and_resume(sft_model, tmp_path, **SHORT_PLAN)  # gradients, so Adam's moments matter
    assert [row["step"] for row in log if "reward" in row] == [1, 2, 3]


def test_kl_to_the_starting_policy_is_zero_at_the_start_and_grows(tmp_path, sft_model):
    cfg = rl_config(
        sft_model,
        tmp_path / "kl",
        beta=0.04,
        num_eval_examples=0,
        max_steps=2,
        per_device_train_batch_size=16,
        learning_rate=3e-2,
        reward_funcs=["test_short_plan"],
        reward_weights=[1.0],
    )
    run_rl(cfg, progress=False)  # one update per step: the first sees the starting policy
    log = [json.loads(line) for line in (tmp_path / "kl" / "log.jsonl").read_text().splitlines()]
    kls = [row["kl"] for row in log if "kl" in row]
    assert abs(kls[0]) < 1e-6 and kls[1] > 1e-4


@pytest.mark.parametrize("model", ["sft_model", "colar_model"])
def test_rl_learns_what_the_reward_asks(tmp_path, model, request):
    cfg = rl_config(
        request.getfixturevalue(model),
        tmp_path / "short",
        reward_funcs=["test_short_plan"],
        reward_weights=[1.0],
        learning_rate=1e-2,
        max_steps=8,
        num_eval_examples=0,
    )
    run_rl(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "short" / "log.jsonl").read_text().splitlines()]
    latents = [row["latents/mean_active"] for row in log if "reward" in row]
    assert sum(latents[-2:]) / 2 < 0.5 * sum(latents[:2]) / 2


def test_kl_runs_on_minibatches_and_resumes_against_the_starting_policy(tmp_path, sft_model):
    # 16 rollouts in updates of 4: each minibatch is trimmed to its own rollouts' lengths, the reference
    # log-probs with it; resuming rebuilds the reference from the SFT model, not from the checkpoint.
    kl = dict(beta=0.04, per_device_train_batch_size=4, reward_funcs=["test_short_plan"], reward_weights=[1.0])
    log = split_and_resume(sft_model, tmp_path, learning_rate=3e-2, **kl)
    assert log[-1]["kl"] > 0


def test_recomputed_old_logprobs_train_like_the_sampled_ones_in_float32(tmp_path, sft_model):
    runs = {}
    for setting in ("false", "true"):
        cfg = rl_config(
            sft_model, tmp_path / setting, num_eval_examples=0, recompute_old_logprobs=setting, **SHORT_PLAN
        )
        final = run_rl(cfg, progress=False).final_dir
        runs[setting] = {**load_file(str(final / "model.safetensors")), **load_file(str(final / "heads.safetensors"))}
    # Only rounding differs: measured 1.2e-5 at most, 5 values above 1e-6 (Adam's first update on nearly
    # cancelling gradients). Wrong old log-probs move almost every value by several times lr (6.6e-3).
    worst = max((float((runs["true"][k] - runs["false"][k]).abs().max()), k) for k in runs["false"])
    assert worst[0] <= 1e-4, worst


def test_bad_settings_are_refused(tmp_path, sft_model):
    with pytest.raises(ConfigError, match="reward_weights"):
        rl_config(sft_model, tmp_path, reward_weights=[1.0])
    with pytest.raises(ConfigError, match="num_generations"):
        rl_config(sft_model, tmp_path, num_generations=1)
    with pytest.raises(ConfigError, match="coherence_gate"):
        rl_config(sft_model, tmp_path, reward_funcs=["format", "coherence"], reward_weights=[0.5, 1.0])
    with pytest.raises(ConfigError, match="at least one"):
        rl_config(sft_model, tmp_path, reward_funcs=[], reward_weights=[])
    with pytest.raises(UserError, match="do not split"):
        run_rl(rl_config(sft_model, tmp_path / "split", per_device_train_batch_size=5), progress=False)


def test_rl_refuses_a_model_of_a_method_without_a_policy(tmp_path):
    lm = build_tiny_lm("llama")
    lm.meta = {"method": "coconut"}  # latent thoughts, but no latent actions (and not a text method)
    lm.save_pretrained(tmp_path / "coconut")
    with pytest.raises(UserError, match="RL needs an ATP-Latent or CoLaR model, a model trained with a text method"):
        run_rl(rl_config(tmp_path / "coconut", tmp_path / "rl"), progress=False)


def test_rl_command_line(tmp_path, sft_model, capsys):
    code = main(
        [
            "rl",
            "--config",
            "atp-rl-tiny",
            "--model_name_or_path",
            str(sft_model),
            "--output_dir",
            str(tmp_path / "cli"),
            "--max_steps",
            "1",
            "--questions_per_step",
            "2",
            "--num_generations",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--num_train_examples",
            "16",
            "--num_eval_examples",
            "4",
        ]
    )
    assert code == 0
    assert "final model" in capsys.readouterr().out
    assert main(["rl", "--config", "atp-rl-tiny", "--loss_type", "avg"]) == 2


def test_train_refuses_an_rl_recipe_with_a_pointer_to_rl(capsys):
    assert main(["train", "--config", "atp-rl-tiny"]) == 2
    assert "latentreason rl" in capsys.readouterr().err


@register_reward("test_nan")
def nan_reward(context):
    return lambda problems, completions: [float("nan")] * len(completions)


def test_non_finite_updates_are_skipped_and_too_many_in_a_row_stop_the_run(tmp_path, sft_model):
    cfg = rl_config(sft_model, tmp_path / "nan", reward_funcs=["test_nan"], reward_weights=[1.0], max_steps=1)
    result = run_rl(dataclasses.replace(cfg, max_nonfinite_steps=10), progress=False)
    log = [json.loads(line) for line in (tmp_path / "nan" / "log.jsonl").read_text().splitlines()]
    assert log[0]["skipped_nonfinite"] == 2  # both updates of the step
    before, after = (
        load_file(str(sft_model / "model.safetensors")),
        load_file(str(result.final_dir / "model.safetensors")),
    )
    assert all(torch.equal(before[k], after[k]) for k in before)  # no NaN reached the weights
    with pytest.raises(UserError, match="not finite for 2 steps in a row"):
        run_rl(dataclasses.replace(cfg, output_dir=str(tmp_path / "stop"), max_nonfinite_steps=2), progress=False)


class Bar:
    """Stands in for the loop's progress bar: records the bars made and whether the loop closed them."""

    made: list[Bar] = []

    def __init__(self, **settings):
        self.closed = False
        Bar.made.append(self)

    def update(self, n: int) -> None:
        pass

    def set_postfix(self, values: dict) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_a_stopped_run_closes_its_progress_bar(tmp_path, sft_model, monkeypatch):
    """So that the error message starts on its own line."""
    from latentreason.training import loop

    monkeypatch.setattr(loop, "tqdm", Bar)
    monkeypatch.setattr(Bar, "made", [])
    cfg = rl_config(sft_model, tmp_path / "stop", reward_funcs=["test_nan"], reward_weights=[1.0], max_steps=1)
    with pytest.raises(UserError, match="not finite for 2 steps in a row"):
        run_rl(dataclasses.replace(cfg, max_nonfinite_steps=2), progress=False)
    assert [bar.closed for bar in Bar.made] == [True]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide precision: let this test pick bf16 and leave no trace."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_under_bf16_the_first_update_sees_ratio_one(tmp_path, sft_model, fresh_accelerate_state):
    # bf16 autocast (on CPU here): old log-probs are recomputed in the updates' own precision.
    cfg = rl_config(sft_model, tmp_path / "bf16", bf16="true", per_device_train_batch_size=16, max_steps=1)
    run_rl(dataclasses.replace(cfg, num_eval_examples=0), progress=False)
    log = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert log[0]["log_ratio/max_abs"] < 1e-3


def colar_config(colar_model, output_dir, **overrides) -> RLConfig:
    """No coherence (CoLaR has no step decoder); the short-plan term gives an untrained model a learning signal."""
    rewards = {"reward_funcs": ["accuracy", "format", "test_short_plan"], "reward_weights": [1.0, 0.5, 0.1]}
    return rl_config(colar_model, output_dir, **(rewards | overrides))


def test_colar_rl_runs_logs_and_keeps_its_method(tmp_path, colar_model):
    result = run_rl(colar_config(colar_model, tmp_path / "rl"), progress=False)
    log = [json.loads(line) for line in (tmp_path / "rl" / "log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "reward" in row]
    assert [row["step"] for row in steps] == [1, 2]
    for key in ("rewards/accuracy/mean", "rewards/format/mean", "clip_ratio/region_mean", "kl"):
        assert key in steps[0], key
    assert steps[0]["grad_norm"] > 0
    assert 0 < steps[0]["latents/mean_active"] < 6  # rows stop at their own <eot>
    meta = json.loads((result.final_dir / "latentreason.json").read_text())
    assert meta["method"] == "colar" and meta[STD_KEY] == 0.25 and meta["method_config"]["compression_factor"] == 2
    assert result.eval is not None and result.eval.n > 0  # evaluated by the CoLaR solver
    before, after = (load_file(str(p / "heads.safetensors")) for p in (colar_model, result.final_dir))
    assert all(not torch.equal(before[k], after[k]) for k in before)  # the latent head (its only head) moved


def test_colar_rl_refuses_the_coherence_reward(tmp_path, colar_model):
    with pytest.raises(ConfigError, match="'coherence' decodes the latent plan with a step decoder"):
        run_rl(rl_config(colar_model, tmp_path / "rl"), progress=False)  # the default rewards include coherence
    assert not (tmp_path / "rl").exists()


def test_resumed_colar_rl_run_ends_with_the_same_weights(tmp_path, colar_model):
    first = colar_config(colar_model, tmp_path / "split", max_steps=2, num_eval_examples=0)
    whole = run_rl(dataclasses.replace(first, output_dir=str(tmp_path / "whole"), max_steps=3), progress=False)
    run_rl(first, progress=False)
    resumed = run_rl(dataclasses.replace(first, max_steps=3, resume_from_checkpoint="auto"), progress=False)
    a, b = (load_file(str(r.final_dir / "model.safetensors")) for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_rl_recipe_refuses_a_model_of_another_method(tmp_path, sft_model, capsys):
    args = ["rl", "--config", "colar-rl-tiny", "--model_name_or_path", str(sft_model)]
    assert main([*args, "--output_dir", str(tmp_path / "rl")]) == 2
    assert "for colar models" in capsys.readouterr().err
