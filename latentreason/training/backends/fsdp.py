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
(`full_weights`, `save_optimizer`) that the main process writes in the usual format, so a checkpoint
resumes under any launch but DeepSpeed. Gradients are synchronised and updates applied as under DDP.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from torch.distributed.tensor import DTensor, distribute_tensor

from latentreason.errors import UserError
from latentreason.training.backends.base import kept_copy, whole_weights
from latentreason.training.backends.ddp import DDP
from latentreason.training.checkpoint import read_optimizer_state

FSDP_CONFIG = "latentreason/configs/accelerate/fsdp.yaml"
FSDP_LAYERS_CONFIG = "latentreason/configs/accelerate/fsdp-layers.yaml"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def enable_on_cpu(accelerator) -> None:
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


def _full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A shard's whole tensor (a collective: every process calls it, in the same order)."""
    return value.full_tensor() if isinstance(value, DTensor) else value


class FSDP(DDP):
    """DDP's gradient sync and update, on sharded parameters that are gathered outside the forward."""

    def __init__(self, accelerator, accumulation_steps: int, max_grad_norm: float):
        super().__init__(accelerator, accumulation_steps, max_grad_norm)
        self.plugin = accelerator.state.fsdp_plugin
        # TRANSFORMER_BASED_WRAP: the model's layers are separate units (every call of one is a collective).
        self.per_layer_collectives = self.plugin.auto_wrap_policy is not None

    def outside_forward(self, module, fn):
        """Every unit is gathered once (the same collectives on every process, in the same order) and kept
        whole until fn returns: fn then calls the layers without collectives, however many decoding steps
        each process runs. fn runs inside the root unit's forward, where FSDP initialises itself if this is
        the first forward. Everything is resharded at the end. Not returned through the forward: accelerate
        casts a forward's bf16 outputs to fp32."""
        layers = [m for m in module.modules() if isinstance(m, FSDPModule) and m is not module]
        result = []
        with torch.no_grad():
            for unit in layers:
                unit.set_reshard_after_forward(False, recurse=False)
                unit.unshard()
            module(run=lambda: result.append(fn()))
        for unit in layers:
            unit.set_reshard_after_forward(self.plugin.reshard_after_forward, recurse=False)
            unit.reshard()
        module.reshard()  # the root keeps its parameters gathered after a forward (freed by the next backward)
        return result[0]

    def full_weights(self, module):
        return whole_weights(module.state_dict(keep_vars=True), _full_tensor, self.accelerator.is_main_process)

    def save_optimizer(self, module, optimizer, output_dir, step):
        """`optimizer.state_dict()` with every sharded moment gathered whole: the same file as a DDP run
        writes."""
        state, keep = optimizer.optimizer.state_dict(), self.accelerator.is_main_process
        moments = {
            i: {k: kept_copy(_full_tensor(v), keep) for k, v in s.items()} for i, s in sorted(state["state"].items())
        }
        return {"state": moments, "param_groups": state["param_groups"]} if keep else {}

    def load_optimizer(self, module, optimizer, checkpoint):
        """Each process keeps its shard of every moment, cut like its parameter (every process read the same
        file, so no communication is needed)."""
        optimizer = optimizer.optimizer
        state = read_optimizer_state(checkpoint)
        params = [p for group in optimizer.param_groups for p in group["params"]]  # the ids of state_dict()

        def shard_like(i: int, value):
            param = params[i] if i < len(params) else None  # a mismatch is left to load_state_dict to report
            if isinstance(param, DTensor) and value.shape == param.shape:  # not the scalar `step`
                value = value.to(param.device)
                return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
            return value

        moments = {i: {k: shard_like(i, v) for k, v in s.items()} for i, s in state["state"].items()}
        optimizer.load_state_dict({"state": moments, "param_groups": state["param_groups"]})
