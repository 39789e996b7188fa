"""The module a training loop hands to `accelerator.prepare`."""

from __future__ import annotations

import abc
from collections.abc import Callable

from torch import nn


class PreparedModule(nn.Module, abc.ABC):
    """The model plus the objective of one micro-batch behind a single forward, so DDP and FSDP see every
    parameter used. `forward(run=fn)` runs `fn` instead, for work that calls the model outside the
    objective (see `Backend.outside_forward`)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        # What TRANSFORMER_BASED_WRAP makes units of (accelerate reads it from the prepared module).
        self._no_split_modules = list(getattr(lm.model, "_no_split_modules", None) or [])

    def forward(self, *args, run: Callable | None = None):
        return run() if run is not None else self.objective(*args)

    @abc.abstractmethod
    def objective(self, *args):
        """The micro-batch's loss (what the backward starts from)."""
