"""The distributed set-ups the training loops refuse, each with one line saying what to use instead (the
FSDP runs themselves are in test_distributed.py; DeepSpeed's refusals are in test_deepspeed.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from latentreason.errors import UserError
from latentreason.training.backends.fsdp import check_launch
from tests.helpers import tiny_lm


def launch(kind: DistributedType, fsdp_config: dict | None = None):
    """What `check_launch` reads of an accelerator: the FSDP plugin accelerate builds from an accelerate
    config's fsdp_config (as in fsdp.yaml, fsdp-layers.yaml); a DDP launch has none."""
    plugin = None if fsdp_config is None else FullyShardedDataParallelPlugin(**{"fsdp_version": 2, **fsdp_config})
    return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize(
    ("kind", "fsdp_config"),
    [
        (DistributedType.MULTI_CPU, None),
        (DistributedType.FSDP, {"auto_wrap_policy": "NO_WRAP"}),
        (DistributedType.FSDP, {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}),
    ],
    ids=["ddp", "fsdp", "fsdp-layers"],
)
def test_ddp_and_fsdp2_with_one_unit_or_one_per_layer_are_accepted(kind, fsdp_config):
    accelerator, lm = launch(kind, fsdp_config), tiny_lm()
    check_launch(accelerator, lm)  # a refusal (UserError) or a crash fails the test
    if fsdp_config is not None:  # again once `prepare` has bound the wrap policy to the model's layer classes
        accelerator.state.fsdp_plugin.set_auto_wrap_policy(lm.model)
        check_launch(accelerator, lm)


@pytest.mark.parametrize(
    ("fsdp_config", "message"),
    [
        ({"fsdp_version": 1}, "FSDP needs fsdp_version: 2"),
        ({"auto_wrap_policy": "SIZE_BASED_WRAP"}, "NO_WRAP .* or TRANSFORMER_BASED_WRAP"),
        ({"activation_checkpointing": True}, "fsdp_activation_checkpointing is not supported"),
    ],
)
def test_unsupported_launches_are_refused_with_what_to_use(fsdp_config, message):
    with pytest.raises(UserError, match=message):
        check_launch(launch(DistributedType.FSDP, fsdp_config), tiny_lm())
