"""FSDP2 (`fully_shard`) for the training loops, launched by accelerate (configs/accelerate/fsdp.yaml and
fsdp-layers.yaml).

Between steps each of N processes keeps 1/N of every parameter, gradient and AdamW moment. The module a
loop prepares (the model with its method heads) is the root unit; with NO_WRAP it is the only one, and a
micro-batch's forward gathers the whole model at once. With TRANSFORMER_BASED_WRAP every decoder layer
is a unit of its own, gathered for each call and freed after it, so only one layer is whole at a time.
Every call is then a collective, and the training passes make the same calls on every process (the
engine pads data-dependent counts under `lockstep`, engine/lockstep.py).

Outside the training forward the parameters are shards: evaluation and RL sampling gather the whole
model once and run on it without collectives (`outside_forward`), and checkpoints gather whole tensors
(`full_weights`, `full_optimizer_state`) that the main process writes in the usual format.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import distributed, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from torch.distributed.tensor import DTensor, distribute_tensor

from latentreason.errors import UserError

FSDP_CONFIG = "latentreason/configs/accelerate/fsdp.yaml"
FSDP_LAYERS_CONFIG = "latentreason/configs/accelerate/fsdp-layers.yaml"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def enable_fsdp_on_cpu(accelerator) -> None:
    """Launched with an FSDP config on a machine without GPUs, accelerate (1.15) quietly runs the processes
    as DDP on gloo: it turns FSDP on only for GPU-like devices. `fully_shard` works on CPU, so turn it on."""
    if accelerator.distributed_type != DistributedType.MULTI_CPU or not _flag("ACCELERATE_USE_FSDP"):
        return
    plugin = FullyShardedDataParallelPlugin()  # read from the FSDP_* variables `accelerate launch` sets
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # Both shared states: accelerate copies PartialState's distributed type whenever it rebuilds its state.
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def check_launch(accelerator, lm) -> None:
    """Refuse the distributed set-ups the loops would get wrong, each with what to use instead."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise UserError(
            f"FSDP needs fsdp_version: 2 (fully_shard) in the accelerate config, as in {FSDP_CONFIG} "
            "(FSDP_VERSION=2 under torchrun)"
        )
    policy = plugin.auto_wrap_policy
    if policy is not None and getattr(policy, "func", policy) is not transformer_auto_wrap_policy:
        raise UserError(
            "FSDP fsdp_auto_wrap_policy must be NO_WRAP (one unit) or TRANSFORMER_BASED_WRAP (one unit per "
            f"decoder layer), as in {FSDP_CONFIG} or {FSDP_LAYERS_CONFIG}: size-based units may split a method's "
            "heads, which the latent passes call a data-dependent number of times"
        )
    if plugin.activation_checkpointing:
        raise UserError(
            "fsdp_activation_checkpointing is not supported: latent passes keep a KV cache across model calls, "
            "and recomputing a layer in the backward would write it twice; set it to false"
        )


class PreparedModule(nn.Module, abc.ABC):
    """What a loop hands to `accelerator.prepare`: the model plus the objective of one micro-batch behind a
    single forward, so DDP and FSDP see every parameter used. `forward(run=fn)` runs `fn` instead, for
    work that calls the model outside the objective (see `outside_forward`)."""

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


def sharded_per_layer(accelerator) -> bool:
    """Whether the model's layers are separate FSDP units (every call of one is a collective)."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return False
    return accelerator.state.fsdp_plugin.auto_wrap_policy is not None


def max_over_processes(n: int) -> int:
    """The largest `n` over the processes (a collective; see engine/lockstep.py)."""
    value = torch.tensor([n], device=PartialState().device)
    distributed.all_reduce(value, op=distributed.ReduceOp.MAX)
    return int(value)


def outside_forward(accelerator, module: PreparedModule, fn: Callable):
    """fn() where it may call the model directly (evaluation, RL sampling and scoring), without gradients.

    Under FSDP the parameters are shards outside the module's forward, so every unit is gathered once
    (the same collectives on every process, in the same order) and kept whole until fn returns: fn then
    calls the layers without collectives, however many decoding steps each process runs. fn runs inside
    the root unit's forward, where FSDP initialises itself if this is the first forward. Everything is
    resharded at the end. Not returned through the forward: accelerate casts a forward's bf16 outputs to fp32.
    (DeepSpeed ZeRO-3 has its own, in deepspeed.py; `TrainingLoop.outside_forward` picks.)
    """
    if accelerator.distributed_type != DistributedType.FSDP:
        with torch.no_grad():
            return fn()
    layers = [m for m in module.modules() if isinstance(m, FSDPModule) and m is not module]
    reshard = accelerator.state.fsdp_plugin.reshard_after_forward
    result = []
    with torch.no_grad():
        for unit in layers:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        module(run=lambda: result.append(fn()))
    for unit in layers:
        unit.set_reshard_after_forward(reshard, recurse=False)
        unit.reshard()
    module.reshard()  # the root keeps its parameters gathered after a forward (freed by the next backward)
    return result[0]


def _whole(value: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """A shard's whole tensor (a collective: every process calls it, in the same order); CPU copy if `keep`."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return value.detach().cpu() if keep else None


def full_weights(accelerator, module: PreparedModule) -> dict[str, torch.Tensor] | None:
    """The model's whole weights under `LatentLM` names on the main process ({} on the others) when they are
    sharded, else None (save the live model). Every process must call it."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    keep = accelerator.is_main_process
    gathered: dict[int, torch.Tensor | None] = {}  # one gather per tensor: tied weights stay one tensor
    weights = {}
    for name, value in module.state_dict(keep_vars=True).items():
        if id(value) not in gathered:
            gathered[id(value)] = _whole(value, keep)
        weights[name.removeprefix("lm.")] = gathered[id(value)]
    return weights if keep else {}


def full_optimizer_state(accelerator, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with every sharded moment gathered whole (on the main process; {} on the
    others): the same file as a DDP run writes, so a checkpoint resumes under any launch. Every process
    must call it."""
    state = optimizer.state_dict()
    if accelerator.distributed_type != DistributedType.FSDP:
        return state
    keep = accelerator.is_main_process
    moments = {i: {k: _whole(v, keep) for k, v in s.items()} for i, s in sorted(state["state"].items())}
    return {"state": moments, "param_groups": state["param_groups"]} if keep else {}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state (whole tensors); under FSDP each process keeps its shard of every
    moment, cut like its parameter (every process read the same file, so no communication is needed)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the ids of state_dict()
    if any(isinstance(p, DTensor) for p in params):

        def shard_like(i: int, value):
            param = params[i] if i < len(params) else None  # a mismatch is left to load_state_dict to report
            if isinstance(param, DTensor) and value.shape == param.shape:  # not the scalar `step`
                value = value.to(param.device)
                return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
            return value

        moments = {i: {k: shard_like(i, v) for k, v in s.items()} for i, s in state["state"].items()}
        state = {"state": moments, "param_groups": state["param_groups"]}
    optimizer.load_state_dict(state)
