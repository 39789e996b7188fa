"""DeepSpeed ZeRO stages 1, 2 and 3 for the training loops, launched by accelerate
(configs/accelerate/deepspeed-zero2.yaml, deepspeed-zero3.yaml). The only module that imports DeepSpeed.

Each of N processes keeps 1/N of the AdamW moments and fp32 master weights (stage 1), of the reduced
gradients (stage 2) and of the parameters themselves (stage 3). The engine differs from DDP in ways the
loops see only through the backend (`DeepSpeed`, and `ZeRO3` for stage 3):
- it steps INSIDE the last micro-batch's backward (`optimizer.step()`/`zero_grad()` become no-ops) and
  divides the loss by the accumulation steps itself;
- it clips (DeepSpeed config `gradient_clipping`) and skips a step whose gradients are not finite on its
  own; a NaN loss with finite gradients it would apply, so `DeepSpeed.backward` makes every rank's
  gradients NaN whenever any rank saw a non-finite loss;
- its optimizer state is per-rank partitions, saved by `engine.save_checkpoint` into the checkpoint's
  temporary directory (`deepspeed/`) and resumable only with the same number of processes.

Stage 3 gathers a submodule's parameters in hooks around each of its calls (forward and backward) and
frees them after, so every process must call every submodule as often as the others, in the same order
(DeepSpeed compares the processes' call sequences whenever it records one, and stops on a difference):
- the loops run the training passes under `lockstep` (engine/lockstep.py): the latent passes pad their
  data-dependent slot counts (thought map and model calls alike) to the processes' largest;
- work outside the training forward (evaluation, RL sampling and scoring) gathers every parameter once and
  runs with the hooks taken off (`outside_forward`), so processes may decode for different numbers of steps;
- weights are saved from the fp32 master partitions (`full_weights`, one gather per tensor).
Every process builds the whole model before the engine partitions it (`zero3_init_flag` false): loading a
model straight into partitions is not supported. Parameter and optimizer offload are not supported.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs

from latentreason.errors import UserError
from latentreason.training.backends.base import Backend, whole_weights
from latentreason.training.checkpoint import TMP_PREFIX, temp_dir

CONFIG = "latentreason/configs/accelerate/deepspeed-zero2.yaml"
ZERO3_CONFIG = "latentreason/configs/accelerate/deepspeed-zero3.yaml"
SUBDIR = "deepspeed"  # inside a checkpoint: the engine's per-rank optimizer partitions
TAG = "state"


def requested() -> bool:
    """Launched by `accelerate launch` with a DeepSpeed config (which sets this variable)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _refuse_unsupported_settings() -> None:
    """The accelerate config's DeepSpeed settings that the config built from the recipe would not honour."""
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") != "none":
        raise UserError(
            "deepspeed_config_file is not supported: latentreason builds the DeepSpeed config from the recipe; "
            f"set zero_stage in the accelerate config as in {CONFIG} or {ZERO3_CONFIG}"
        )
    for setting in ("offload_optimizer_device", "offload_param_device"):
        if os.environ.get(f"ACCELERATE_DEEPSPEED_{setting.upper()}", "none").lower() != "none":
            raise UserError(f"DeepSpeed {setting} is not supported; set it to none (as in {ZERO3_CONFIG})")
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() == "true":
        raise UserError(
            "DeepSpeed zero3_init_flag: true is not supported: every process builds the whole model before the "
            f"engine partitions it; set zero3_init_flag: false (as in {ZERO3_CONFIG})"
        )


def _stage() -> int:
    _refuse_unsupported_settings()
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage not in (1, 2, 3):
        raise UserError(f"DeepSpeed ZeRO stage {stage} is not supported; use zero_stage 1, 2 or 3")
    return stage


def _zero_config(stage: int, hidden_size: int) -> dict:
    """The `zero_optimization` section. Stage 3's sizes are what transformers' Trainer picks for "auto":
    tensors of at most 10 x hidden elements (norms, biases) stay whole on every process (no gather per
    call), gathers are prefetched and gradients reduced in buckets of about hidden^2 elements."""
    zero = {"stage": stage}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
        zero["reduce_bucket_size"] = hidden_size * hidden_size
    return zero


def _skip_shared_memory_op() -> None:
    """On CPU DeepSpeed JIT-compiles a shared-memory all-reduce (g++ and ninja, ~90 s) at its first
    start. gloo does every reduction we need, so mark that op unusable: DeepSpeed then never builds it.
    (`DS_BUILD_SHM_COMM` only controls pre-building at install time; there is no run-time switch.)"""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def accelerator_kwargs(config, mixed_precision: str, hidden_size: int) -> dict:
    """What `Accelerator(...)` needs to run the DeepSpeed engine configured from the recipe `config`, for a
    model of width `hidden_size`."""
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
    # DeepSpeed 0.19 calls collectives that torch deprecates; ZeRO-3 would warn at every gather.
    deprecated = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
    warnings.filterwarnings("ignore", message=deprecated, category=FutureWarning)
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
        "zero_optimization": _zero_config(stage, hidden_size),
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


def withdraw_from_transformers() -> None:
    """accelerate hands its ZeRO-3 config to transformers, which then builds every model made later in this
    process (a resumed run's, RL's frozen copies, a new step decoder) straight into partitions, and resizes
    embeddings through gathers. Here every process builds whole models and only the engine partitions them
    (zero3_init_flag false): take the config back."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _remove_hooks(offload) -> None:
    """Take off the fetch/release hooks DeepSpeed put on every submodule (forward and backward)."""
    for param in offload.module.parameters():
        param.ds_active_sub_modules.clear()
    for hook in offload.forward_hooks + offload.backward_hooks:
        hook.remove()
    offload.forward_hooks, offload.backward_hooks = [], []


def _whole(value: torch.Tensor, partitioned: bool) -> torch.Tensor:
    """One state-dict tensor, whole: its fp32 master when trained; gathered when a frozen ZeRO-3 partition
    (its live, maybe bf16, value: no master copy exists); buffers are never partitioned. A collective."""
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters
    from deepspeed.utils import safe_get_full_fp32_param

    if not isinstance(value, torch.nn.Parameter):
        return value.detach()
    master = safe_get_full_fp32_param(value)
    if master is not None:
        return master
    if not partitioned:
        return value.detach()
    with GatheredParameters([value]):
        return value.detach().clone()


class DeepSpeed(Backend):
    """ZeRO-1/2: every process holds the whole parameters (`ZeRO3` partitions them too)."""

    def __init__(self, accelerator):
        super().__init__(accelerator)
        withdraw_from_transformers()

    def gradient_sync(self, module, last):
        return self.accelerator.accumulate(module)  # counts micro-batches; the engine reduces and steps

    def backward(self, losses, last):
        """The loss, made NaN on every rank when any rank's micro-batch losses of this update were not
        finite, so that the engine skips the step everywhere (a collective before the last backward)."""
        acc, loss = self.accelerator, losses[-1]
        if last:
            bad = torch.stack([(~torch.isfinite(x.detach())).any() for x in losses]).any().float()  # ()
            if float(acc.reduce(bad.to(acc.device), "sum")) > 0:
                loss = loss * float("nan")
        acc.backward(loss)

    def apply_update(self, module, optimizer, loss, guard, step):
        """The engine already clipped and stepped in the last backward, or skipped a step whose gradients
        were not finite (the norm is then inf); the guard counts and may stop."""
        applied = not optimizer.step_was_skipped
        grad_norm = float(module.get_global_grad_norm()) if applied else float("inf")
        guard.check(loss, grad_norm, step)
        return applied, grad_norm

    def full_weights(self, module):
        """The weights a DDP run would save, or None when the engine's live model already holds them
        (ZeRO-1/2 in fp32). Under bf16 the engine's model is a bf16 copy: trained tensors come from the
        fp32 master partitions. Under ZeRO-3 every tensor is a partition: trained ones come from the fp32
        master partitions, frozen ones are gathered (one collective per tensor, in state-dict order)."""
        partitioned = module.zero_optimization_partition_weights()
        if not (partitioned or module.bfloat16_enabled()):
            return None

        def whole(value):
            value = _whole(value, partitioned)
            return value.float() if value.is_floating_point() else value

        return whole_weights(module.module.state_dict(keep_vars=True), whole, self.accelerator.is_main_process)

    def save_optimizer(self, module, optimizer, output_dir, step):
        save_engine_state(self.accelerator, module, output_dir, step)
        return None

    def load_optimizer(self, module, optimizer, checkpoint):
        load_engine_state(module, checkpoint, self.accelerator.num_processes)


class ZeRO3(DeepSpeed):
    """ZeRO-3: every submodule call gathers its own parameters."""

    per_layer_collectives = True

    def outside_forward(self, module, fn):
        """Every parameter is gathered once (one collective, the same on every process) and the engine's
        per-submodule hooks are taken off until fn returns, so fn may call any submodule any number of
        times without collectives; then the hooks go back on and the parameters are partitioned again."""
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        offload = module.optimizer.parameter_offload
        with GatheredParameters(list(module.module.parameters())), torch.no_grad():
            _remove_hooks(offload)
            try:
                return fn()
            finally:
                offload._register_deepspeed_module(offload.module)  # re-records its call trace on the next forward


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


def saved_params_partitioned(checkpoint: Path) -> bool:
    """Whether ZeRO-3 wrote the checkpoint: it saves each process's parameter partition, ZeRO-1/2 one model."""
    return any((checkpoint / SUBDIR / TAG).glob("zero_pp_rank_*_model_states.pt"))


def engine_stage(engine) -> str:
    return "3" if engine.zero_optimization_partition_weights() else "1 or 2"


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
            "resume with the same number of processes, or start a new run from its weights "
            f"(model_name_or_path: {checkpoint}; the optimizer state starts anew)"
        )
    saved_stage, stage = ("3" if saved_params_partitioned(checkpoint) else "1 or 2"), engine_stage(engine)
    if (saved_stage == "3") != (stage == "3"):
        raise UserError(
            f"{checkpoint} was written under DeepSpeed ZeRO-{saved_stage} but this run uses ZeRO-{stage}; "
            "resume with the stage that wrote it"
        )
    with _safe_loads(engine):
        engine.load_checkpoint(str(checkpoint / SUBDIR), tag=TAG, load_lr_scheduler_states=False)


@contextlib.contextmanager
def _safe_loads(engine):
    """DeepSpeed's checkpoint engine unpickles with weights_only=False, which lets a crafted file run code.
    Its files need only three DeepSpeed classes besides tensors and containers: allow those, nothing else.
    (ZeRO-3's files, fp32 or bf16, hold LossScaler and ZeroStageEnum; fragment_address is ZeRO-1/2's.)"""
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
