"""A sampler that replays a trajectory's first thoughts, then samples afresh: Monte-Carlo continuations.

Every draw of a latent sampler is keyed by (row seed, thought slot), and a row's trajectory does not depend
on its batch, so a row whose slots below `prefix_len` are drawn with the original trajectory's seed feeds
exactly that trajectory's first `prefix_len` thoughts; from there a fresh seed makes it a new continuation.
(With dropout the draw at slot t acts in the call that feeds thought t, so the replayed cache also fixes
thought t: a continuation's thoughts differ from t + 1 on, its answer from the first fresh call on.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from latentreason.engine.perturbation import LatentPerturbation
from latentreason.tts.samplers import LatentSampler


class PrefixReplay(LatentPerturbation):
    """Row r draws with `prefix_seeds[r]` at slots < `prefix_len[r]` and with `fresh_seeds[r]` after."""

    def __init__(
        self, sampler: LatentSampler, prefix_seeds: torch.Tensor, fresh_seeds: torch.Tensor, prefix_len: torch.Tensor
    ):
        if not prefix_seeds.shape == fresh_seeds.shape == prefix_len.shape:
            raise ValueError(
                f"PrefixReplay: prefix seeds {list(prefix_seeds.shape)}, fresh seeds {list(fresh_seeds.shape)} and "
                f"prefix lengths {list(prefix_len.shape)}; expected one of each per row"
            )
        self.replay, self.fresh = sampler.bind(prefix_seeds), sampler.bind(fresh_seeds)
        self.prefix_len = prefix_len

    def in_prefix(self, rows: torch.Tensor, slot: int) -> torch.Tensor:
        return slot < self.prefix_len.to(rows.device)[rows]  # [n] bool

    def thought(self, z: torch.Tensor, rows: torch.Tensor, slot: int) -> torch.Tensor:
        replayed = self.in_prefix(rows, slot)[:, None]
        return torch.where(replayed, self.replay.thought(z, rows, slot), self.fresh.thought(z, rows, slot))

    def before_forward(self, rows: torch.Tensor, latent: torch.Tensor, slot: int) -> None:
        replayed = self.in_prefix(rows, slot)
        self.replay.before_forward(rows, latent & replayed, slot)
        self.fresh.before_forward(rows, latent & ~replayed, slot)

    @contextmanager
    def attached(self, lm) -> Iterator[None]:
        # Each part's hooks touch only its own rows, so the two compose on one module.
        with ExitStack() as stack:
            stack.enter_context(self.replay.attached(lm))
            stack.enter_context(self.fresh.attached(lm))
            yield
