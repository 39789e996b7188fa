"""LatentRM (latentreason.tts.reward_model, rm_labels, rm_objective): its loss and recall@1 by hand, the
labels of sampled trajectories, prefix replay, and scores that survive batching and a save/load round trip."""

from __future__ import annotations

import pytest
import torch

from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.engine.sampling import row_seeds
from latentreason.errors import ConfigError, UserError
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.model.latent_lm import LatentLM
from latentreason.tts import latent_sampler_from_args
from latentreason.tts.beam import rm_beam_search
from latentreason.tts.prefix_replay import PrefixReplay
from latentreason.tts.reward_model import LatentRM
from latentreason.tts.rm_labels import RMLabelConfig, label_questions
from latentreason.tts.rm_objective import chance_recall_at_1, recall_at_1, step_softmax_loss
from tests.helpers import EXACT, build_tiny_lm, chain_problems

LATENTS = 3
_LM: list = []


def lm64() -> LatentLM:
    if not _LM:
        _LM.append(build_tiny_lm(dtype=torch.float64))
    return _LM[0]


def identity(hidden, slot):
    return hidden, None


def solver(lm) -> LatentSolver:
    return LatentSolver(lm, identity, fixed_latents(LATENTS), LATENTS, max_new_tokens=6)


def noise():
    return latent_sampler_from_args("noise", {"sigma": 0.6, "scale": "rms"})


# --- the loss and recall@1 by hand -----------------------------------------------------------------


def test_the_loss_is_the_mean_over_steps_of_the_soft_cross_entropy_across_trajectories():
    scores = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    values = torch.tensor([[0.5, 1.0], [0.5, 0.0]])
    # step 0: targets (1/2, 1/2), logits (2, 0); step 1: targets (1, 0), logits (0, 1)
    expected = (1.1269280110429722 + 1.3132616875182228) / 2
    loss = step_softmax_loss(scores, values, torch.ones(2, 2, dtype=torch.bool))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_the_loss_leaves_out_ended_trajectories_and_steps_without_success():
    scores = torch.tensor([[0.0, 1.0, 4.0], [0.0, 1.0, -3.0], [5.0, 9.0, 0.0]], requires_grad=True)
    values = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [3.0, 7.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, True], [True, False, False]])
    # step 0: targets (1/4, 0, 3/4) over logits (0, 0, 5); step 1: the third has ended, targets (1/2, 1/2) over
    # (1, 1); step 2: no success anywhere, no target
    expected = (1.263385901721449 + 0.6931471805599453) / 2
    loss = step_softmax_loss(scores, values, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert scores.grad[2, 1] == 0 and scores.grad[:, 2].abs().sum() == 0


def test_the_loss_without_any_target_is_zero_and_a_shape_mismatch_is_named():
    scores = torch.zeros(2, 2, requires_grad=True)
    assert step_softmax_loss(scores, torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool)).item() == 0
    with pytest.raises(ValueError, match="expected three"):
        step_softmax_loss(scores, torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))


def test_recall_at_1_counts_questions_whose_top_trajectory_is_right():
    scores = [[0.1, 0.9, 0.5], [0.7, 0.7, 0.2], [0.3, 0.2]]
    correct = [[False, True, False], [False, True, True], [False, True]]
    # question 1: a tie goes to the first trajectory, which is wrong
    assert recall_at_1(scores, correct) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="3 scores for 2"):
        recall_at_1([[0.1, 0.2, 0.3]], [[True, False]])
    # a random pick is right 1/3, 2/3 and 1/2 of the time
    assert chance_recall_at_1(correct) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    with pytest.raises(ValueError, match="at least one question"):
        chance_recall_at_1([])


# --- prefix replay and labels ----------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [noise(), latent_sampler_from_args("dropout", {"p": 0.2})])
def test_a_continuation_replays_its_prefix_and_then_differs(sampler):
    lm = lm64()
    prompts = solver(lm).prompts(chain_problems(1, seed=5))
    seeds = row_seeds(0, ["q"], 2)
    run = solver(lm)
    original = latent_rollout(
        lm, prompts, identity, run.controller, LATENTS, 6, samples=2, perturbation=sampler.bind(seeds)
    )
    # rows: trajectory 0 replayed for 1 and 3 thoughts, trajectory 1 for 2
    owner, prefix_len = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2])
    fresh = torch.tensor([101, 102, 103])
    replay = PrefixReplay(sampler, seeds[owner], fresh, prefix_len)
    out = latent_rollout(lm, prompts, identity, run.controller, LATENTS, 6, samples=3, perturbation=replay)
    for row, (i, t) in enumerate(zip(owner.tolist(), prefix_len.tolist())):
        torch.testing.assert_close(out.latent_inputs[row, :t], original.latent_inputs[i, :t], **EXACT)
        if t < LATENTS - 1:  # dropout's fresh draw in the call feeding thought t shows from thought t + 1 on
            assert not torch.allclose(out.latent_inputs[row, t:], original.latent_inputs[i, t:])


def test_labels_keep_mixed_questions_and_value_full_prefixes_by_the_trajectory_itself():
    lm, problems = lm64(), chain_problems(6, seed=5)
    run = solver(lm)

    def judge(problem, text):  # a fixed, arbitrary verdict per generated text
        return sum(map(ord, text)) % 2 == 0

    config = RMLabelConfig(trajectories=4, continuations=3)
    kept, dropped = label_questions(run, problems, noise(), config, judge)
    assert len(kept) + dropped == len(problems) and kept
    for labels in kept:
        assert 0 < sum(labels.correct) < 4
        assert labels.latents.shape[:2] == labels.values.shape == (4, LATENTS)
        assert torch.equal(labels.num_latents, torch.full((4,), LATENTS))
        # greedy answers: every continuation of a whole trajectory gives its own answer
        assert labels.values[:, -1].tolist() == [float(c) for c in labels.correct]
        assert torch.equal(labels.values * 3, (labels.values * 3).round())  # shares of 3 continuations


def test_labels_do_not_depend_on_the_batch_their_questions_ran_in():
    run, problems, config = solver(lm64()), chain_problems(4, seed=5), RMLabelConfig(trajectories=3, continuations=2)

    def judge(problem, text):
        return sum(map(ord, text)) % 3 == 0

    together, _ = label_questions(run, problems, noise(), config, judge, batch_size=4)
    one_by_one, _ = label_questions(run, problems, noise(), config, judge, batch_size=1)
    assert together and [q.correct for q in together] == [q.correct for q in one_by_one]
    for a, b in zip(together, one_by_one):
        torch.testing.assert_close(a.values, b.values)
        torch.testing.assert_close(a.latents, b.latents, **EXACT)
    verdicts, _ = label_questions(run, problems, noise(), config, judge, with_values=False)
    assert [q.correct for q in verdicts] == [q.correct for q in together]
    assert all(q.values.abs().sum() == 0 for q in verdicts)


def test_questions_all_right_or_all_wrong_are_dropped():
    run, problems, config = solver(lm64()), chain_problems(3, seed=5), RMLabelConfig(trajectories=2, continuations=1)
    for verdict in (True, False):
        kept, dropped = label_questions(run, problems, noise(), config, lambda p, t, v=verdict: v)
        assert (kept, dropped) == ([], 3)


def test_label_settings_are_checked():
    with pytest.raises(ConfigError, match="trajectories"):
        RMLabelConfig(trajectories=1)
    with pytest.raises(ConfigError, match="continuations"):
        RMLabelConfig(continuations=0)


# --- the reward model ------------------------------------------------------------------------------


def scored_batch(lm):
    prompts = solver(lm).prompts(chain_problems(3, seed=7))
    width, generator = lm.embed.weight.shape[1], torch.Generator().manual_seed(0)
    latents = torch.randn(3, LATENTS, width, dtype=torch.float64, generator=generator)
    return prompts, latents, torch.tensor([3, 1, 2])


def test_a_step_score_depends_on_the_prefix_only_and_not_on_the_batch():
    rm = LatentRM(build_tiny_lm(dtype=torch.float64))
    prompts, latents, counts = scored_batch(rm.lm)
    with torch.no_grad():
        batched = rm.step_scores(prompts, latents, counts)
        assert batched[1, 1:].abs().sum() == 0 and batched[2, 2] == 0
        for b in range(3):
            alone = rm.step_scores(prompts[b : b + 1], latents[b : b + 1], counts[b : b + 1])
            torch.testing.assert_close(alone, batched[b : b + 1], **EXACT)
        changed = latents.clone()
        changed[0, 2] += 1.0  # a later thought does not change earlier steps' scores
        torch.testing.assert_close(rm.step_scores(prompts, changed, counts)[0, :2], batched[0, :2], **EXACT)
        final = rm.final_scores(prompts, latents, counts)
    assert final.tolist() == [batched[0, 2].item(), batched[1, 0].item(), batched[2, 1].item()]


def test_a_saved_reward_model_loads_with_identical_scores(tmp_path):
    rm = LatentRM(build_tiny_lm(dtype=torch.float64))
    with torch.no_grad():
        for param in rm.head.parameters():
            param.add_(0.1)  # not the fresh initialisation a reload could rebuild by chance
    prompts, latents, counts = scored_batch(rm.lm)
    rm.save_pretrained(tmp_path / "rm")
    loaded = LatentRM.from_pretrained(tmp_path / "rm", dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded.step_scores(prompts, latents, counts), rm.step_scores(prompts, latents, counts))


def test_a_model_without_the_score_head_is_not_a_reward_model(tmp_path):
    build_tiny_lm().save_pretrained(tmp_path / "plain")
    with pytest.raises(UserError, match="not a latent reward model"):
        LatentRM.from_pretrained(tmp_path / "plain")


def test_a_solver_with_a_reward_model_scores_each_sample_by_its_final_step():
    lm, problems = lm64(), chain_problems(2, seed=5)
    rm = LatentRM(build_tiny_lm(dtype=torch.float64))
    run = solver(lm)
    run.configure(samples=3, latent_sampler=noise())
    run.reward_model = rm
    solutions = run.solve(problems)
    out = run.rollout(run.prompts(problems), run.row_seeds(problems))
    rows = [prompt for prompt in run.prompts(problems) for _ in range(3)]
    with torch.no_grad():
        expected = rm.final_scores(rows, out.latent_inputs, out.num_latents).view(2, 3)
    got = torch.tensor([[s.score for s in solution.samples] for solution in solutions], dtype=expected.dtype)
    torch.testing.assert_close(got, expected, **EXACT)
    assert len(set(got.flatten().tolist())) == 6


# --- beam search -----------------------------------------------------------------------------------


def greedy_by_rm(lm, rm, prompt, sampler, seeds, steps):
    """Without a cache: at each step, each of the seeds' candidates adds one thought to the chosen prefix, read
    by a full forward of prompt + prefix; the RM's top candidate is kept. -> the chosen thoughts [steps, d]."""
    chosen = torch.zeros(0, lm.embed.weight.shape[1], dtype=torch.float64)
    perturbation = sampler.bind(seeds)
    rows = torch.arange(len(seeds))
    for slot in range(steps):
        embeds = torch.cat([lm.embed(torch.tensor(prompt)), chosen])[None]
        hidden = lm.backbone(inputs_embeds=embeds).last_hidden_state[0, -1]
        z = perturbation.thought(hidden.expand(len(seeds), -1).clone(), rows, slot)  # identity thought map
        candidates = torch.cat([chosen.expand(len(seeds), -1, -1), z[:, None]], 1)
        counts = torch.full((len(seeds),), slot + 1)
        scores = rm.final_scores([prompt] * len(seeds), candidates, counts).tolist()
        chosen = candidates[max(range(len(scores)), key=lambda i: (scores[i], -i))]
    return chosen


def test_a_beam_of_width_1_is_greedy_by_the_reward_model():
    lm, problems = lm64(), chain_problems(2, seed=5)
    rm = LatentRM(build_tiny_lm(dtype=torch.float64, seed=3))
    run, sampler = solver(lm), noise()
    with torch.no_grad():
        solutions = rm_beam_search(run, rm, problems, sampler, width=1, expansions=4, seed=1)
        seeds = row_seeds(1, [p.question for p in problems], 4).view(2, 4)
        for q, prompt in enumerate(run.prompts(problems)):
            chosen = greedy_by_rm(lm, rm, prompt, sampler, seeds[q], LATENTS)

            def replay(hidden, slot, chosen=chosen):
                return chosen[slot].expand(hidden.shape[0], -1), None

            expected = latent_rollout(lm, [prompt], replay, fixed_latents(LATENTS), LATENTS, 6)
            text = lm.tokenizer.decode(expected.tokens[0], skip_special_tokens=True)
            assert solutions[q].text == text
            final = rm.final_scores([prompt], chosen[None], torch.tensor([LATENTS]))
            assert solutions[q].score == pytest.approx(final.item(), rel=1e-9)


@pytest.mark.parametrize("name, zero", [("noise", {"sigma": 0.0}), ("dropout", {"p": 0.0})])
def test_a_beam_over_identical_candidates_is_the_greedy_solver(name, zero):
    lm, problems = lm64(), chain_problems(3, seed=5)
    rm = LatentRM(build_tiny_lm(dtype=torch.float64, seed=3))
    with torch.no_grad():
        beam = rm_beam_search(solver(lm), rm, problems, latent_sampler_from_args(name, zero), width=2, expansions=3)
    assert [s.text for s in beam] == [s.text for s in solver(lm).solve(problems)]
    assert all(not module._forward_hooks for module in lm.modules())  # the sampler's hooks are gone
