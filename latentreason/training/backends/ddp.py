"""One process, or DDP: every process holds the whole model and optimizer, and gradients are averaged over
the processes in the backward of an update's last micro-batch."""

from __future__ import annotations

import contextlib
import math

from latentreason.training.backends.base import Backend
from latentreason.training.checkpoint import read_optimizer_state


class DDP(Backend):
    """`accumulation_steps` micro-batches make an update; gradients are clipped to `max_grad_norm` (0: not
    clipped, still measured for the guard)."""

    def __init__(self, accelerator, accumulation_steps: int, max_grad_norm: float):
        super().__init__(accelerator)
        self.accumulation_steps, self.max_grad_norm = accumulation_steps, max_grad_norm

    def gradient_sync(self, module, last):
        return contextlib.nullcontext() if last else self.accelerator.no_sync(module)

    def backward(self, losses, last):
        self.accelerator.backward(losses[-1] / self.accumulation_steps)

    def apply_update(self, module, optimizer, loss, guard, step):
        # Clipping by inf scales by 1: max_grad_norm 0 still measures the (global) norm.
        grad_norm = float(self.accelerator.clip_grad_norm_(module.parameters(), self.max_grad_norm or math.inf))
        applied = guard.check(loss, grad_norm, step)
        if applied:
            optimizer.step()
        return applied, grad_norm

    def full_weights(self, module):
        return None

    def save_optimizer(self, module, optimizer, output_dir, step):
        return optimizer.optimizer.state_dict()

    def load_optimizer(self, module, optimizer, checkpoint):
        optimizer.optimizer.load_state_dict(read_optimizer_state(checkpoint))
