"""SFT for every method: what its steps are in the shared loop (loop.py).

Per optimizer step: a global batch of `per_device_train_batch_size * world * accumulation` problems
is cut from the epoch's permutation; each rank takes its slice, runs its micro-batches (gradient sync
only on the last), then clip, AdamW step, schedule step (the backend's: under DeepSpeed the engine does
the first two inside the last backward). A NaN/inf loss or gradient norm skips the AdamW step (the
schedule still advances); see guards.py. The method may reset the optimizer at an epoch or a step.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from accelerate.utils import set_seed
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from latentreason.data.problems import Problem
from latentreason.errors import UserError
from latentreason.train_config import TrainConfig
from latentreason.training.loop import TrainingLoop
from latentreason.training.prepared_module import PreparedModule


def curriculum_warning(method, steps_per_epoch: int, total_steps: int) -> str | None:
    """A sentence when the method's curriculum (Coconut's stages, iCoT's removals) does not reach its final
    layout within the run: the model would be trained, and evaluated, short of the method it names."""
    final = method.final_layout_step(steps_per_epoch)
    if final is None or final < total_steps:
        return None
    return (
        f"{method.name}'s curriculum reaches its final layout at step {final} ({steps_per_epoch} steps per epoch), "
        f"but the run stops after {total_steps} steps: raise max_steps or shorten the epochs (num_train_examples)"
    )


class TrainingModule(PreparedModule):
    """The model and the method's loss behind one forward."""

    def __init__(self, lm, method):
        super().__init__(lm)
        self.method = method

    def objective(self, batch: dict):
        return self.method.loss(self.lm, batch)


class Trainer(TrainingLoop):
    """`resume`: a complete checkpoint to continue from (`lm` must hold its weights); `run_training`
    resolves `config.resume_from_checkpoint` into it."""

    tracker_project, progress_label = "latentreason", "train"

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
        warning = curriculum_warning(method, self.steps_per_epoch, self.total_steps)
        if warning:
            self.accelerator.print(f"warning: {warning}")

    # --- the steps -----------------------------------------------------------------------------
    def setup(self):
        cfg = self.config
        module = TrainingModule(self.lm, self.method)
        optimizer = self.adamw(module.parameters())
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, cfg.warmup_steps, self.total_steps)
        module, optimizer = self.accelerator.prepare(module, optimizer)
        return module, optimizer, scheduler

    def start_epoch(self, epoch, step_in_epoch, optimizer):
        # Always tell the method the epoch (a resumed run needs its curriculum stage); a requested
        # optimizer reset applies only when the epoch really starts here.
        if self.method.start_epoch(epoch) and step_in_epoch == 0:
            optimizer.optimizer.state.clear()

    def train_step(self, module, optimizer, scheduler, order, step_in_epoch, step) -> dict:
        """One optimizer step: its loss (None when the update was skipped), parts, tokens and gradient norm."""
        if self.method.start_step(step, self.steps_per_epoch):
            optimizer.optimizer.state.clear()
        losses, parts, tokens = self._micro_batches(module, order, step_in_epoch)
        loss, applied, grad_norm = self.finish_update(module, optimizer, scheduler, losses, step + 1)
        return {"loss": loss if applied else None, "parts": parts, "tokens": tokens, "grad_norm": grad_norm}

    def summary(self, since_log, seconds, lr):
        last, losses = since_log[-1], [s["loss"] for s in since_log if s["loss"] is not None]
        metrics = {
            **last["parts"],  # the last step's parts
            "lr": lr,
            "tokens_per_s": sum(s["tokens"] for s in since_log) / max(seconds, 1e-9),
            "grad_norm": last["grad_norm"],
            "skipped_nonfinite": self.guard.skipped,  # over the whole run
        }
        if losses:  # mean over the applied updates
            metrics["loss"] = sum(losses) / len(losses)
        return metrics

    def postfix(self, metrics):
        return {"loss": f"{metrics.get('loss', math.nan):.3f}", "tok_s": f"{metrics['tokens_per_s']:.0f}"}

    def _micro_batches(self, module, order, step_in_epoch) -> tuple[list, dict, int]:
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
