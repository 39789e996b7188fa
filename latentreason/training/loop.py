"""What every training loop (SFT and RL) shares: accelerate set-up (DDP, FSDP (see sharding.py) or
DeepSpeed ZeRO-1/2/3 (see deepspeed.py)), the micro-batch / update pattern, the output directory rules,
AdamW, the metrics log, sharded held-out evaluation, checkpoints and the final model."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from latentreason.engine.lockstep import lockstep
from latentreason.errors import UserError
from latentreason.evaluation.harness import EvalResult, evaluate_sharded
from latentreason.train_config import TrainConfig
from latentreason.training import deepspeed
from latentreason.training.checkpoint import clear_run, load_training_state, save_checkpoint
from latentreason.training.guards import NonFiniteGuard, advance_schedule
from latentreason.training.outputs import append_log, save_final, trim_log
from latentreason.training.processes import multi_process_cpu
from latentreason.training.sharding import (
    check_launch,
    enable_fsdp_on_cpu,
    full_optimizer_state,
    full_weights,
    max_over_processes,
    sharded_per_layer,
)
from latentreason.training.sharding import (
    outside_forward as fsdp_outside_forward,
)


def mixed_precision(setting: str) -> str:
    if setting == "true":
        return "bf16"
    if setting == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


class TrainingLoop:
    """Subclasses set `self.lm`, `self.method`, `self.held_out`, `self.total_steps` and run their own loop
    with these parts; `module` is the `PreparedModule` they handed to `accelerator.prepare`."""

    config: TrainConfig

    def __init__(self, config: TrainConfig, resume: Path | None, progress: bool):
        self.config, self.resume, self.progress = config, resume, progress
        self.output_dir = Path(config.output_dir)
        precision = mixed_precision(config.bf16)
        if deepspeed.requested():
            launch = deepspeed.accelerator_kwargs(config, precision, self.lm.model.config.hidden_size)
        else:
            launch = {"cpu": multi_process_cpu()}
        self.accelerator = Accelerator(
            mixed_precision=precision,
            log_with=None if config.report_to == "none" else config.report_to,
            project_dir=config.output_dir,
            **launch,
        )
        self.deepspeed = deepspeed.active(self.accelerator)
        if self.deepspeed:
            deepspeed.withdraw_from_transformers()
        enable_fsdp_on_cpu(self.accelerator)
        check_launch(self.accelerator, self.lm)
        # Sharded per layer (FSDP auto-wrap) or per submodule (ZeRO-3), every call gathers: the training
        # passes run as much as the busiest process (engine/lockstep.py).
        self.per_layer = sharded_per_layer(self.accelerator) or deepspeed.zero3(self.accelerator)

    def begin(self, module, optimizer, scheduler, tracker: str, desc: str) -> tuple[dict, tqdm]:
        """The run's starting state (from the resumed checkpoint, if any), trackers, output dir, progress bar."""
        acc = self.accelerator
        state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
        if self.resume is not None:
            if self.deepspeed:
                deepspeed.load_engine_state(module, self.resume, acc.num_processes)
            state = load_training_state(self.resume, None if self.deepspeed else optimizer.optimizer, scheduler)
            acc.print(f"resumed from {self.resume} at step {state['global_step']}")
            if acc.is_main_process:
                trim_log(self.output_dir / "log.jsonl", state["global_step"])
        if self.config.report_to != "none":
            acc.init_trackers(tracker, config=asdict(self.config))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(
            total=self.total_steps,
            initial=state["global_step"],
            desc=desc,
            disable=not (self.progress and acc.is_main_process),
            dynamic_ncols=True,
        )
        return state, bar

    def check_output_dir(self) -> None:
        # Every rank checks (before the first collective), so a refusal stops all of them alike.
        existing = self.output_dir.is_dir() and any(self.output_dir.iterdir())
        if not existing or self.resume is not None:
            return
        if not self.config.overwrite_output_dir:
            raise UserError(
                f"output_dir {self.output_dir} is not empty; pass resume_from_checkpoint=auto to continue it "
                f"or overwrite_output_dir=true to train into it anyway"
            )
        if self.accelerator.is_main_process:
            clear_run(self.output_dir)  # old checkpoints would otherwise outrank (and rotate out) the new ones

    def adamw(self, parameters) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters; no weight decay on 1-D ones (biases, norms)."""
        trainable = [p for p in parameters if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": self.config.weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        betas = (self.config.adam_beta1, self.config.adam_beta2)
        return torch.optim.AdamW(groups, lr=self.config.learning_rate, betas=betas)

    # --- one update: accumulation micro-batches, then the step ------------------------------------
    @contextlib.contextmanager
    def micro_batch(self, module, last: bool):
        """The context of one micro-batch's forward and backward: gradients are reduced after the last.
        Sharded per layer, the engine pads its data-dependent call counts to the processes' largest."""
        if self.deepspeed:
            reduction = self.accelerator.accumulate(module)  # counts micro-batches; the engine reduces and steps
        else:
            reduction = contextlib.nullcontext() if last else self.accelerator.no_sync(module)
        with reduction, lockstep(max_over_processes) if self.per_layer else contextlib.nullcontext():
            yield

    def backward(self, losses: list[torch.Tensor], last: bool) -> None:
        """Backward of the latest of this update's micro-batch `losses` (the update's mean is the objective).
        DeepSpeed divides by the accumulation steps itself, and steps inside the last backward."""
        acc, loss = self.accelerator, losses[-1]
        if not self.deepspeed:
            acc.backward(loss / self.config.gradient_accumulation_steps)
            return
        acc.backward(deepspeed.poison_if_any_nonfinite(acc, losses, loss) if last else loss)

    def finish_update(self, module, optimizer, scheduler, guard: NonFiniteGuard, losses: list, step: int):
        """Clip, step (unless the loss or gradient norm is not finite) and advance the schedule after the
        last micro-batch. -> (the update's loss, mean over micro-batches and ranks; applied; gradient norm
        before clipping). The loss is reduced over ranks so every rank takes the same skip decision."""
        acc = self.accelerator
        mean = sum(float(x.detach()) for x in losses) / len(losses)
        loss = float(acc.reduce(torch.tensor(mean, device=acc.device), "mean"))
        if self.deepspeed:  # the engine already clipped and stepped, or skipped; the guard counts and may stop
            applied, grad_norm = deepspeed.step_result(optimizer, module)
            guard.check(loss, grad_norm, step)
        else:
            # max_grad_norm 0 still measures the (global) norm for the guard; clipping by inf scales by 1.
            grad_norm = float(acc.clip_grad_norm_(module.parameters(), self.config.max_grad_norm or math.inf))
            applied = guard.check(loss, grad_norm, step)
            if applied:
                optimizer.step()
        advance_schedule(scheduler)
        optimizer.zero_grad(set_to_none=True)
        return loss, applied, grad_norm

    def outside_forward(self, module, fn):
        """fn() without gradients where it may call the model directly (evaluation, RL sampling and scoring):
        on the whole model, without per-layer collectives, under every launch."""
        if deepspeed.zero3(self.accelerator):
            return deepspeed.outside_forward(module, fn)
        return fsdp_outside_forward(self.accelerator, module, fn)

    def log(self, metrics: dict, step: int) -> None:
        if self.accelerator.is_main_process:
            append_log(self.output_dir / "log.jsonl", metrics)
        if self.config.report_to != "none":
            self.accelerator.log(metrics, step=step)

    def evaluate(self, module, step: int) -> EvalResult | None:
        """Every process solves its shard of the held-out problems; all get the gathered result."""
        acc, lm = self.accelerator, self.lm
        if not self.held_out:
            return None
        was_training = lm.training
        lm.eval()
        result = self.outside_forward(
            module,
            lambda: evaluate_sharded(
                self.method.solver(lm),
                self.held_out,
                acc,
                self.config.dataset,
                self.config.eval_batch_size,
                self.config.answer_mode,
                progress=self.progress and acc.is_main_process,
            ),
        )
        lm.train(was_training)
        self.log(
            {
                "step": step,
                "eval_accuracy": result.accuracy,
                "eval_text_tokens": result.text_tokens,
                "eval_latent_tokens": result.latent_tokens,
            },
            step,
        )
        acc.print(
            f"step {step}: held-out accuracy {result.accuracy:.1%} on {result.n} problems, "
            f"{result.latent_tokens:.1f} latents and {result.text_tokens:.1f} reasoning tokens per problem"
        )
        return result

    def save(self, module, optimizer, scheduler, state: dict) -> None:
        acc = self.accelerator
        if self.deepspeed:  # every rank writes its optimizer partition into the temporary directory
            deepspeed.save_engine_state(acc, module, self.output_dir, state["global_step"])
            weights, optimizer_state = deepspeed.full_weights(acc, module), None
        else:  # under FSDP every process gathers the shards; the main process writes the whole tensors
            weights, optimizer_state = full_weights(acc, module), full_optimizer_state(acc, optimizer.optimizer)
        if acc.is_main_process:
            save_checkpoint(
                self.output_dir,
                state["global_step"],
                self.lm,
                optimizer_state,
                scheduler,
                state,
                self.config.save_total_limit,
                weights,
            )
        acc.wait_for_everyone()

    def save_final(self, module) -> Path:
        acc = self.accelerator
        weights = deepspeed.full_weights(acc, module) if self.deepspeed else full_weights(acc, module)
        if acc.is_main_process:
            save_final(self.lm, self.output_dir, weights)
        acc.wait_for_everyone()
        return self.output_dir / "final"

    def end(self) -> None:
        """Finish the trackers once every rank is done. The process group stays up: the command line leaves
        it without tearing gloo down (`processes.leave_process_group`)."""
        self.accelerator.wait_for_everyone()
        for tracker in self.accelerator.trackers:
            tracker.finish()
