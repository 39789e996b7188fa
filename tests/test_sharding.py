"""The distributed set-ups the training loops refuse, each with one line saying what to use instead (the
FSDP runs themselves are in test_distributed.py; DeepSpeed's refusals are in test_deepspeed.py)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType
from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

from latentreason.errors import UserError
from latentreason.training.backends.fsdp import check_launch
from tests.helpers import tiny_lm


def launch(kind: DistributedType, version: int = 2, auto_wrap=None, checkpointing: bool = False):
    """What `check_launch` reads of an accelerator."""
    plugin = SimpleNamespace(fsdp_version=version, auto_wrap_policy=auto_wrap, activation_checkpointing=checkpointing)
    return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=plugin))


def test_ddp_and_fsdp2_with_one_unit_or_one_per_layer_are_accepted():
    check_launch(launch(DistributedType.MULTI_CPU), tiny_lm())
    check_launch(launch(DistributedType.FSDP), tiny_lm())
    check_launch(launch(DistributedType.FSDP, auto_wrap=functools.partial(transformer_auto_wrap_policy)), tiny_lm())


@pytest.mark.parametrize(
    ("accelerator", "message"),
    [
        (launch(DistributedType.FSDP, version=1), "FSDP needs fsdp_version: 2"),
        (launch(DistributedType.FSDP, auto_wrap=size_based_auto_wrap_policy), "NO_WRAP .* or TRANSFORMER_BASED_WRAP"),
        (launch(DistributedType.FSDP, checkpointing=True), "fsdp_activation_checkpointing is not supported"),
    ],
)
def test_unsupported_launches_are_refused_with_what_to_use(accelerator, message):
    with pytest.raises(UserError, match=message):
        check_launch(accelerator, tiny_lm())
