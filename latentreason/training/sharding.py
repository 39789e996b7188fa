"""FSDP2 (`fully_shard`) for the training loops, launched by accelerate (configs/accelerate/fsdp.yaml).

The module a loop prepares (the model with its method heads) is ONE FSDP unit: between steps each of
N processes keeps 1/N of every parameter, gradient and AdamW moment; a micro-batch's forward gathers
the whole model and its backward reduce-scatters the gradients. Per-layer units (auto-wrap) are
refused: a latent pass calls every layer once per latent slot of the longest thought in the local
batch, so processes would run different numbers of per-layer collectives and wait for each other
forever (or pair up the wrong ones).

Outside that forward the parameters are shards, so evaluation and RL sampling run through it
(`outside_forward`), and checkpoints gather whole tensors (`full_weights`, `full_optimizer_state`)
that the main process writes in the usual format.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from latentreason.errors import UserError
from latentreason.model.lora import has_lora

FSDP_CONFIG = "latentreason/configs/accelerate/fsdp.yaml"


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
    if plugin.auto_wrap_policy is not None:
        raise UserError(
            "FSDP auto-wrap is not supported: latent passes call each layer a data-dependent number of times, "
            f"so per-layer shards would deadlock; set fsdp_auto_wrap_policy: NO_WRAP as in {FSDP_CONFIG} "
            "(FSDP_AUTO_WRAP_POLICY=NO_WRAP under torchrun)"
        )
    if has_lora(lm.model):
        raise UserError("LoRA (lora_r > 0) is not supported under FSDP yet; launch LoRA runs with DDP")


class PreparedModule(nn.Module, abc.ABC):
    """What a loop hands to `accelerator.prepare`: the model plus the objective of one micro-batch behind a
    single forward, so DDP and FSDP see every parameter used. `forward(run=fn)` runs `fn` instead, for
    work that calls the model outside the objective (see `outside_forward`)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, *args, run: Callable | None = None):
        return run() if run is not None else self.objective(*args)

    @abc.abstractmethod
    def objective(self, *args):
        """The micro-batch's loss (what the backward starts from)."""


def outside_forward(accelerator, module: PreparedModule, fn: Callable):
    """fn() where it may call the model directly (evaluation, RL sampling and scoring), without gradients.

    Under FSDP the parameters are shards outside the module's forward, so fn runs inside it: the forward
    gathers the whole model once on every process (the same collective everywhere, however many decoding
    steps each process then runs), and FSDP initialises itself there if this is the first forward. The
    root unit keeps its parameters gathered after a forward (they are freed by the next backward), so
    reshard at once. Not returned through the forward: accelerate casts a forward's bf16 outputs to fp32.
    """
    if accelerator.distributed_type != DistributedType.FSDP:
        with torch.no_grad():
            return fn()
    result = []
    with torch.no_grad():
        module(run=lambda: result.append(fn()))
    module.reshard()
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
