"""DeepSpeed ZeRO stages 1 and 2 for the training loops, launched by accelerate
(configs/accelerate/deepspeed-zero2.yaml). The only module that knows about DeepSpeed.

Each of N processes keeps the whole model but only 1/N of the AdamW moments and fp32 master weights
(stage 1), and of the reduced gradients (stage 2). The engine differs from DDP in three ways the loops
see through TrainingLoop's hooks:
- it steps INSIDE the last micro-batch's backward (`optimizer.step()`/`zero_grad()` become no-ops) and
  divides the loss by the accumulation steps itself;
- it clips (DeepSpeed config `gradient_clipping`) and skips a step whose gradients are not finite on its
  own; a NaN loss with finite gradients it would apply, so `poison_if_any_nonfinite` makes every rank's
  gradients NaN whenever any rank saw a non-finite loss;
- its optimizer state is per-rank partitions, saved by `engine.save_checkpoint` into the checkpoint's
  temporary directory (`deepspeed/`) and resumable only with the same number of processes.
Stage 3 is refused: its hooked per-submodule collectives would hang rank-divergent loops (latent passes,
rollouts with early exit, sharded evaluation).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, GradientAccumulationPlugin, InitProcessGroupKwargs

from latentreason.errors import UserError
from latentreason.training.checkpoint import TMP_PREFIX, temp_dir

CONFIG = "latentreason/configs/accelerate/deepspeed-zero2.yaml"
SUBDIR = "deepspeed"  # inside a checkpoint: the engine's per-rank optimizer partitions
TAG = "state"


def requested() -> bool:
    """Launched by `accelerate launch` with a DeepSpeed config (which sets this variable)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def active(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _stage() -> int:
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") != "none":
        raise UserError(
            "deepspeed_config_file is not supported: latentreason builds the DeepSpeed config from the recipe; "
            f"set zero_stage in the accelerate config as in {CONFIG}"
        )
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage not in (1, 2):
        raise UserError(f"DeepSpeed ZeRO stage {stage} is not supported; use zero_stage 1 or 2, or FSDP")
    return stage


def _skip_shared_memory_op() -> None:
    """On CPU DeepSpeed JIT-compiles a shared-memory all-reduce (g++ and ninja, ~90 s) at its first
    start. gloo does every reduction we need, so mark that op unusable: DeepSpeed then never builds it.
    (`DS_BUILD_SHM_COMM` only controls pre-building at install time; there is no run-time switch.)"""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def accelerator_kwargs(config, mixed_precision: str) -> dict:
    """What `Accelerator(...)` needs to run the DeepSpeed engine configured from the recipe `config`."""
    try:
        import deepspeed  # noqa: F401
        from accelerate import DeepSpeedPlugin
    except ImportError as error:
        raise UserError(
            f"launched with DeepSpeed but it is not installed ({error}); pip install 'latentreason[deepspeed]'"
        ) from None
    stage = _stage()
    # The accelerate config's DeepSpeed fields `accelerate launch` lists here are read above or superseded by
    # the recipe; left listed, accelerate refuses the config built below as if it were a config file.
    os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read at DeepSpeed's first device query
        _skip_shared_memory_op()
    accum = config.gradient_accumulation_steps
    ds_config = {
        "train_micro_batch_size_per_gpu": config.per_device_train_batch_size,
        "gradient_accumulation_steps": accum,
        # 0 = no clipping; never "auto" (accelerate would turn it into 1.0).
        "gradient_clipping": config.max_grad_norm or 0.0,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": mixed_precision == "bf16"},
        "steps_per_print": sys.maxsize,  # our log, not DeepSpeed's
    }
    plugin = DeepSpeedPlugin(hf_ds_config=ds_config, zero3_init_flag=False)
    # An earlier run in this process (SFT then RL, tests) left its DeepSpeed config in accelerate's shared
    # state, which refuses a new one; the process group (PartialState) stays.
    AcceleratorState._reset_state()
    # An explicit plugin: `accelerate launch` may also set ACCELERATE_GRADIENT_ACCUMULATION_STEPS.
    kwargs = {"deepspeed_plugin": plugin, "gradient_accumulation_plugin": GradientAccumulationPlugin(num_steps=accum)}
    # accelerate (1.15) switches DeepSpeed off when cpu=True; without gloo every process would think
    # it was rank 0 and train alone.
    kwargs["cpu"] = False
    if cpu:
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    return kwargs


def poison_if_any_nonfinite(accelerator, losses: list[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
    """`loss`, made NaN on every rank when any rank's micro-batch losses (this update's) were not finite,
    so that DeepSpeed skips the step everywhere. A collective: every rank calls it before the last backward."""
    bad = torch.stack([(~torch.isfinite(x.detach())).any() for x in losses]).any().float()  # ()
    if float(accelerator.reduce(bad.to(accelerator.device), "sum")) > 0:
        return loss * float("nan")
    return loss


def step_result(optimizer, engine) -> tuple[bool, float]:
    """(applied, gradient norm before clipping) of the step the engine took in the last backward; the norm
    is inf when the step was skipped for non-finite gradients."""
    if optimizer.step_was_skipped:
        return False, float("inf")
    return True, float(engine.get_global_grad_norm())


def full_weights(accelerator, engine) -> dict[str, torch.Tensor] | None:
    """Under bf16 the engine's model is a bf16 copy of the fp32 master weights in the optimizer partitions;
    this gathers the fp32 ones (under `LatentLM` names, on the main process; {} on the others), so that
    checkpoints and the final model hold what a DDP run writes. None in fp32: save the live model. Every
    process must call it (one all-reduce a trained tensor, in state-dict order)."""
    from deepspeed.utils import safe_get_full_fp32_param

    if not engine.bfloat16_enabled():
        return None
    keep = accelerator.is_main_process
    gathered: dict[int, torch.Tensor] = {}  # tied weights stay one tensor
    weights = {}
    for name, value in engine.module.state_dict(keep_vars=True).items():
        if id(value) not in gathered:
            master = safe_get_full_fp32_param(value) if isinstance(value, torch.nn.Parameter) else None
            # Frozen parameters and buffers have no master copy: their bf16 values, in fp32 as DDP writes.
            whole = master if master is not None else value.detach()
            gathered[id(value)] = whole.float().cpu() if whole.is_floating_point() else whole.cpu()
        weights[name.removeprefix("lm.")] = gathered[id(value)]
    return weights if keep else {}


def save_engine_state(accelerator, engine, output_dir: Path, step: int) -> None:
    """Every rank writes its optimizer partition into the (emptied) temporary directory of the step-`step`
    checkpoint, which `save_checkpoint` then completes and renames. Every rank must call it."""
    if accelerator.is_main_process:
        temp_dir(output_dir, step)
    accelerator.wait_for_everyone()
    engine.save_checkpoint(str(output_dir / f"{TMP_PREFIX}{step}" / SUBDIR), tag=TAG)
    accelerator.wait_for_everyone()


def saved_world_size(checkpoint: Path) -> int:
    return len(list((checkpoint / SUBDIR / TAG).glob("*optim_states.pt")))


def load_engine_state(engine, checkpoint: Path, world: int) -> None:
    """The optimizer partitions (and the weights, the same as the checkpoint's safetensors) of `checkpoint`,
    read with torch.load(weights_only=True) (see `_safe_loads`)."""
    saved = saved_world_size(checkpoint)
    if saved == 0:
        raise UserError(
            f"{checkpoint} was not written under DeepSpeed (no {SUBDIR}/); resume it with the launch that wrote it"
        )
    if saved != world:
        raise UserError(
            f"{checkpoint} holds DeepSpeed optimizer partitions of {saved} processes but this run has {world}; "
            "resume with the same number of processes (or convert it with DeepSpeed's ds_to_universal)"
        )
    with _safe_loads(engine):
        engine.load_checkpoint(str(checkpoint / SUBDIR), tag=TAG, load_lr_scheduler_states=False)


@contextlib.contextmanager
def _safe_loads(engine):
    """DeepSpeed's checkpoint engine unpickles with weights_only=False, which lets a crafted file run code.
    Its files need only three DeepSpeed classes besides tensors and containers: allow those, nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    reader = engine.checkpoint_engine

    def load(path: str, map_location=None):
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            return torch.load(path, map_location=map_location, weights_only=True)

    reader.load = load  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        del reader.load
