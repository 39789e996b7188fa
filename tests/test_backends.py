"""Every launch gets its backend, once (the runs under each are in test_distributed.py and
test_fsdp_layers.py; the launches refused are in test_sharding.py and test_deepspeed.py)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

from latentreason.training import backends
from latentreason.training.backends.ddp import DDP
from latentreason.training.backends.deepspeed import DeepSpeed, ZeRO3
from latentreason.training.backends.fsdp import FSDP
from tests.helpers import tiny_lm

PER_LAYER = functools.partial(transformer_auto_wrap_policy)


def launched(kind: DistributedType, auto_wrap=None, zero_stage: int = 2):
    """What `select` reads of an accelerator launched as `kind`."""
    fsdp = SimpleNamespace(fsdp_version=2, auto_wrap_policy=auto_wrap, activation_checkpointing=False)
    state = SimpleNamespace(fsdp_plugin=fsdp, deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage))
    return SimpleNamespace(distributed_type=kind, state=state)


@pytest.mark.parametrize(
    ("accelerator", "backend", "per_layer_collectives"),
    [
        (launched(DistributedType.NO), DDP, False),
        (launched(DistributedType.MULTI_CPU), DDP, False),
        (launched(DistributedType.FSDP), FSDP, False),
        (launched(DistributedType.FSDP, auto_wrap=PER_LAYER), FSDP, True),
        (launched(DistributedType.DEEPSPEED, zero_stage=1), DeepSpeed, False),
        (launched(DistributedType.DEEPSPEED, zero_stage=2), DeepSpeed, False),
        (launched(DistributedType.DEEPSPEED, zero_stage=3), ZeRO3, True),
    ],
)
def test_each_launch_gets_its_backend(accelerator, backend, per_layer_collectives, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    config = SimpleNamespace(gradient_accumulation_steps=2, max_grad_norm=1.0)
    selected = backends.select(accelerator, config, tiny_lm())
    assert type(selected) is backend and selected.accelerator is accelerator
    assert selected.per_layer_collectives == per_layer_collectives
