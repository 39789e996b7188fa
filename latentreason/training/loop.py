"""The loop every trainer runs (SFT in trainer.py, GRPO in rl/trainer.py), read top to bottom in `train`:
resume, steps under the non-finite guard, the metrics log, held-out evaluation, checkpoints, the final
model. A trainer supplies what differs: its prepared module, optimizer and schedule (`setup`), one step
(`train_step`), what its log lines say (`summary`, `postfix`) and what an epoch's start means to its
method (`start_epoch`).

Steps run epoch by epoch over a permutation of the training set seeded by (seed, epoch); a step's data is
a pure function of (seed, epoch, step), so resuming a checkpoint replays exactly the same steps. Under
every launch (one process, DDP, FSDP, DeepSpeed ZeRO-1/2/3) the launch's backend (backends/) synchronises
gradients, applies updates, gathers the model and saves the optimizer."""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from latentreason.errors import UserError
from latentreason.evaluation.harness import EvalResult, evaluate_sharded
from latentreason.train_config import TrainConfig
from latentreason.training import backends
from latentreason.training.checkpoint import clear_run, load_training_state, save_checkpoint
from latentreason.training.guards import NonFiniteGuard, advance_schedule
from latentreason.training.outputs import append_log, save_final, trim_log


def mixed_precision(setting: str) -> str:
    if setting == "true":
        return "bf16"
    if setting == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


@dataclass
class TrainResult:
    final_dir: Path
    global_step: int
    last_metrics: dict
    eval: EvalResult | None


class TrainingLoop(abc.ABC):
    """`resume`: a complete checkpoint to continue from (`self.lm` must hold its weights). A subclass sets
    `self.method`, `self.lm`, `self.train_set` and `self.held_out` before this constructor (which starts
    the launch), `self.steps_per_epoch` and `self.total_steps` after it. `module` is the `PreparedModule`
    its `setup` handed to `accelerator.prepare`, `optimizer` accelerate's wrapper of the AdamW it built."""

    config: TrainConfig
    tracker_project: str  # the name the metrics trackers file the run under
    progress_label: str  # the progress bar's, before the method's name

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
        self.guard = NonFiniteGuard(config.max_nonfinite_steps, report=self.accelerator.print)

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.config
        self.check_output_dir()
        set_seed(cfg.seed)
        module, optimizer, scheduler = self.setup()
        state, bar = self.begin(module, optimizer, scheduler)
        step, epoch, step_in_epoch = state["global_step"], state["epoch"], state["step_in_epoch"]
        metrics: dict = {}
        since_log, log_clock = [], time.perf_counter()  # what the steps since the last log returned
        try:
            while step < self.total_steps:
                self.start_epoch(epoch, step_in_epoch, optimizer)
                order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(cfg.seed + epoch))
                while step_in_epoch < self.steps_per_epoch and step < self.total_steps:
                    since_log.append(self.train_step(module, optimizer, scheduler, order, step_in_epoch, step))
                    step, step_in_epoch = step + 1, step_in_epoch + 1
                    bar.update(1)
                    if step % cfg.logging_steps == 0 or step == self.total_steps:
                        took, lr = time.perf_counter() - log_clock, scheduler.get_last_lr()[0]
                        metrics = {"step": step, "epoch": epoch, **self.summary(since_log, took, lr)}
                        self.log(metrics, step)
                        bar.set_postfix(self.postfix(metrics))
                        since_log, log_clock = [], time.perf_counter()
                    if cfg.eval_steps > 0 and step % cfg.eval_steps == 0 and step < self.total_steps:
                        self.evaluate(module, step)
                    if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < self.total_steps:
                        self.save(module, optimizer, scheduler, self.loop_state(step, epoch, step_in_epoch))
                if step_in_epoch >= self.steps_per_epoch:
                    epoch, step_in_epoch = epoch + 1, 0
        finally:
            bar.close()  # also when the run stops: the error message then starts on its own line
        self.save(module, optimizer, scheduler, self.loop_state(step, epoch, step_in_epoch))
        final_dir = self.save_final(module)
        result = self.evaluate(module, step)
        self.end()
        return TrainResult(final_dir, step, metrics, result)

    # --- what a trainer supplies --------------------------------------------------------------
    @abc.abstractmethod
    def setup(self) -> tuple:
        """(module, optimizer, scheduler), prepared by accelerate."""

    @abc.abstractmethod
    def start_epoch(self, epoch: int, step_in_epoch: int, optimizer) -> None:
        """Before the steps of `epoch` (also of a resumed one, from `step_in_epoch` on)."""

    @abc.abstractmethod
    def train_step(self, module, optimizer, scheduler, order: torch.Tensor, step_in_epoch: int, step: int):
        """Step `step` (0-based; the `step_in_epoch`-th of the epoch whose permutation of the training set
        is `order`): its updates. Returns what `summary` needs of it."""

    @abc.abstractmethod
    def summary(self, since_log: list, seconds: float, lr: float) -> dict:
        """The log line's metrics (besides step and epoch) for the steps since the last log, which returned
        `since_log` and took `seconds`; `lr`: the learning rate now."""

    @abc.abstractmethod
    def postfix(self, metrics: dict) -> dict[str, str]:
        """What the progress bar shows of the latest log line."""

    # --- the parts ------------------------------------------------------------------------------
    def begin(self, module, optimizer, scheduler) -> tuple[dict, tqdm]:
        """The run's starting state (from the resumed checkpoint, if any), trackers, output dir, progress bar."""
        acc = self.accelerator
        state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
        if self.resume is not None:
            self.backend.load_optimizer(module, optimizer, self.resume)
            state = load_training_state(self.resume, scheduler)
            self.guard.skipped = state.get("skipped_nonfinite", 0)
            acc.print(f"resumed from {self.resume} at step {state['global_step']}")
            if self.resume_resets_optimizer():
                optimizer.optimizer.state.clear()
                acc.print("fresh LoRA adapters on the merged checkpoint: the optimizer state starts anew")
            if acc.is_main_process:
                trim_log(self.output_dir / "log.jsonl", state["global_step"])
        if self.config.report_to != "none":
            acc.init_trackers(self.tracker_project, config=asdict(self.config))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(
            total=self.total_steps,
            initial=state["global_step"],
            desc=f"{self.progress_label} {self.run_label()}",
            disable=not (self.progress and acc.is_main_process),
            dynamic_ncols=True,
        )
        return state, bar

    def loop_state(self, step: int, epoch: int, step_in_epoch: int) -> dict:
        """What a checkpoint records of the loop (trainer_state.json)."""
        return {
            "global_step": step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "skipped_nonfinite": self.guard.skipped,
        }

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

    def finish_update(self, module, optimizer, scheduler, losses: list, step: int):
        """Clip, step (unless the loss or gradient norm is not finite) and advance the schedule after the
        last micro-batch. -> (the update's loss, mean over micro-batches and ranks; applied; gradient norm
        before clipping). The loss is reduced over ranks so every rank takes the same skip decision."""
        acc = self.accelerator
        mean = sum(float(x.detach()) for x in losses) / len(losses)
        loss = float(acc.reduce(torch.tensor(mean, device=acc.device), "mean"))
        applied, grad_norm = self.backend.apply_update(module, optimizer, loss, self.guard, step)
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
                self.held_out_solver(),
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

    def resume_resets_optimizer(self) -> bool:
        """A resumed run starts fresh LoRA adapters on the merged weights: the saved optimizer state no longer
        belongs to its parameters."""
        return self.method.resume_resets_optimizer()

    def run_label(self) -> str:
        return self.method.name

    def held_out_solver(self):
        """What solves the held-out problems: the method's own solver."""
        return self.method.solver(self.lm)

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
