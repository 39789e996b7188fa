"""Call counts that every process agrees on, for models sharded per layer (FSDP auto-wrap, ZeRO-3).

There every call of a layer gathers its weights, and its backward gathers them again and reduces their
gradients, with collectives. So every process must call each layer the same number of times, AND build
the same autograd graph: the backward's collectives follow the order in which autograd reaches each
call, which depends on how the calls feed each other. A latent pass calls each layer once per latent
slot of the longest thought in the LOCAL batch, and a step decoder runs only if the local batch has
steps to decode: left alone, processes would diverge and wait for each other forever.

Inside `lockstep(...)` the engine asks `agreed_max` / `agreed_any` and runs the same work as the
busiest process: a latent pass runs as many slots as the longest thought over all processes (the extra
slots masked, exactly as a shorter row's are in a mixed batch, so values and gradients are unchanged),
and a step decoder with nothing to decode decodes a masked group with weight 0. Outside it (one
process, DDP, one-unit FSDP, ZeRO-1/2) both return the local value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextvars import ContextVar

_max_over_processes: ContextVar[Callable[[int], int] | None] = ContextVar("max_over_processes", default=None)


@contextlib.contextmanager
def lockstep(max_over_processes: Callable[[int], int]):
    """Within this block the engine pads data-dependent call counts to `max_over_processes(n)`, a
    collective every process calls with its local count."""
    token = _max_over_processes.set(max_over_processes)
    try:
        yield
    finally:
        _max_over_processes.reset(token)


def agreed_max(n: int) -> int:
    """The largest of every process's `n` inside `lockstep`; `n` outside it."""
    reduce = _max_over_processes.get()
    return n if reduce is None else reduce(n)


def agreed_any(flag: bool) -> bool:
    """Whether any process's `flag` is set inside `lockstep`; `flag` outside it."""
    return agreed_max(int(flag)) > 0
