"""Latent samplers (latentreason.tts): N diverse latent trajectories per problem from one shared prefill.

Float64 models, so a row run in a batch and the same row run alone agree to rounding (`EXACT`).
"""

from __future__ import annotations

import pytest
import torch

from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.engine.sampling import row_seeds
from latentreason.errors import ConfigError
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.methods.codi import CODI, CODIConfig
from latentreason.methods.pccot import PCCoT, PCCoTConfig
from latentreason.tts import latent_sampler_from_args
from latentreason.tts.dropout import LatentDropout
from tests.helpers import EXACT, build_tiny_lm, chain_problems

SAMPLERS = {"noise": {"sigma": 0.6}, "dropout": {"p": 0.2}}
_MODELS: dict = {}


def lm64(model_type: str = "llama"):
    if model_type not in _MODELS:
        _MODELS[model_type] = build_tiny_lm(model_type, dtype=torch.float64)
    return _MODELS[model_type]


def identity(hidden, slot):
    return hidden, None


def sampler(name: str, **overrides):
    return latent_sampler_from_args(name, {**SAMPLERS[name], **overrides})


def prompts_for(lm, n: int = 3) -> list[list[int]]:
    return LatentSolver(lm, identity, fixed_latents(3), 3).prompts(chain_problems(n, seed=5))


def answers(out) -> list[list[int]]:
    return [row[:n] for row, n in zip(out.tokens.tolist(), out.lengths.tolist())]


def solver(lm, samples: int = 1, latent_sampler=None, latents: int = 3) -> LatentSolver:
    out = LatentSolver(lm, identity, fixed_latents(latents), latents, max_new_tokens=6)
    out.configure(samples=samples, latent_sampler=latent_sampler)
    return out


# --- N = 1 and degenerate settings are greedy ------------------------------------------------------


def test_one_sample_without_a_sampler_is_the_greedy_solver_token_for_token():
    lm, problems = lm64(), chain_problems(4, seed=5)
    greedy = LatentSolver(lm, identity, fixed_latents(3), 3, max_new_tokens=6).solve(problems)
    configured = solver(lm, samples=1).solve(problems)
    assert [s.text for s in configured] == [s.text for s in greedy]
    assert all(s.samples is None for s in configured)


@pytest.mark.parametrize("name, zero", [("noise", {"sigma": 0.0}), ("dropout", {"p": 0.0})])
def test_a_sampler_at_zero_strength_gives_the_greedy_trajectory_in_every_sample(name, zero):
    lm = lm64()
    prompts = prompts_for(lm)
    greedy = latent_rollout(lm, prompts, identity, fixed_latents(3), 3, 6)
    seeds = row_seeds(0, ["a", "b", "c"], 4)
    out = latent_rollout(
        lm, prompts, identity, fixed_latents(3), 3, 6, samples=4, perturbation=sampler(name, **zero).bind(seeds)
    )
    assert answers(out) == [row for row in answers(greedy) for _ in range(4)]
    assert torch.equal(out.latent_inputs, greedy.latent_inputs.repeat_interleave(4, 0))


# --- a trajectory depends on its row seed only -----------------------------------------------------


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_row_gives_the_same_trajectory_in_a_mixed_batch_and_alone(name):
    lm, samples = lm64(), 3
    prompts = prompts_for(lm)
    ks = torch.tensor([1, 3, 2]).repeat_interleave(samples)  # rows stop thinking at different steps
    seeds = row_seeds(7, [str(i) for i in range(len(prompts))], samples)
    sampled = torch.tensor([True, False, True] * len(prompts))  # greedy rows ride along
    perturbation = sampler(name).bind(seeds, sampled)
    batched = latent_rollout(lm, prompts, identity, fixed_latents(ks), 3, 6, samples=samples, perturbation=perturbation)
    greedy = latent_rollout(lm, prompts, identity, fixed_latents(ks[::samples]), 3, 6)
    for row in range(len(prompts) * samples):
        alone_perturbation = sampler(name).bind(seeds[row : row + 1], sampled[row : row + 1])
        prompt, k = [prompts[row // samples]], int(ks[row])
        alone = latent_rollout(lm, prompt, identity, fixed_latents(k), 3, 6, perturbation=alone_perturbation)
        assert answers(batched)[row] == answers(alone)[0]
        torch.testing.assert_close(batched.latent_inputs[row, :k], alone.latent_inputs[0], **EXACT)
        if not sampled[row]:
            assert answers(batched)[row] == answers(greedy)[row // samples]
            torch.testing.assert_close(batched.latent_inputs[row], greedy.latent_inputs[row // samples], **EXACT)


@pytest.mark.parametrize("name", SAMPLERS)
def test_samples_of_one_problem_differ_and_a_seed_repeats_them(name):
    lm = lm64()
    prompts = prompts_for(lm, 1)

    def run(seed):
        seeds = row_seeds(seed, ["q"], 4)
        return latent_rollout(
            lm, prompts, identity, fixed_latents(3), 3, 6, samples=4, perturbation=sampler(name).bind(seeds)
        )

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.latent_inputs, again.latent_inputs)
    assert answers(first) == answers(again)
    # Dropout acts in the calls that feed thoughts: thought 0 comes from the shared prefill, later ones differ.
    later = first.latent_inputs[:, 1:]  # [4, 2, d]
    for a in range(4):
        for b in range(a + 1, 4):
            assert (later[a] - later[b]).abs().max() > 1e-3, (a, b)
    assert (first.latent_inputs[:, 1:] - other.latent_inputs[:, 1:]).abs().max() > 1e-3
    assert len({tuple(row) for row in answers(first)}) > 1


# --- the latent steps only ---------------------------------------------------------------------------


def test_noise_changes_the_thoughts_only_not_the_answer_phase():
    lm = lm64()
    prompts = prompts_for(lm)
    seeds = row_seeds(0, ["a", "b", "c"], 2)
    noisy = latent_rollout(
        lm, prompts, identity, fixed_latents(3), 3, 6, samples=2, perturbation=sampler("noise").bind(seeds)
    )

    def replay(hidden, slot):  # feeds the noisy thoughts as they were, with no sampler
        return noisy.latent_inputs[:, slot], None

    replayed = latent_rollout(lm, prompts, replay, fixed_latents(3), 3, 6, samples=2)
    assert answers(replayed) == answers(noisy)
    greedy = latent_rollout(lm, prompts, identity, fixed_latents(3), 3, 6, samples=2)
    assert (noisy.latent_inputs - greedy.latent_inputs).abs().max() > 0.1


def test_noise_added_relative_to_the_thoughts_rms_is_the_absolute_noise_times_it():
    z = torch.randn(3, 16, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [5.0]], dtype=torch.float64)
    rows, seeds = torch.arange(3), torch.tensor([11, 12, 13])
    absolute = sampler("noise").bind(seeds).thought(z, rows, 2) - z
    relative = sampler("noise", scale="rms").bind(seeds).thought(z, rows, 2) - z
    torch.testing.assert_close(relative, absolute * z.pow(2).mean(-1, keepdim=True).sqrt(), **EXACT)
    assert absolute.std().item() == pytest.approx(0.6, rel=0.3)


class ArmedCalls(LatentDropout):
    """Dropout that records, for every forward call of the rollout, (slot, rows dropped)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = []

    def before_forward(self, rows, latent, slot):
        super().before_forward(rows, latent, slot)
        self.calls.append((slot, [] if self.armed is None else rows[self.armed[1]].tolist()))


def test_dropout_is_armed_for_the_calls_that_feed_sampled_thoughts_only():
    lm = lm64()
    prompts = prompts_for(lm, 2)
    config = sampler("dropout").config
    spy = ArmedCalls(config, torch.arange(4), torch.tensor([True, True, False, True]))
    ks = torch.tensor([2, 2, 2, 1])
    latent_rollout(lm, prompts, identity, fixed_latents(ks), 2, 3, samples=2, perturbation=spy)
    # step 0 feeds thought 0 of every row; step 1 thought 1 of rows 0-2 (row 3 feeds <eot>); then <eot>/answers
    assert spy.calls[:3] == [(0, [0, 1, 3]), (1, [0, 1]), (2, [])]
    assert all(rows == [] for _, rows in spy.calls[2:])
    assert spy.armed is None  # disarmed on leaving the rollout


def test_dropout_without_thoughts_changes_nothing():
    lm = lm64()
    prompts = prompts_for(lm)
    greedy = latent_rollout(lm, prompts, identity, fixed_latents(0), 0, 6)
    seeds = torch.arange(len(prompts))
    dropped = latent_rollout(
        lm, prompts, identity, fixed_latents(0), 0, 6, perturbation=sampler("dropout", p=0.5).bind(seeds)
    )
    assert answers(dropped) == answers(greedy)
    assert torch.equal(dropped.token_logprobs, greedy.token_logprobs)


def test_a_dropout_mask_drops_about_p_scales_the_rest_and_depends_on_the_row_seed_and_slot():
    config = sampler("dropout", p=0.25).config
    perturbation = LatentDropout(config, torch.tensor([5, 6, 7]), torch.ones(3, dtype=torch.bool))
    hook = perturbation.hook(stream=3)
    x = torch.rand(3, 1, 4000, dtype=torch.float64) + 1.0  # no zeros of its own

    def dropped(rows, latent, slot, hidden=x):
        perturbation.before_forward(torch.tensor(rows), torch.tensor(latent), slot)
        return hook(None, (), hidden)

    out = dropped([0, 1, 2], [True, False, True], 0)
    assert torch.equal(out[1], x[1])  # a row feeding no thought is untouched
    for row in (0, 2):
        zeros = out[row] == 0
        assert zeros.double().mean().item() == pytest.approx(0.25, abs=0.03)
        torch.testing.assert_close(out[row][~zeros], x[row][~zeros] / 0.75, **EXACT)
    alone = dropped([2], [True], 0, x[2:3])  # row 2 alone at position 0 of its call
    assert torch.equal(alone[0], out[2])
    later = dropped([0, 1, 2], [True, False, True], 1)
    assert not torch.equal(later[0] == 0, out[0] == 0)  # another slot, another mask
    assert not torch.equal(out[0] == 0, out[2] == 0)  # another row seed, another mask


def test_dropout_hooks_leave_the_model_as_it_was():
    lm = build_tiny_lm("llama")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    probe = torch.tensor([prompts_for(lm, 1)[0]])
    with torch.no_grad():
        logits = lm.model(input_ids=probe).logits
    perturbation = sampler("dropout", p=0.5).bind(torch.arange(2))
    latent_rollout(lm, prompts_for(lm, 2), identity, fixed_latents(2), 2, 4, perturbation=perturbation)
    with pytest.raises(RuntimeError, match="inside"), perturbation.attached(lm):
        raise RuntimeError("an error inside the block")
    after = lm.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())
    assert not lm.model.training
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=probe).logits, logits)


@pytest.mark.parametrize("model_type", ["gpt2", "qwen2"])
def test_dropout_finds_the_sublayers_of_other_architectures(model_type):
    lm = build_tiny_lm(model_type)
    prompts = prompts_for(lm, 1)
    greedy = latent_rollout(lm, prompts, identity, fixed_latents(3), 3, 4)
    for sublayers in (["attention"], ["mlp"]):
        perturbation = sampler("dropout", p=0.5, sublayers=sublayers).bind(torch.arange(1))
        out = latent_rollout(lm, prompts, identity, fixed_latents(3), 3, 4, perturbation=perturbation)
        assert (out.latent_inputs[:, 1:] - greedy.latent_inputs[:, 1:]).abs().max() > 1e-3, sublayers


# --- the solvers -------------------------------------------------------------------------------------


def test_the_solver_returns_every_sample_and_a_problems_samples_do_not_depend_on_its_batch():
    lm, problems = lm64(), chain_problems(3, seed=5)
    noise = sampler("noise", sigma=2.0)
    together = solver(lm, samples=4, latent_sampler=noise).solve(problems)
    assert all(len(s.samples) == 4 and s.text == s.samples[0].text for s in together)
    assert all(s.latent_tokens == 3 for problem in together for s in problem.samples)
    alone = solver(lm, samples=4, latent_sampler=noise).solve(problems[1:2])[0]
    assert [s.text for s in alone.samples] == [s.text for s in together[1].samples]
    assert len({s.text for problem in together for s in problem.samples}) > 3


def test_pccots_jacobi_noise_is_the_sequential_noise():
    # T = num_latents Jacobi iterations give CODI's sequential thoughts; with noise keyed by the slot too.
    lm = build_tiny_lm("llama", dtype=torch.float64)
    settings = dict(num_latents=3, use_projector=True, max_new_tokens=6)
    codi, pccot = CODI(CODIConfig(**settings)), PCCoT(PCCoTConfig(jacobi_iterations=3, **settings))
    codi.prepare(lm)
    pccot.prepare(lm)
    lm.eval()
    problems, noise = chain_problems(2, seed=3), sampler("noise", sigma=1.4)
    sequential, jacobi = codi.solver(lm), pccot.solver(lm)
    for each in (sequential, jacobi):
        each.configure(samples=3, latent_sampler=noise)
    prompts, seeds = sequential.prompts(problems), sequential.row_seeds(problems)
    expected, out = sequential.rollout(prompts, seeds), jacobi.rollout(prompts, seeds)
    torch.testing.assert_close(out.latent_inputs, expected.latent_inputs, **EXACT)
    assert answers(out) == answers(expected)

    # The 3 samples of a problem share one prefill (the first call runs over 2 rows, not 6) and equal the
    # samples of prompts repeated and prefilled one by one.
    batch_sizes = []
    hook = lm.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: batch_sizes.append(len(kwargs.get("attention_mask"))), with_kwargs=True
    )
    with hook:
        shared = jacobi.rollout(prompts, seeds)
    assert batch_sizes[0] == len(prompts) and batch_sizes[1] == len(seeds)
    jacobi.configure(samples=1, latent_sampler=noise)
    apart = jacobi.rollout([prompt for prompt in prompts for _ in range(3)], seeds)
    torch.testing.assert_close(shared.latent_inputs, apart.latent_inputs, **EXACT)
    assert answers(shared) == answers(apart) == answers(expected)
    with pytest.raises(ConfigError, match="latent sampler 'dropout': not available for pccot"):
        jacobi.configure(samples=2, latent_sampler=sampler("dropout"))


# --- settings ----------------------------------------------------------------------------------------


def test_method_defaults_are_latenttts_values_and_a_method_without_one_needs_sigma():
    assert latent_sampler_from_args("noise").for_method("coconut").config.sigma == 0.6
    assert latent_sampler_from_args("noise").for_method("codi").config.sigma == 1.4
    assert latent_sampler_from_args("noise", {"sigma": 0.1}).for_method("codi").config.sigma == 0.1
    assert latent_sampler_from_args("dropout").for_method("coconut").config.p == 0.2
    with pytest.raises(ConfigError, match="sigma: no default for colar"):
        latent_sampler_from_args("noise").for_method("colar")


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("noise", {"sigma": -0.1}, "--latent-sampler-args for noise: sigma: expected >= 0, got -0.1"),
        ("noise", {"scale": "relative"}, "scale: expected one of absolute, rms"),
        ("noise", {"sigma": "wide"}, "--latent-sampler-args for noise, field 'sigma': expected float"),
        ("dropout", {"p": 1.0}, "--latent-sampler-args for dropout: p: expected a probability in [0, 1), got 1.0"),
        ("dropout", {"p": -0.2}, "p: expected a probability in [0, 1)"),
        ("dropout", {"sublayers": ["mlp", "norm"]}, "sublayers: expected a non-empty list of distinct names"),
        ("dropout", {"sublayers": []}, "sublayers: expected a non-empty list"),
        ("dropout", {"sigma": 0.6}, "unknown field 'sigma' for DropoutConfig"),
        ("gumbel", {}, "unknown latent sampler 'gumbel'; available: dropout, noise"),
    ],
)
def test_bad_sampler_settings_are_config_errors_naming_the_field(name, args, message):
    with pytest.raises(ConfigError) as err:
        latent_sampler_from_args(name, args)
    assert message in str(err.value)
