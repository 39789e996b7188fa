"""What every training loop (SFT and RL) shares: accelerate set-up (DDP or FSDP, see sharding.py), the
output directory rules, AdamW, the metrics log, sharded held-out evaluation, checkpoints and the final
model."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from latentreason.errors import UserError
from latentreason.evaluation.harness import EvalResult, evaluate_sharded
from latentreason.training.checkpoint import clear_run, load_training_state, save_checkpoint
from latentreason.training.config import TrainConfig
from latentreason.training.outputs import append_log, save_final, trim_log
from latentreason.training.processes import multi_process_cpu
from latentreason.training.sharding import (
    check_launch,
    enable_fsdp_on_cpu,
    full_optimizer_state,
    full_weights,
    outside_forward,
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
        self.accelerator = Accelerator(
            cpu=multi_process_cpu(),
            mixed_precision=mixed_precision(config.bf16),
            log_with=None if config.report_to == "none" else config.report_to,
            project_dir=config.output_dir,
        )
        enable_fsdp_on_cpu(self.accelerator)
        check_launch(self.accelerator, self.lm)

    def begin(self, optimizer, scheduler, tracker: str, desc: str) -> tuple[dict, tqdm]:
        """The run's starting state (from the resumed checkpoint, if any), trackers, output dir, progress bar."""
        acc = self.accelerator
        state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
        if self.resume is not None:
            state = load_training_state(self.resume, optimizer.optimizer, scheduler)
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
        result = outside_forward(
            acc,
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
        # Under FSDP every process gathers the shards; the main process writes the whole tensors.
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
        weights = full_weights(self.accelerator, module)
        if self.accelerator.is_main_process:
            save_final(self.lm, self.output_dir, weights)
        self.accelerator.wait_for_everyone()
        return self.output_dir / "final"

    def end(self) -> None:
        """Finish the trackers once every rank is done. The process group stays up (it goes with the
        process): gloo's teardown, racing a rank that already left, hung a two-process run now and then."""
        self.accelerator.wait_for_everyone()
        for tracker in self.accelerator.trackers:
            tracker.finish()
