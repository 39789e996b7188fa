"""LatentRM's training labels (LatentTTS): per-step Monte-Carlo success estimates of sampled trajectories.

For each question: K trajectories drawn with a latent sampler from one shared prefill; each is judged by
its answer. A question whose K trajectories are all right or all wrong teaches no ranking and is dropped.
For every other, each prefix (a trajectory's first t thoughts, t = 1 .. its length) is continued M times
(LatentTTS: 32): the continuation replays the prefix's thoughts (`PrefixReplay`) and samples the rest, and
the share of right answers is the prefix's value. All continuations of one question run as one batch from
one prefill of its prompt; the replayed thoughts are recomputed in that batch, not read from a cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from latentreason.config import field
from latentreason.data.answers import is_correct
from latentreason.data.problems import Problem
from latentreason.engine.sampling import row_seeds
from latentreason.errors import ConfigError
from latentreason.evaluation.harness import answer_mode_for
from latentreason.evaluation.latent_solver import JacobiSolver
from latentreason.tts.prefix_replay import PrefixReplay
from latentreason.tts.samplers import LatentSampler

Judge = Callable[[Problem, str], bool]  # (problem, generated text) -> is the answer right


def answer_judge(answer_mode: str = "strict") -> Judge:
    """Judges an answer as `latentreason eval` does with this --answer-mode."""

    def judge(problem: Problem, text: str) -> bool:
        return is_correct(text, problem.answer, mode=answer_mode_for(problem.answer, answer_mode))

    return judge


@dataclass
class RMLabelConfig:
    trajectories: int = field(8, help="trajectories sampled per question (LatentTTS: 8)")
    continuations: int = field(2, help="Monte-Carlo continuations per prefix (LatentTTS: 32; small for CPU)")
    seed: int = field(0, help="keys every draw, with the question, trajectory and prefix")

    def __post_init__(self):
        if self.trajectories < 2:
            raise ConfigError(f"trajectories: expected >= 2 (the loss ranks trajectories), got {self.trajectories}")
        if self.continuations < 1:
            raise ConfigError(f"continuations: expected >= 1, got {self.continuations}")


@dataclass
class QuestionLabels:
    """One kept question: its K trajectories and the value of each of their prefixes."""

    prompt: list[int]  # question + <bot>
    latents: torch.Tensor  # [K, N, d] thoughts fed (zeros beyond a trajectory's length)
    num_latents: torch.Tensor  # [K]
    values: torch.Tensor  # [K, N] entry t: success share of continuations of the first t + 1 thoughts
    correct: list[bool]  # each trajectory's own answer

    @property
    def mask(self) -> torch.Tensor:
        """[K, N] bool: the step exists."""
        return torch.arange(self.values.shape[1])[None] < self.num_latents[:, None]


def label_questions(
    solver,
    problems: list[Problem],
    sampler: LatentSampler,
    config: RMLabelConfig,
    judge: Judge | None = None,
    batch_size: int = 64,
    with_values: bool = True,
    progress: str | None = None,
) -> tuple[list[QuestionLabels], int]:
    """(labels of the kept questions, number dropped). `solver`: a LatentSolver whose thoughts are fed one by
    one (its model, thought map, controller, limits and answer sampling; not a JacobiSolver). Trajectories are
    sampled for `batch_size` questions at a time. `with_values` False leaves the values at zero (recall@1 on
    held-out questions needs only each trajectory's verdict). `progress`: a bar with this title (None: silent)."""
    if isinstance(solver, JacobiSolver):
        raise ConfigError(f"{solver.name}: LatentRM labels need thoughts fed one by one, not Jacobi iterations")
    if batch_size < 1:
        raise ValueError(f"label_questions: batch_size must be at least 1, got {batch_size}")
    k, judge = config.trajectories, judge or answer_judge()
    kept, dropped = [], 0
    bar = tqdm(total=len(problems), desc=progress, disable=progress is None, leave=False)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = solver.prompts(chunk)
        seeds = row_seeds(config.seed, [p.question for p in chunk], k)  # [Q x K]
        out = solver.rollout(prompts, seeds, k, sampler.bind(seeds))
        texts = solver.lm.tokenizer.batch_decode(out.tokens.cpu(), skip_special_tokens=True)
        for q, problem in enumerate(chunk):
            rows = slice(q * k, (q + 1) * k)
            correct = [judge(problem, text) for text in texts[rows]]
            if all(correct) or not any(correct):
                dropped += 1
                continue
            latents, counts = out.latent_inputs[rows].cpu(), out.num_latents[rows].cpu()
            values = torch.zeros(k, int(counts.max()))
            if with_values:
                values = _prefix_values(solver, problem, prompts[q], seeds[rows], counts, sampler, config, judge)
            # The batch's widest trajectory may be another question's: keep this question's own width.
            kept.append(QuestionLabels(prompts[q], latents[:, : values.shape[1]], counts, values, correct))
        bar.update(len(chunk))
    bar.close()
    return kept, dropped


def _prefix_values(solver, problem, prompt, seeds, counts, sampler, config, judge) -> torch.Tensor:
    """[K, N] success shares of every prefix of the K trajectories with these seeds [K] and lengths [K]."""
    m, width = config.continuations, int(counts.max())
    if width == 0:  # no trajectory thought at all: no prefix to rate
        return torch.zeros(len(counts), 0)
    # One row per (trajectory i, prefix length t, continuation c), in that order.
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts * m)  # [R]
    prefix_len = torch.cat([torch.arange(1, int(n) + 1).repeat_interleave(m) for n in counts])  # [R]
    keys = [f"{problem.question}\x00{i}\x00{t}" for i, t in zip(owner.tolist(), prefix_len.tolist())]
    fresh = row_seeds(config.seed, keys[::m], m) if keys else torch.zeros(0, dtype=torch.long)
    replay = PrefixReplay(sampler, seeds[owner], fresh, prefix_len)
    out = solver.rollout([prompt], fresh, len(keys), replay)
    texts = solver.lm.tokenizer.batch_decode(out.tokens.cpu(), skip_special_tokens=True)
    right = torch.tensor([float(judge(problem, text)) for text in texts])  # [R]
    values = torch.zeros(len(counts), width)
    values.index_put_((owner, prefix_len - 1), right / m, accumulate=True)
    return values
