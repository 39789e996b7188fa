"""Continuous batching on the step engine: rows join a running batch at step boundaries and leave it when
they finish, each with its own sampling settings, step limit and policy state.

The batch has `capacity` slots. Its policy is built once for all of them (engine.slots); joining rows take free
slots, their prompts are prefilled in one call (N samples of a prompt share its prefill: cache rows repeated),
their policy state comes from a fresh policy built for them alone, and their cache rows are merged into the
running cache (engine.join). A slot is free again the moment its row leaves. Between `choose` and `feed` the
caller reads the step (tokens, kinds) and may end rows (a stop string, a client gone, a deadline).
"""

from __future__ import annotations

import torch

from latentreason.engine.slots import adopt_rows
from latentreason.engine.steps import Prefix, StepLoop, StepRecord, prefill


class ContinuousBatch:
    def __init__(self, lm, policy, capacity: int):
        self.lm, self.policy, self.capacity = lm, policy, capacity
        self.free = list(range(capacity))  # slots no row holds
        self.loop: StepLoop | None = None
        device = lm.device
        self.steps = torch.zeros(capacity, dtype=torch.long, device=device)  # [S] steps each slot's row took
        self.limits = torch.zeros(capacity, dtype=torch.long, device=device)  # [S] steps each row may take
        if hasattr(policy, "started_together"):
            policy.started_together = False  # rows join at different steps

    @property
    def running(self) -> int:
        return self.capacity - len(self.free)

    @torch.no_grad()
    def admit(self, prompts: list[list[int]], samples: list[int], limits: list[int], fresh: list) -> torch.Tensor:
        """Join `samples[i]` rows for each prompt i (in a row), with at most `limits[i]` steps each; `fresh[i]` is
        the policy built for prompt i's rows alone. Returns the slots of every row [n], in that order."""
        rows = sum(samples)
        if rows > len(self.free):
            raise ValueError(f"{rows} rows do not fit in the {len(self.free)} free slots")
        prefix = prefill(self.lm, prompts)
        if any(n != 1 for n in samples):  # each prompt's samples share its prefill
            source = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(samples)).to(self.lm.device)
            prefix.cache.batch_select_indices(source)
            prefix = Prefix(prefix.cache, prefix.attention_mask[source], prefix.hidden[source])
        slots = torch.tensor(self.free[:rows], dtype=torch.long, device=self.lm.device)
        del self.free[:rows]
        for policy, own in zip(fresh, slots.split(samples)):
            adopt_rows(self.policy, policy, own)
        self.steps[slots] = 0
        self.limits[slots] = torch.tensor(limits, device=self.lm.device).repeat_interleave(
            torch.tensor(samples, device=self.lm.device)
        )
        prefix.rows = slots
        if self.loop is None:
            self.loop = StepLoop(self.lm, prefix, self.policy, self.capacity, getattr(self.policy, "before_feed", None))
        else:
            self.loop.admit(prefix)
        return slots

    @torch.no_grad()
    def choose(self) -> StepRecord:
        """The next step of every running row (nothing is fed yet)."""
        record = self.loop.choose()
        self.steps[record.rows] += 1
        return record

    @torch.no_grad()
    def feed(self, record: StepRecord, end: torch.Tensor | None = None) -> torch.Tensor:
        """Feed the rows that go on; [b] bool of the record's rows that left (finished, at their step limit,
        or ended by `end` [b]). Their slots are free again."""
        done = self.steps[record.rows] >= self.limits[record.rows]
        if record.finished is not None:
            done |= record.finished
        if end is not None:
            done |= end
        self.loop.feed(record, done)
        self.free += record.rows[done].tolist()
        return done

    def drop(self, slots: list[int]) -> None:
        """End the rows in `slots` between steps (a client gone, a deadline passed)."""
        gone = torch.tensor(slots, dtype=torch.long, device=self.lm.device)
        self.loop.remove(torch.isin(self.loop.rows, gone))
        self.free += slots
