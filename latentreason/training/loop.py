"""What every training loop (SFT and RL) shares: accelerate set-up and the launch's backend (one process,
DDP, FSDP or DeepSpeed ZeRO-1/2/3, see backends/), the update pattern, the output directory rules, AdamW,
the metrics log, sharded held-out evaluation, checkpoints and the final model."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from latentreason.errors import UserError
from latentreason.evaluation.harness import EvalResult, evaluate_sharded
from latentreason.training import backends
from latentreason.training.checkpoint import clear_run, load_training_state, save_checkpoint
from latentreason.training.config import TrainConfig
from latentreason.training.guards import NonFiniteGuard, advance_schedule
from latentreason.training.outputs import append_log, save_final, trim_log


def mixed_precision(setting: str) -> str:
    if setting == "true":
        return "bf16"
    if setting == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


class TrainingLoop:
    """Subclasses set `self.lm`, `self.method`, `self.held_out`, `self.total_steps` and run their own loop
    with these parts and the launch's `self.backend`; `module` is the `PreparedModule` they handed to
    `accelerator.prepare`."""

    config: TrainConfig

    def __init__(self, config: TrainConfig, resume: Path | None, progress: bool):
        self.config, self.resume, self.progress = config, resume, progress
        self.output_dir = Path(config.output_dir)
        precision = mixed_precision(config.bf16)
        self.accelerator = Accelerator(
            mixed_precision=precision,
            log_with=None if config.report_to == "none" else config.report_to,
            project_dir=config.output_dir,
            **backends.accelerator_kwargs(config, precision, self.lm.model.config.hidden_size),
        )
        self.backend = backends.select(self.accelerator, config, self.lm)

    def begin(self, module, optimizer, scheduler, tracker: str, desc: str) -> tuple[dict, tqdm]:
        """The run's starting state (from the resumed checkpoint, if any), trackers, output dir, progress bar."""
        acc = self.accelerator
        state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
        if self.resume is not None:
            self.backend.load_optimizer(module, optimizer, self.resume)
            state = load_training_state(self.resume, scheduler)
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

    def finish_update(self, module, optimizer, scheduler, guard: NonFiniteGuard, losses: list, step: int):
        """Clip, step (unless the loss or gradient norm is not finite) and advance the schedule after the
        last micro-batch. -> (the update's loss, mean over micro-batches and ranks; applied; gradient norm
        before clipping). The loss is reduced over ranks so every rank takes the same skip decision."""
        acc = self.accelerator
        mean = sum(float(x.detach()) for x in losses) / len(losses)
        loss = float(acc.reduce(torch.tensor(mean, device=acc.device), "mean"))
        applied, grad_norm = self.backend.apply_update(module, optimizer, loss, guard, step)
        advance_schedule(scheduler)
        optimizer.zero_grad(set_to_none=True)
        return loss, applied, grad_norm

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
        result = self.backend.outside_forward(
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
        optimizer_state = self.backend.save_optimizer(module, optimizer, self.output_dir, state["global_step"])
        weights = self.backend.full_weights(module)
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
        weights = self.backend.full_weights(module)
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
