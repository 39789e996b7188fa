"""What the training loops ask of a launch (one process or DDP, FSDP, DeepSpeed ZeRO-1/2/3): how one
micro-batch's gradients are synchronised and an update applied, how the model runs outside the training
forward, and how its weights and optimizer state are saved and resumed.

`module` is the `PreparedModule` as accelerate prepared it (a DDP/FSDP module or a DeepSpeed engine) and
`optimizer` accelerate's wrapper around the AdamW the loop built.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import PartialState
from torch import distributed

from latentreason.engine.lockstep import lockstep
from latentreason.training.guards import NonFiniteGuard


def max_over_processes(n: int) -> int:
    """The largest `n` over the processes (a collective; see engine/lockstep.py)."""
    value = torch.tensor([n], device=PartialState().device)
    distributed.all_reduce(value, op=distributed.ReduceOp.MAX)
    return int(value)


def kept_copy(tensor: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """A CPU copy of a gathered tensor on the process that keeps it (the main process), else None: the
    others would hold a whole model for nothing."""
    return tensor.detach().cpu() if keep else None


def whole_weights(state: dict, whole: Callable[[torch.Tensor], torch.Tensor], keep: bool) -> dict:
    """`state` (the prepared module's state dict) under `LatentLM` names, each tensor `whole(tensor)` as a
    CPU copy on the process that `keep`s them ({} on the others). `whole` may be a collective: every
    process calls it for the same tensors in the same order; tied weights are one tensor, gathered once."""
    gathered: dict[int, torch.Tensor | None] = {}
    weights = {}
    for name, value in state.items():
        if id(value) not in gathered:
            gathered[id(value)] = kept_copy(whole(value), keep)
        weights[name.removeprefix("lm.")] = gathered[id(value)]
    return weights if keep else {}


class Backend(abc.ABC):
    """One kind of launch, as the loops see it; `backends.select` picks it once per run."""

    # Whether every call of a layer is a collective (FSDP per layer, ZeRO-3): the training passes then make
    # as many calls as the busiest process (engine/lockstep.py).
    per_layer_collectives = False

    def __init__(self, accelerator):
        self.accelerator = accelerator

    @contextlib.contextmanager
    def micro_batch(self, module, last: bool):
        """The context of one micro-batch's forward and backward; `last`: the update's last micro-batch."""
        padded = lockstep(max_over_processes) if self.per_layer_collectives else contextlib.nullcontext()
        with self.gradient_sync(module, last), padded:
            yield

    @abc.abstractmethod
    def gradient_sync(self, module, last: bool) -> contextlib.AbstractContextManager:
        """The context that reduces gradients over the processes after the update's last micro-batch."""

    @abc.abstractmethod
    def backward(self, losses: list[torch.Tensor], last: bool) -> None:
        """Backward of the latest of this update's micro-batch `losses` (the update's mean is the objective)."""

    @abc.abstractmethod
    def apply_update(self, module, optimizer, loss: float, guard: NonFiniteGuard, step: int) -> tuple[bool, float]:
        """After the last backward: clip and step unless `guard` refuses the update (`loss`: its mean over
        micro-batches and processes, the same everywhere). -> (applied, gradient norm before clipping)."""

    def outside_forward(self, module, fn: Callable):
        """fn() without gradients where it may call the model directly (evaluation, RL sampling and scoring),
        on the whole model and without per-layer collectives. Here every process holds the whole model."""
        with torch.no_grad():
            return fn()

    @abc.abstractmethod
    def full_weights(self, module) -> dict[str, torch.Tensor] | None:
        """The weights to save, whole, under `LatentLM` names on the main process ({} on the others), or
        None when the live model holds them (see `LatentLM.save_pretrained`). Every process calls it."""

    @abc.abstractmethod
    def save_optimizer(self, module, optimizer, output_dir: Path, step: int) -> dict | None:
        """The optimizer state `save_checkpoint` writes as optimizer.pt (whole, on the main process), or
        None when this backend wrote its own into the step's temporary checkpoint directory (`temp_dir`).
        Every process calls it."""

    @abc.abstractmethod
    def load_optimizer(self, module, optimizer, checkpoint: Path) -> None:
        """Resume the optimizer state `save_optimizer` put into `checkpoint`."""
