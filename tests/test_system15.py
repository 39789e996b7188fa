"""System-1.5: the shortcut mixture and the early exit against a per-position, per-layer reference, the step
shortcut's budget, the router supervision, both training stages, save/load/solve, and bad settings."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from latentreason import cli
from latentreason.data.generators.chain import generate_chain
from latentreason.engine.batch import positions_from_mask
from latentreason.engine.depth_shortcut import DepthShortcut
from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.rollout import fixed_latents
from latentreason.errors import ConfigError
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.evaluation.shortcut_solver import ShortcutSettings, ShortcutSolver, ShortcutSteps
from latentreason.methods.coconut import identity_map
from latentreason.methods.system15 import HEAD, System15, System15Config
from latentreason.methods.system15_losses import shortcut_supervision
from latentreason.model.latent_lm import LatentLM
from latentreason.train_config import SFTConfig
from latentreason.training.run import run_training
from tests.helpers import EXACT, MODEL_TYPES, build_tiny_lm, tiny_train_config

PADS = (2, 0)  # left padding of the two rows
THOUGHTS = 3  # the last positions of each row take the shortcut


@torch.no_grad()
def shortcut_lm(seed: int = 0, router_scale: float = 1.0, model_type: str = "llama"):
    """A float64 tiny model with a shortcut head whose adapters do something and whose routers vary by position."""
    lm = build_tiny_lm(model_type, dtype=torch.float64)
    heads = lm.add_head(HEAD, "shortcut")
    generator = torch.Generator().manual_seed(seed)
    for name, param in heads.named_parameters():
        scale = router_scale if ".linear." in name else 0.3
        param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
    return lm, heads


def inputs(lm, seed: int = 1):
    """Embeddings [2, T, d] (left-padded rows of prompt tokens followed by THOUGHTS free vectors), their mask and
    the shortcut positions [2, T]."""
    generator = torch.Generator().manual_seed(seed)
    width = 7
    ids = torch.randint(5, 60, (2, width - THOUGHTS), generator=generator)
    embeds = torch.cat([lm.embed(ids), torch.randn(2, THOUGHTS, lm.embed.weight.shape[1], dtype=torch.float64)], 1)
    mask = torch.ones(2, width, dtype=torch.long)
    for row, pads in enumerate(PADS):
        mask[row, :pads] = 0
    where = torch.zeros(2, width, dtype=torch.bool)
    where[:, -THOUGHTS:] = True
    return embeds, mask, where


@torch.no_grad()
def reference(lm, heads, embeds, mask, where, mode: str, threshold: float = 1.0):
    """The formula, one layer and one position at a time, on the whole sequence (no cache): (normed final states
    [B, T, d], exit layer [B, T])."""
    backbone, layers = lm.backbone, lm.backbone.layers
    batch, width, _ = embeds.shape
    positions = positions_from_mask(mask)
    allowed = torch.tril(torch.ones(width, width, dtype=torch.bool))[None] & mask.bool()[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # a pad attends to itself (its state is never read)
    additive = torch.zeros(allowed.shape, dtype=embeds.dtype).masked_fill(~allowed, torch.finfo(embeds.dtype).min)
    rotary = backbone.rotary_emb(embeds, positions)
    exit_layer = torch.full((batch, width), len(layers))
    hidden = embeds
    for index, layer in enumerate(layers):
        out = layer(hidden, attention_mask=additive[:, None], position_ids=positions, position_embeddings=rotary)
        new = out.clone()
        for row in range(batch):
            for col in range(width):
                if not where[row, col]:
                    continue
                x = hidden[row, col]
                w = float(torch.sigmoid(heads.routers[index].linear(F.layer_norm(x, x.shape))))
                adapted = heads.adapters[index](x)
                if mode == "mix":
                    new[row, col] = w * adapted + (1 - w) * out[row, col]
                elif exit_layer[row, col] < len(layers):  # exited below: the state is carried up unchanged
                    new[row, col] = x
                elif w > threshold:
                    new[row, col] = adapted
                    exit_layer[row, col] = index
        hidden = new
    return backbone.norm(hidden), exit_layer


def real(tensor, mask):
    return tensor[mask.bool()]


def test_the_training_mixture_equals_the_per_position_reference():
    lm, heads = shortcut_lm()
    embeds, mask, where = inputs(lm)
    shortcut = DepthShortcut(lm, heads, "mix")
    with torch.no_grad(), shortcut.attached():
        shortcut.arm(where)
        got = lm.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask))
    want, _ = reference(lm, heads, embeds, mask, where, "mix")
    torch.testing.assert_close(real(got.last_hidden_state, mask), real(want, mask), **EXACT)
    plain = lm.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask))
    assert not torch.allclose(real(plain.last_hidden_state, mask), real(want, mask))  # the shortcut did something
    assert len(shortcut.calls) == 1 and len(shortcut.calls[0].weights) == len(heads.routers)


def test_the_early_exit_on_a_cache_equals_the_reference_and_later_layers_read_the_exit_state():
    """Prompt in one call, then one thought per call on the KV cache (as the rollout feeds them): the states and
    exit layers of the whole-sequence reference, where a skipped layer's keys and values come from the exit state."""
    lm, heads = shortcut_lm(router_scale=2.0)
    embeds, mask, where = inputs(lm)
    threshold = 0.5
    want, exits = reference(lm, heads, embeds, mask, where, "exit", threshold)
    assert len(set(exits[where].tolist())) >= 2  # positions exit at different layers (or not at all)
    shortcut = DepthShortcut(lm, heads, "exit", threshold)
    cache, prompt = new_cache(lm), embeds.shape[1] - THOUGHTS
    with torch.no_grad(), shortcut.attached():
        states = [forward_step(lm, cache, mask[:, :prompt], inputs_embeds=embeds[:, :prompt])]
        for col in range(prompt, embeds.shape[1]):
            shortcut.arm(where[:, col : col + 1])
            states.append(forward_step(lm, cache, mask[:, : col + 1], inputs_embeds=embeds[:, col : col + 1]))
    torch.testing.assert_close(real(torch.cat(states, 1), mask), real(want, mask), **EXACT)
    got_exits = torch.stack([call.exit_layer for call in shortcut.calls], 1)  # [B, THOUGHTS]
    assert torch.equal(got_exits, exits[:, -THOUGHTS:])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_early_exit_on_a_cache_equals_one_call_over_the_whole_sequence(model_type):
    """Every architecture: exiting thoughts fed one per call on the KV cache give the states of one call that
    holds them all (the keys and values a later thought reads at a skipped layer are the exit state's)."""
    lm, heads = shortcut_lm(router_scale=2.0, model_type=model_type)
    embeds, mask, where = inputs(lm)
    shortcut, prompt = DepthShortcut(lm, heads, "exit", 0.5), embeds.shape[1] - THOUGHTS
    with torch.no_grad(), shortcut.attached():
        shortcut.arm(where)
        whole = forward_step(lm, new_cache(lm), mask, inputs_embeds=embeds)
        cache = new_cache(lm)
        states = [forward_step(lm, cache, mask[:, :prompt], inputs_embeds=embeds[:, :prompt])]
        for col in range(prompt, embeds.shape[1]):
            shortcut.arm(where[:, col : col + 1])
            states.append(forward_step(lm, cache, mask[:, : col + 1], inputs_embeds=embeds[:, col : col + 1]))
    torch.testing.assert_close(real(torch.cat(states, 1), mask), real(whole, mask), **EXACT)
    one_call, per_thought = shortcut.calls[0], shortcut.calls[1:]
    assert torch.equal(one_call.exit_layer.view(2, THOUGHTS), torch.stack([c.exit_layer for c in per_thought], 1))
    exits = set(one_call.exit_layer.tolist())
    assert 0 in exits and len(exits) >= 2  # some thoughts skip layer 1 (its keys and values from the exit state)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_lambda_depth_one_never_exits_and_leaves_the_model_as_it_is(model_type):
    lm, heads = shortcut_lm(router_scale=50.0, model_type=model_type)  # routers saturate: w rounds to 1.0 here
    embeds, mask, where = inputs(lm)
    shortcut = DepthShortcut(lm, heads, "exit", 1.0)
    positions = positions_from_mask(mask)
    with torch.no_grad():
        plain = lm.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        with shortcut.attached():
            shortcut.arm(where)
            got = lm.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    assert torch.equal(real(got, mask), real(plain, mask))
    assert bool((shortcut.calls[0].exit_layer == len(heads.routers)).all())


def test_thresholds_at_one_give_exactly_the_plain_latent_rollout():
    lm, heads = shortcut_lm(router_scale=50.0)
    problems = generate_chain(5, seed=2, num_steps=2)
    plain = LatentSolver(lm, identity_map, fixed_latents(4), 4, max_new_tokens=6)
    shortcut = ShortcutSolver(lm, identity_map, heads, 4, 1.0, 1.0, max_new_tokens=6)
    prompts = plain.prompts(problems)
    want, got = plain.rollout(prompts), shortcut.rollout(prompts)
    assert torch.equal(got.latent_inputs, want.latent_inputs) and torch.equal(got.tokens, want.tokens)
    solved = shortcut.solve(problems)
    assert [s.text for s in solved] == [s.text for s in plain.solve(problems)]
    assert all(
        s.metrics == {"layers_skipped_fraction": 0.0, "depth_skipped_fraction": 0.0, "steps_skipped": 0.0}
        for s in solved
    )


def test_a_skipped_step_passes_its_thought_through_every_layer_and_the_step_adapter_makes_the_next():
    """The step router fires at the first thought only: that slot goes through every layer unchanged (its state
    is the normed thought, its keys and values the thought's), and the second thought is step_adapter(first)."""
    lm, heads = shortcut_lm()
    problems = generate_chain(3, seed=4, num_steps=2)
    solver = ShortcutSolver(lm, identity_map, heads, 3, 1.0, 0.5, max_new_tokens=6)
    prompts = solver.prompts(problems)
    bot = LatentSolver(lm, identity_map, fixed_latents(1), 1, max_new_tokens=0).rollout(prompts).latent_inputs[:, 0]
    original = heads.step_router.forward
    ones, zeros = torch.ones(len(prompts), dtype=bot.dtype), torch.zeros(len(prompts), dtype=bot.dtype)
    heads.step_router.forward = lambda z: torch.where(torch.isclose(z, bot).all(-1), ones, zeros)  # slot 0 only
    try:
        out = solver.rollout(prompts)
        metrics = solver.shortcuts.metrics(3)
        solved = solver.solve(problems)
    finally:
        heads.step_router.forward = original
    first, second, third = out.latent_inputs.unbind(1)
    torch.testing.assert_close(first, bot, **EXACT)
    torch.testing.assert_close(second, heads.step_adapter(first), **EXACT)
    # The reference: one call over prompt and the two thoughts, the first passed through every layer.
    embeds, mask, where, passed = reference_inputs(lm, prompts, [first, second])
    shortcut = DepthShortcut(lm, heads, "exit", 1.0)
    with torch.no_grad(), shortcut.attached():
        shortcut.arm(where, passed)
        states = forward_step(lm, new_cache(lm), mask, inputs_embeds=embeds)
    torch.testing.assert_close(third, states[:, -1], **EXACT)  # computed from the passed slot's keys and values
    torch.testing.assert_close(states[:, -2], lm.backbone.norm(first), **EXACT)  # passed: only the final norm
    layers = len(heads.routers)
    skipped_one = {
        "layers_skipped_fraction": layers / (3 * layers),
        "depth_skipped_fraction": 0.0,
        "steps_skipped": 1.0,
    }
    assert all(m == skipped_one for m in metrics)
    assert [s.latent_tokens for s in solved] == [3, 3, 3] and all(s.metrics == skipped_one for s in solved)


def reference_inputs(lm, prompts, thoughts):
    """Left-padded prompt embeddings followed by the thoughts, with the mask, the thought positions and the
    first thought's position (passed)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), lm.pad_id)
    mask = torch.zeros(len(prompts), width + len(thoughts), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    mask[:, width:] = 1
    embeds = torch.cat([lm.embed(ids), torch.stack(thoughts, 1)], 1)
    where = torch.zeros_like(mask, dtype=torch.bool)
    where[:, width:] = True
    passed = torch.zeros_like(where)
    passed[:, width] = True
    return embeds, mask, where, passed


def test_compute_metrics_count_depth_exits_and_skipped_steps():
    lm, heads = shortcut_lm()
    steps = ShortcutSteps(lm, heads, ShortcutSettings(0.5, 0.5), batch=2)
    # Three calls over both rows: row 0 skips the second step, row 1 the third.
    steps.steps = [
        (torch.tensor([0, 1]), torch.tensor([False, False])),
        (torch.tensor([0, 1]), torch.tensor([True, False])),
        (torch.tensor([0, 1]), torch.tensor([False, True])),
    ]
    for exit_layer in ([0, 2], [0, 1], [1, 0]):
        steps.depth.calls.append(type("Call", (), {"exit_layer": torch.tensor(exit_layer)})())
    row0, row1 = steps.metrics(3)
    # 2 layers, 3 steps: row 0 skips 2 + 1 by exits and 2 by its skipped step; row 1 skips 0 + 1 and 2.
    assert row0 == {"layers_skipped_fraction": 5 / 6, "depth_skipped_fraction": 3 / 4, "steps_skipped": 1.0}
    assert row1 == {"layers_skipped_fraction": 3 / 6, "depth_skipped_fraction": 1 / 4, "steps_skipped": 1.0}


def test_router_supervision_targets_the_positions_where_the_adapter_already_lands():
    lm, heads = shortcut_lm()
    router, adapter = heads.routers[0], heads.adapters[0]
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(2, 3, 32, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        targets = adapter(states) + 0.05 * torch.randn(2, 3, 32, generator=generator, dtype=torch.float64)
        targets[0, 1] = states[0, 1] * 3  # far from where the adapter lands
    mask = torch.tensor([[True, True, True], [True, False, True]])
    adapter_loss, router_loss, rate = shortcut_supervision(router, adapter, states, targets, mask, tolerance=0.2)
    errors, labels, logits = [], [], []
    for row, col in mask.nonzero().tolist():
        prediction = adapter(states[row, col])
        error = (prediction - targets[row, col]).norm() / targets[row, col].norm()
        errors.append(error**2)
        labels.append(float(error < 0.2))
        logits.append(router.logit(states[row, col]))
    assert labels == [1.0, 0.0, 1.0, 1.0, 1.0] and rate == pytest.approx(0.8)
    torch.testing.assert_close(adapter_loss, torch.stack(errors).mean())
    expected = F.binary_cross_entropy_with_logits(torch.stack(logits), torch.tensor(labels, dtype=torch.float64))
    torch.testing.assert_close(router_loss, expected)


def test_stage_one_matches_each_thought_pair_to_its_step_end():
    lm = build_tiny_lm("llama")
    method = System15(System15Config(num_latents=4, c_thought=2))
    method.start_step(0, 10)
    problems = [generate_chain(1, seed=1, num_steps=1)[0], generate_chain(1, seed=2, num_steps=3)[0]]
    extras = method.collate(lm, problems)["latent_batch"].extras
    # One step: thought 1; three steps, two thought pairs: thoughts 1 and 3 (the third step has no thought).
    assert list(zip(extras["pair_rows"].tolist(), extras["pair_slots"].tolist())) == [(0, 1), (1, 1), (1, 3)]
    pairs = zip(extras["pair_rows"].tolist(), extras["pair_teacher_at"].tolist())
    texts = [lm.tokenizer.decode(extras["teacher_ids"][row, : at + 1]) for row, at in pairs]
    assert texts[0].endswith(problems[0].steps[0]) and texts[1].endswith(problems[1].steps[0])
    assert texts[2].endswith(problems[1].steps[1])


@pytest.mark.parametrize("stage", [1, 2])
def test_each_stage_reduces_its_loss_on_a_fixed_batch(stage):
    torch.manual_seed(0)
    lm = build_tiny_lm("llama")
    method = System15(System15Config(num_latents=2, c_thought=1, distill_steps=5))
    method.prepare(lm)
    method.start_step(0 if stage == 1 else 5, 10)
    batch = method.collate(lm, generate_chain(8, seed=3, num_steps=2))
    lm.train()
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, metrics = method.loss(lm, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    if stage == 2:
        routers = [p.grad for p in lm.heads[HEAD].routers.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in routers)
        assert {"match", "router", "adapter", "step_router", "exit_target", "w"} <= set(metrics)


def test_trains_both_stages_saves_reloads_and_solves_batched_as_alone(tmp_path):
    config = tiny_train_config(
        System15Config,
        tmp_path / "s15",
        num_latents=3,
        c_thought=1,
        distill_steps=3,
        max_steps=6,
        learning_rate=3e-3,
        lambda_depth=0.3,
        lambda_step=0.6,
    )
    result = run_training("system15", config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "s15" / "log.jsonl").read_text().splitlines()]
    stages = [("distill" in entry, "router" in entry) for entry in log if "loss" in entry]
    assert stages == [(True, False)] * 3 + [(False, True)] * 3
    lm = LatentLM.from_pretrained(result.final_dir).eval()
    assert lm.head_specs[HEAD]["kind"] == "shortcut"
    problems = generate_chain(4, seed=5, num_steps=2)
    solver = System15(config).solver(lm)
    together = solver.solve(problems)
    alone = [solver.solve([problem])[0] for problem in problems]
    assert [s.text for s in together] == [s.text for s in alone]
    assert [s.metrics for s in together] == [s.metrics for s in alone]
    assert all(s.latent_tokens + s.metrics["steps_skipped"] == 3 for s in together)


def test_eval_takes_lambda_depth_from_decoder_args_and_reports_the_compute_saved(tmp_path, capsys):
    config = tiny_train_config(
        System15Config, tmp_path / "s15", num_latents=2, c_thought=1, distill_steps=1, max_steps=2
    )
    model = run_training("system15", config, progress=False).final_dir
    data = tmp_path / "chain.json"
    assert (
        cli.main(["data", "generate", "--task", "chain", "-n", "4", "--params", "{num_steps: 2}", "--out", str(data)])
        == 0
    )
    fractions = {}
    for value in (0.0, 1.0):
        out = tmp_path / f"eval-{value}"
        argv = ["eval", "--model", str(model), "--file", str(data), "--output-dir", str(out), "--device", "cpu"]
        assert cli.main([*argv, "--max-new-tokens", "4", "--decoder-args", f"{{lambda_depth: {value}}}"]) == 0
        payload = json.loads((out / "results.json").read_text())
        assert payload["decoder_args"] == {"lambda_depth": value}
        fractions[value] = payload["results"][0]["layers_skipped_fraction"]
    # lambda_depth 0: every fed thought exits at layer 0 (all its layers skipped); 1: only skipped steps count.
    assert fractions[0.0] == pytest.approx(1.0) and fractions[1.0] <= 0.5
    capsys.readouterr()
    assert cli.main([*argv, "--decoder-args", "{lambda_depht: 0.5}"]) == 2
    assert "did you mean 'lambda_depth'" in capsys.readouterr().err
    assert cli.main([*argv, "--decoder-args", "{lambda_step: 2}"]) == 2
    assert "--decoder-args: lambda_step: must lie in [0, 1] (1 = never), got 2.0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"lambda_depth": 1.5}, "field 'lambda_depth': must lie in [0, 1]"),
        ({"lambda_step": -0.1}, "field 'lambda_step': must lie in [0, 1]"),
        ({"exit_tolerance": 0.0}, "field 'exit_tolerance': must be > 0"),
        ({"router_weight": -1.0}, "field 'router_weight': must be >= 0"),
        ({"num_latents": 0}, "num_latents and c_thought must be >= 1"),
    ],
)
def test_bad_config_values_are_named(fields, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        System15Config(**fields)


def test_decoder_args_for_a_trained_model_whose_solver_has_no_settings_are_refused(tmp_path, capsys):
    model = run_training("cot", tiny_train_config(SFTConfig, tmp_path / "cot", max_steps=1), progress=False).final_dir
    data = tmp_path / "chain.json"
    assert cli.main(["data", "generate", "--task", "chain", "-n", "2", "--out", str(data)]) == 0
    argv = ["eval", "--model", str(model), "--file", str(data), "--output-dir", str(tmp_path / "eval")]
    capsys.readouterr()
    assert cli.main([*argv, "--decoder-args", "{lambda_depth: 0.5}"]) == 2
    err = capsys.readouterr().err
    assert f"--decoder-args: {model} is evaluated with 'cot', whose solver takes no settings" in err


def test_bad_solver_settings_are_named():
    lm, heads = shortcut_lm()
    solver = ShortcutSolver(lm, identity_map, heads, 2, 0.5, 0.5)
    with pytest.raises(ConfigError, match=r"lambda_depth: must lie in \[0, 1\]"):
        solver.set_args({"lambda_depth": 2.0})
    with pytest.raises(ConfigError, match="did you mean 'lambda_step'"):
        solver.set_args({"lambda_stepp": 0.1})
