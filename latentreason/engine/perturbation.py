"""What a latent sampler may do to one batch's rollout, per row: change each thought before it is fed, and
act inside the model's forward calls that feed thoughts (hooks attached for the rollout only).

The base class changes nothing; `latentreason.tts` holds the samplers built on it. `rows` are always the
rows' original indices in the batch (i x samples + s), so a row's draws can be keyed by its own seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class LatentPerturbation:
    """The identity; subclasses override what they use."""

    def thought(self, z: torch.Tensor, rows: torch.Tensor, slot: int) -> torch.Tensor:
        """The input fed as thought `slot` of the rows [n] in place of the thought map's z [n, d]."""
        return z

    def before_forward(self, rows: torch.Tensor, latent: torch.Tensor, slot: int) -> None:
        """Called before each forward call of the rollout's steps: the rows [b] fed, in batch order, and which
        of them [b] bool feed thought `slot` (the others feed <eot> or an answer token)."""

    @contextmanager
    def attached(self, lm) -> Iterator[None]:
        """Inside the block the model may carry hooks; on leaving it (an exception included) it is as before."""
        yield
