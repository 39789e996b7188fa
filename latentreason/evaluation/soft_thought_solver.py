"""The solver of a soft-thought model (SoftCoT, SoftCoT++): the assistant's thoughts fill the main model's
prompt slots in its prefill, then the main model decodes its reply.

SoftCoT++'s K thinking paths are K samples of each problem (row i x K x M + k x M + m, m < M the samples
asked for per path), so the harness reports their mean accuracy, pass@k and majority vote as for any samples.
"""

from __future__ import annotations

import torch

from latentreason.data.problems import Problem
from latentreason.engine.batch import IGNORE, left_pad
from latentreason.engine.decode import decode_from
from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import Prefix
from latentreason.evaluation.soft_prompts import SoftThoughtPrompts
from latentreason.evaluation.solvers import SampledSolver, Solution, by_problem


def prompt_batch(lm, prompts: SoftThoughtPrompts, questions: list[str], suffixes: list[list[int]] | None = None):
    """Left-padded main-model rows (prompt + suffix, e.g. the reply in training), each row's first slot
    column `slot_at` [R], and the assistant's left-padded prompts. labels: IGNORE on the prompts."""
    mains = [prompts.main_ids(q) for q in questions]
    suffixes = suffixes or [[] for _ in questions]
    rows = [ids + suffix for (ids, _), suffix in zip(mains, suffixes)]
    labels = [[IGNORE] * len(ids) + suffix for (ids, _), suffix in zip(mains, suffixes)]
    batch = left_pad(rows, lm.pad_id, labels)
    width = batch["input_ids"].shape[1]
    batch["slot_at"] = torch.tensor([width - len(row) + start for row, (_, start) in zip(rows, mains)])
    assistant = left_pad([prompts.assistant_ids(q) for q in questions], lm.assistant_pad_id)
    batch.update(assistant_ids=assistant["input_ids"], assistant_mask=assistant["attention_mask"])
    return batch


class SoftThoughtSolver(SampledSolver):
    """`paths` thought sets per problem (1 for SoftCoT), each decoded greedily unless `sampling` says otherwise."""

    def __init__(self, lm, prompts: SoftThoughtPrompts, paths: int, max_new_tokens: int, name: str):
        self.lm, self.prompts, self.paths = lm, prompts, paths
        self.max_new_tokens, self.name = max_new_tokens, name
        self.configure()

    def configure(self, sampling: Sampling | None = None, seed: int = 0, samples: int = 1) -> None:
        """`samples` replies per thinking path (rows per problem: paths x samples)."""
        super().configure(sampling, seed, samples)
        self.per_path, self.samples = samples, samples * self.paths

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        lm, device = self.lm, self.lm.device
        batch = {k: v.to(device) for k, v in prompt_batch(lm, self.prompts, [p.question for p in problems]).items()}
        n = self.prompts.num_thoughts
        thoughts = lm.thoughts(batch["assistant_ids"], batch["assistant_mask"], n, self.paths)  # [R*K, N, d]
        thoughts = thoughts.repeat_interleave(self.per_path, 0)  # [R*K*M, N, d]
        embeds = lm.with_thoughts(batch["input_ids"], batch["slot_at"], thoughts)  # [R*K*M, L, d]
        mask = batch["attention_mask"].repeat_interleave(self.samples, 0)  # [R*K*M, L]
        cache = new_cache(lm)
        hidden = forward_step(lm, cache, mask, inputs_embeds=embeds)[:, -1]  # [R*K*M, d]
        out = decode_from(
            lm,
            Prefix(cache, mask, hidden),
            self.max_new_tokens,
            self.prompts.stop_ids,
            sampling=self.sampling,
            seeds=self.row_seeds(problems),
        )
        solutions = []
        for row, length in enumerate(out.lengths.tolist()):
            tokens = out.tokens[row, :length].tolist()
            ends = bool(tokens) and tokens[-1] in self.prompts.stop_ids
            text = lm.tokenizer.decode(tokens[:-1] if ends else tokens, skip_special_tokens=True).strip()
            solutions.append(Solution(text, length - int(ends), n))
        return by_problem(solutions, self.samples)
