"""The SFT loop every method shares: read top to bottom.

Per optimizer step: a global batch of `per_device_train_batch_size * world * accumulation` problems
is cut from a permutation seeded by (seed, epoch); each rank takes its slice, runs its micro-batches
(gradient sync only on the last), then clip, AdamW step, schedule step (loop.py's hooks: under
DeepSpeed the engine does the last three inside the last backward). Because the data order is a
pure function of (seed, epoch, step), resuming from a checkpoint replays exactly the same batches.
A NaN/inf loss or gradient norm skips the AdamW step (the schedule still advances); see guards.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from latentreason.data.problems import Problem
from latentreason.errors import UserError
from latentreason.evaluation.harness import EvalResult
from latentreason.training.config import TrainConfig
from latentreason.training.guards import NonFiniteGuard
from latentreason.training.loop import TrainingLoop
from latentreason.training.prepared_module import PreparedModule


class TrainingModule(PreparedModule):
    """The model and the method's loss behind one forward."""

    def __init__(self, lm, method):
        super().__init__(lm)
        self.method = method

    def objective(self, batch: dict):
        return self.method.loss(self.lm, batch)


@dataclass
class TrainResult:
    final_dir: Path
    global_step: int
    last_metrics: dict
    eval: EvalResult | None


class Trainer(TrainingLoop):
    """`resume`: a complete checkpoint to continue from (`lm` must hold its weights); `run_training`
    resolves `config.resume_from_checkpoint` into it."""

    def __init__(
        self,
        config: TrainConfig,
        method,
        lm,
        train: list[Problem],
        held_out: list[Problem],
        progress: bool = True,
        resume: Path | None = None,
    ):
        if not train:
            raise UserError("no training examples (check dataset / num_train_examples / max_seq_length)")
        self.method, self.lm = method, lm
        set_seed(config.seed)  # new heads are initialised from the global RNG: make that reproducible
        method.prepare(lm)  # heads must exist before the optimizer sees the parameters
        lm.meta["method"] = method.name
        lm.meta["method_config"] = asdict(config)  # so `latentreason eval` rebuilds the same solver
        hf_logging.disable_progress_bar()  # one progress bar (ours), not one per saved shard
        self.train_set, self.held_out = train, held_out
        super().__init__(config, resume, progress)
        cfg = config
        world = self.accelerator.num_processes
        self.micro = cfg.per_device_train_batch_size
        self.global_batch = self.micro * world * cfg.gradient_accumulation_steps
        self.steps_per_epoch = len(train) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(train)} training examples are fewer than one global batch of {self.global_batch} "
                f"(per_device_train_batch_size x processes x gradient_accumulation_steps)"
            )
        if cfg.max_steps > 0:
            self.total_steps = cfg.max_steps
        else:
            self.total_steps = math.ceil(cfg.num_train_epochs * self.steps_per_epoch)

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg, acc, resume = self.config, self.accelerator, self.resume
        self.check_output_dir()
        set_seed(cfg.seed)
        module = TrainingModule(self.lm, self.method)
        optimizer = self.adamw(module.parameters())
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, cfg.warmup_steps, self.total_steps)
        module, optimizer = acc.prepare(module, optimizer)
        state, bar = self.begin(module, optimizer, scheduler, "latentreason", f"train {self.method.name}")
        if resume is not None and self.method.resume_resets_optimizer():
            optimizer.optimizer.state.clear()
            acc.print("fresh LoRA adapters on the merged checkpoint: the optimizer state starts anew")
        guard = NonFiniteGuard(cfg.max_nonfinite_steps, state.get("skipped_nonfinite", 0), report=acc.print)
        metrics: dict = {}
        window = {"loss": 0.0, "applied": 0, "tokens": 0, "clock": time.perf_counter()}  # since the last log
        step, epoch, step_in_epoch = state["global_step"], state["epoch"], state["step_in_epoch"]
        try:
            while step < self.total_steps:
                # Always tell the method the epoch (a resumed run needs its curriculum stage); a requested
                # optimizer reset applies only when the epoch really starts here.
                if self.method.start_epoch(epoch) and step_in_epoch == 0:
                    optimizer.optimizer.state.clear()
                order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(cfg.seed + epoch))
                while step_in_epoch < self.steps_per_epoch and step < self.total_steps:
                    if self.method.start_step(step, self.steps_per_epoch):
                        optimizer.optimizer.state.clear()
                    loss, parts, tokens, grad_norm = self._update(
                        module, optimizer, scheduler, order, step_in_epoch, guard, step + 1
                    )
                    step, step_in_epoch = step + 1, step_in_epoch + 1
                    if loss is not None:
                        window["loss"] += loss
                        window["applied"] += 1
                    window["tokens"] += tokens
                    bar.update(1)
                    if step % cfg.logging_steps == 0 or step == self.total_steps:
                        took = time.perf_counter() - window["clock"]
                        metrics = {
                            "step": step,
                            "epoch": epoch,
                            **parts,  # the last step's parts
                            "lr": scheduler.get_last_lr()[0],
                            "tokens_per_s": window["tokens"] / max(took, 1e-9),
                            "grad_norm": grad_norm,
                            "skipped_nonfinite": guard.skipped,  # over the whole run
                        }
                        if window["applied"]:  # mean over the window's applied updates
                            metrics["loss"] = window["loss"] / window["applied"]
                        self.log(metrics, step)
                        shown = metrics.get("loss", math.nan)
                        bar.set_postfix(loss=f"{shown:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                        window = {"loss": 0.0, "applied": 0, "tokens": 0, "clock": time.perf_counter()}
                    if cfg.eval_steps > 0 and step % cfg.eval_steps == 0 and step < self.total_steps:
                        self.evaluate(module, step)
                    if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < self.total_steps:
                        self.save(module, optimizer, scheduler, self._state(step, epoch, step_in_epoch, guard))
                if step_in_epoch >= self.steps_per_epoch:
                    epoch, step_in_epoch = epoch + 1, 0
        finally:
            bar.close()  # also when the run stops: the error message then starts on its own line
        final_state = self._state(step, epoch, step_in_epoch, guard)
        self.save(module, optimizer, scheduler, final_state)
        final_dir = self.save_final(module)
        result = self.evaluate(module, step)
        self.end()
        return TrainResult(final_dir, step, metrics, result)

    @staticmethod
    def _state(step: int, epoch: int, step_in_epoch: int, guard: NonFiniteGuard) -> dict:
        return {"global_step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "skipped_nonfinite": guard.skipped}

    def _update(self, module, optimizer, scheduler, order, step_in_epoch, guard, step):
        """One optimizer step: (mean loss or None when the update was skipped, parts, tokens, grad norm)."""
        losses, parts, tokens = self._optimizer_step(module, optimizer, order, step_in_epoch)
        loss, applied, grad_norm = self.finish_update(module, optimizer, scheduler, guard, losses, step)
        return (loss if applied else None), parts, tokens, grad_norm

    def _optimizer_step(self, module, optimizer, order, step_in_epoch) -> tuple[list, dict, int]:
        """Forward/backward over this rank's micro-batches of one global batch: (their losses, parts, tokens)."""
        acc, accum = self.accelerator, self.config.gradient_accumulation_steps
        start = step_in_epoch * self.global_batch + acc.process_index * self.micro * accum
        losses, parts, tokens = [], {}, 0
        for m in range(accum):
            idx = order[start + m * self.micro : start + (m + 1) * self.micro].tolist()
            batch = self.method.collate(self.lm, [self.train_set[i] for i in idx])
            batch = {k: v.to(acc.device) if hasattr(v, "to") else v for k, v in batch.items()}
            with self.backend.micro_batch(module, last=m == accum - 1):
                loss, metrics = module(batch)
                losses.append(loss)
                self.backend.backward(losses, last=m == accum - 1)
            for key, value in metrics.items():
                parts[key] = parts.get(key, 0.0) + value / accum
            tokens += self.method.batch_tokens(batch)
        return losses, parts, tokens * acc.num_processes
