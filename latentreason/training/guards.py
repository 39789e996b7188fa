"""Numerical guard shared by the trainers: skip an update whose loss or gradient norm is NaN/inf.

A trainer computes the loss and the gradient norm, asks `check`, and calls `optimizer.step()` only
when it returns True (gradients are zeroed either way). After `max_in_a_row` skipped steps in a row
`check` raises a `UserError`: the run stops before another checkpoint is written, so the last one on
disk holds the parameters of the last finite update.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from latentreason.errors import UserError


def _value(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


class NonFiniteGuard:
    """`check(loss, grad_norm)` -> apply the update?; counts skips in total and in a row.

    In a multi-process run pass the loss averaged over ranks (and the global gradient norm, which
    clipping already computes) so every rank takes the same decision.
    """

    def __init__(self, max_in_a_row: int, skipped: int = 0, report: Callable[[str], None] = print):
        if max_in_a_row < 1:
            raise ValueError(f"max_in_a_row must be >= 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.report = report  # e.g. accelerator.print, so only the main process speaks
        self.skipped = skipped  # total over the run (restored from the checkpoint on resume)
        self.in_a_row = 0

    def check(self, loss, grad_norm=None, step: int | None = None) -> bool:
        loss_value = _value(loss)
        norm_value = 0.0 if grad_norm is None else _value(grad_norm)
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        at = f"step {step}: " if step is not None else ""
        if self.in_a_row >= self.max_in_a_row:
            raise UserError(
                f"{at}loss {loss_value} / gradient norm {norm_value} not finite for {self.in_a_row} steps in a row "
                f"(max_nonfinite_steps={self.max_in_a_row}); stopped without saving. The last checkpoint in "
                f"output_dir holds the last good parameters: lower learning_rate, check the data, or raise "
                f"max_nonfinite_steps"
            )
        self.report(
            f"{at}non-finite loss {loss_value} or gradient norm {norm_value}: update skipped ({self.in_a_row} in a row)"
        )
        return False


def advance_schedule(scheduler) -> None:
    """scheduler.step() after an update, applied or skipped: the learning rate stays a function of the step."""
    with warnings.catch_warnings():
        # After a skipped first update torch warns that the schedule moved before the optimizer: intended.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()
