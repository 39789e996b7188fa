"""What a training method is: a config dataclass, a batch builder, a loss, a solver and, for a latent policy
RL can train, its actions (methods/latent_actions.py)."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from latentreason.data.problems import Problem
from latentreason.engine.loss import next_token_loss  # noqa: F401  (re-exported for methods)
from latentreason.methods.latent_actions import LatentActions
from latentreason.named import Registry
from latentreason.train_config import SFTConfig

METHODS = Registry("method")
register_method = METHODS.register


def get_method(name: str) -> type[Method]:
    return METHODS.get_class(name)


class Method(abc.ABC):
    """Subclasses set `config_cls` and implement `collate`, `loss` and `solver`."""

    name: ClassVar[str]
    config_cls: ClassVar[type[SFTConfig]] = SFTConfig
    # Built as latent_actions(lm, method) after `prepare`; None: no latent policy for RL to train.
    latent_actions: ClassVar[type[LatentActions] | None] = None

    def __init__(self, config: SFTConfig):
        self.config = config

    def build_lm(self, config, train: list[Problem]):
        """The model a fresh run trains (a resumed run loads its checkpoint instead)."""
        from latentreason.model.build import build_latent_lm

        return build_latent_lm(config, train)

    def prepare(self, lm) -> None:  # noqa: B027 - optional hook, most methods have no heads
        """Create the method's heads on `lm` (before the optimizer is built); must be idempotent."""

    def start_epoch(self, epoch: int) -> bool:
        """Called before each epoch (curricula); return True to reset the optimizer state."""
        return False

    def start_step(self, step: int, steps_per_epoch: int) -> bool:
        """Called before each optimizer step (step-based schedules); return True to reset the optimizer."""
        return False

    def final_layout_step(self, steps_per_epoch: int) -> int | None:
        """For a curriculum: the first optimizer step that trains the final layout (the one the solver
        uses). None: no curriculum, or its end depends on the data (the trainer then says nothing)."""
        return None

    def resume_resets_optimizer(self) -> bool:
        """True when a resumed run's trainable parameters are new (fresh LoRA adapters on merged weights),
        so the checkpoint's optimizer moments belong to other parameters and must not be loaded."""
        return False

    def batch_tokens(self, batch: dict) -> int:
        """Positions a micro-batch occupies (for the tokens/s figure)."""
        return int(batch["attention_mask"].sum())

    @abc.abstractmethod
    def collate(self, lm, problems: list[Problem]) -> dict:
        """Tensors for one micro-batch (on CPU; the trainer moves them)."""

    @abc.abstractmethod
    def loss(self, lm, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, metrics to log) for one micro-batch."""

    @abc.abstractmethod
    def solver(self, lm):
        """The object that answers problems with this method at evaluation time."""
