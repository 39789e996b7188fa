"""How the training loops run under each launch: one process or DDP (ddp.py), FSDP2 (fsdp.py), DeepSpeed
ZeRO-1/2/3 (deepspeed.py), behind one interface (base.py). The loops ask accelerate for the launch
(`accelerator_kwargs`) and then `select` its backend once; nothing else looks at the launch."""

from __future__ import annotations

from accelerate.utils import DistributedType

from latentreason.processes import multi_process_cpu
from latentreason.training.backends import deepspeed, fsdp
from latentreason.training.backends.base import Backend
from latentreason.training.backends.ddp import DDP


def accelerator_kwargs(config, mixed_precision: str, hidden_size: int) -> dict:
    """What `Accelerator(...)` needs, besides the run's own settings, to start the launch `accelerate launch`
    or torchrun asked for, training a model of width `hidden_size`."""
    if deepspeed.requested():
        return deepspeed.accelerator_kwargs(config, mixed_precision, hidden_size)
    return {"cpu": multi_process_cpu()}


def select(accelerator, config, lm) -> Backend:
    """The backend of the launch `accelerator` runs (refusing the FSDP set-ups the loops would get wrong)."""
    fsdp.enable_on_cpu(accelerator)
    fsdp.check_launch(accelerator, lm)
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        zero3 = accelerator.state.deepspeed_plugin.zero_stage == 3
        return deepspeed.ZeRO3(accelerator) if zero3 else deepspeed.DeepSpeed(accelerator)
    if kind == DistributedType.FSDP:
        return fsdp.FSDP(accelerator, config.gradient_accumulation_steps, config.max_grad_norm)
    return DDP(accelerator, config.gradient_accumulation_steps, config.max_grad_norm)
