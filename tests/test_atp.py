"""ATP-Latent SFT and SIM-CoT: heads, step targets, losses, the stop controller, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.methods.atp import ATPConfig, ATPLatent, gaussian_kl
from latentreason.methods.simcot import SIMCoT, SIMCoTConfig
from latentreason.model.latent_lm import LatentLM
from latentreason.training.run import run_training
from tests.helpers import build_tiny_lm, tiny_train_config


def test_gaussian_kl_matches_torch_distributions():
    mean, logvar = torch.randn(5, 7), torch.randn(5, 7)
    p = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    q = torch.distributions.Normal(torch.zeros(5, 7), torch.ones(5, 7))
    torch.testing.assert_close(gaussian_kl(mean, logvar), torch.distributions.kl_divergence(p, q))


def test_layout_masks_groups_beyond_the_steps():
    method = ATPLatent(ATPConfig(c_thought=2, max_latent_stage=3))
    assert method.layout(1, 3) == (1, 2)  # curriculum stage 1: one step latent
    assert method.layout(3, 2) == (2, 4)  # stage beyond the steps: no padded groups
    assert method.layout(4, 5) == (5, 6)  # past the last stage: all text removed, at most 3 groups


def test_step_targets_and_stop_labels():
    lm = build_tiny_lm("llama")
    method = ATPLatent(ATPConfig(c_thought=2, max_latent_stage=2, step_decoder="shared"))
    method.prepare(lm)
    problems = generate_chain(3, seed=0, num_steps=3)
    targets = method.step_targets(lm, problems[0], removed=3, groups=2)
    decoded = [lm.tokenizer.decode(t, skip_special_tokens=True) for t in targets]
    assert decoded == [problems[0].steps[0], f"{problems[0].steps[1]} {problems[0].steps[2]}"]
    assert all(t[-1] == lm.eos_id for t in targets)
    method.stage = 3  # past the last stage
    batch = method.collate(lm, problems)
    assert batch["latent_batch"].num_latents.tolist() == [4, 4, 4]
    assert batch["latent_batch"].extras["all_steps_latent"].all()
    total, metrics = method.loss(lm, batch)
    assert torch.isfinite(total)
    assert metrics["decoder_ce"] > 0 and metrics["stop_ce"] > 0 and metrics["kl"] > 0


def test_losses_reach_every_head_and_gradients_flow():
    lm = build_tiny_lm("llama")
    lm.train()
    method = ATPLatent(ATPConfig(c_thought=2, max_latent_stage=3, step_decoder="small", step_decoder_layers=1))
    method.prepare(lm)
    method.stage = 2
    batch = method.collate(lm, generate_chain(4, seed=1, num_steps=2))
    total, _ = method.loss(lm, batch)
    total.backward()
    for name in ("latent_head", "stop_head", "step_decoder"):
        grads = [p.grad for p in lm.heads[name].parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    assert lm.embed.weight.grad.abs().sum() > 0


def test_stop_controller_ends_rows_and_rollout_exits_early():
    lm = build_tiny_lm("llama")
    method = ATPLatent(ATPConfig(c_thought=2, max_latent_stage=5, step_decoder="shared", max_new_tokens=4))
    method.prepare(lm)
    with torch.no_grad():  # force "stop" at the first group start for every row
        lm.heads["stop_head"].net[-1].bias.copy_(torch.tensor([-100.0, 100.0]))
    solutions = method.solver(lm).solve(generate_chain(3, seed=2))
    assert [s.latent_tokens for s in solutions] == [0, 0, 0]
    with torch.no_grad():  # never stop: the cap of max_latent_stage groups applies
        lm.heads["stop_head"].net[-1].bias.copy_(torch.tensor([100.0, -100.0]))
    solutions = method.solver(lm).solve(generate_chain(3, seed=2))
    assert [s.latent_tokens for s in solutions] == [10, 10, 10]


@pytest.mark.parametrize("decoder", ["shared", "copy", "small"])
def test_atp_trains_saves_and_reloads_its_heads(tmp_path, decoder):
    config = tiny_train_config(
        ATPConfig,
        tmp_path / "atp",
        num_eval_examples=4,
        c_thought=2,
        max_latent_stage=2,
        start_stage=1,
        step_decoder=decoder,
        step_decoder_layers=1,
    )
    result = run_training("atp", config, progress=False)
    assert (result.final_dir / "heads.safetensors").is_file()
    lm = LatentLM.from_pretrained(result.final_dir).eval()
    expected = {"latent_head", "stop_head"} | ({"step_decoder"} if decoder != "shared" else set())
    assert set(lm.heads) == expected
    # The reloaded heads are the trained ones: same solver output as an in-memory reload.
    problems = generate_chain(4, seed=5, num_steps=2)
    first = ATPLatent(config).solver(lm).solve(problems)
    again = ATPLatent(config).solver(LatentLM.from_pretrained(result.final_dir).eval()).solve(problems)
    assert [s.text for s in first] == [s.text for s in again]
    assert [s.latent_tokens for s in first] == [s.latent_tokens for s in again]


def test_simcot_adds_the_decoder_loss_to_coconut():
    lm = build_tiny_lm("llama")
    method = SIMCoT(SIMCoTConfig(c_thought=1, max_latent_stage=2, step_decoder="shared"))
    method.prepare(lm)
    method.stage = 2
    batch = method.collate(lm, generate_chain(4, seed=3, num_steps=3))
    total, metrics = method.loss(lm, batch)
    assert metrics["decoder_ce"] > 0
    assert total.item() == pytest.approx(metrics["ce"] + metrics["decoder_ce"], rel=1e-5)


def test_inspect_shows_decoded_steps_stop_probabilities_and_nearest_tokens(tmp_path, capsys):
    from latentreason import cli

    config = tiny_train_config(
        ATPConfig,
        tmp_path / "atp",
        max_steps=2,
        c_thought=2,
        max_latent_stage=2,
        step_decoder="small",
        step_decoder_layers=1,
    )
    final = run_training("atp", config, progress=False).final_dir
    lm = LatentLM.from_pretrained(final)
    with torch.no_grad():  # never stop early: both groups are thought, decoded and shown
        lm.heads["stop_head"].net[-1].bias.copy_(torch.tensor([100.0, -100.0]))
    lm.save_pretrained(final)
    capsys.readouterr()  # what training printed (DeepSpeed's first import writes a line to stdout)
    assert cli.main(["inspect", "--model", str(final), "--question", "3 + 4 * 2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[0]
    assert report["latents"] == 4 and len(report["groups"]) == 2
    for group in report["groups"]:
        assert isinstance(group["decoded"], str) and 0.0 <= group["p_stop"] < 0.5
        assert len(group["latents"]) == 2 and all(len(z["nearest"]) == 3 for z in group["latents"])
    assert cli.main(["inspect", "--model", str(final), "--question", "3 + 4 * 2"]) == 0
    text = capsys.readouterr().out
    assert "group 1: decoded" in text and "p_stop" in text and "nearest:" in text


def test_atp_training_is_reproducible(tmp_path):
    """New heads are initialised from a seeded RNG: two identical runs give identical weights."""
    from safetensors.torch import load_file

    weights = []
    for run in ("a", "b"):
        config = tiny_train_config(
            ATPConfig,
            tmp_path / run,
            dataset_params={"num_steps": 3},
            c_thought=2,
            max_latent_stage=2,
            start_stage=1,
            step_decoder="small",
            step_decoder_layers=1,
        )
        final = run_training("atp", config, progress=False).final_dir
        weights.append({**load_file(str(final / "model.safetensors")), **load_file(str(final / "heads.safetensors"))})
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_small_step_decoder_copies_the_first_layers_of_the_base_model():
    from latentreason.model.heads import step_decoder_model

    lm = build_tiny_lm("llama")
    small = step_decoder_model(lm.model, num_hidden_layers=1)
    base = lm.model.state_dict()
    copied = small.state_dict()
    assert set(copied) < set(base)
    for name, tensor in copied.items():
        assert torch.equal(tensor, base[name]), name


def test_stage_zero_has_no_stop_decisions_and_a_finite_loss():
    lm = build_tiny_lm("llama")
    method = ATPLatent(ATPConfig(c_thought=2, max_latent_stage=2, step_decoder="shared"))
    method.prepare(lm)
    method.stage = 0  # the CoT stage of the curriculum: no latent slots at all
    total, metrics = method.loss(lm, method.collate(lm, generate_chain(4, seed=2, num_steps=2)))
    assert torch.isfinite(total) and metrics["stop_ce"] == 0.0
