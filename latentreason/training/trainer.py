"""The SFT loop every method shares: read top to bottom.

Per optimizer step: a global batch of `per_device_train_batch_size * world * accumulation` problems
is cut from a permutation seeded by (seed, epoch); each rank takes its slice, runs its micro-batches
(gradient sync only on the last), then clip, AdamW step, schedule step. Because the data order is a
pure function of (seed, epoch, step), resuming from a checkpoint replays exactly the same batches.
A NaN/inf loss or gradient norm skips the AdamW step (the schedule still advances); see guards.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from latentreason.data.problems import Problem
from latentreason.errors import UserError
from latentreason.evaluation.harness import EvalResult, evaluate_sharded
from latentreason.training.checkpoint import clear_run, load_training_state, save_checkpoint
from latentreason.training.config import TrainConfig
from latentreason.training.guards import NonFiniteGuard
from latentreason.training.processes import multi_process_cpu


class TrainingModule(nn.Module):
    """Model + method objective behind one forward, so DDP/FSDP see every parameter used."""

    def __init__(self, lm, method):
        super().__init__()
        self.lm = lm
        self.method = method

    def forward(self, batch: dict):
        return self.method.loss(self.lm, batch)


@dataclass
class TrainResult:
    final_dir: Path
    global_step: int
    last_metrics: dict
    eval: EvalResult | None


def mixed_precision(setting: str) -> str:
    if setting == "true":
        return "bf16"
    if setting == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


class Trainer:
    """`resume`: a complete checkpoint to continue from (`lm` must hold its weights); `run_training`
    resolves `config.resume_from_checkpoint` into it."""

    def __init__(
        self,
        config: TrainConfig,
        method,
        lm,
        train: list[Problem],
        held_out: list[Problem],
        benchmark: str = "",
        progress: bool = True,
        resume: Path | None = None,
    ):
        if not train:
            raise UserError("no training examples (check dataset / num_train_examples / max_seq_length)")
        self.config, self.method, self.lm = config, method, lm
        set_seed(config.seed)  # new heads are initialised from the global RNG: make that reproducible
        method.prepare(lm)  # heads must exist before the optimizer sees the parameters
        lm.meta["method"] = method.name
        lm.meta["method_config"] = asdict(config)  # so `latentreason eval` rebuilds the same solver
        hf_logging.disable_progress_bar()  # one progress bar (ours), not one per saved shard
        self.train_set, self.held_out, self.benchmark, self.progress = train, held_out, benchmark, progress
        self.resume = resume
        cfg = config
        self.accelerator = Accelerator(
            cpu=multi_process_cpu(),
            mixed_precision=mixed_precision(cfg.bf16),
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_dir=cfg.output_dir,
        )
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            # Checkpoints save whole parameters from the main process and the guard owns the optimizer step;
            # sharded parameters (FSDP) or DeepSpeed's own step would silently break both.
            raise UserError(
                f"{self.accelerator.distributed_type.value} is not supported by the training loop yet; "
                "launch with DDP (latentreason/configs/accelerate/ddp.yaml or torchrun)"
            )
        self.output_dir = Path(cfg.output_dir)
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

    # --- set-up ---------------------------------------------------------------------------------
    def _check_output_dir(self) -> None:
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

    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        # No weight decay on biases, norms and embeddings-sized vectors (1-D parameters).
        decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        betas = (self.config.adam_beta1, self.config.adam_beta2)
        return torch.optim.AdamW(groups, lr=self.config.learning_rate, betas=betas)

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg, acc, resume = self.config, self.accelerator, self.resume
        self._check_output_dir()
        set_seed(cfg.seed)
        module = TrainingModule(self.lm, self.method)
        optimizer = self._optimizer(module)
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, cfg.warmup_steps, self.total_steps)
        module, optimizer = acc.prepare(module, optimizer)
        state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
        if resume is not None:
            state = load_training_state(resume, optimizer.optimizer, scheduler)
            acc.print(f"resumed from {resume} at step {state['global_step']}")
        guard = NonFiniteGuard(cfg.max_nonfinite_steps, state.get("skipped_nonfinite", 0), report=acc.print)
        if cfg.report_to != "none":
            acc.init_trackers("latentreason", config=asdict(cfg))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.output_dir / "log.jsonl"
        bar = tqdm(
            total=self.total_steps,
            initial=state["global_step"],
            desc=f"train {self.method.name}",
            disable=not (self.progress and acc.is_main_process),
            dynamic_ncols=True,
        )
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
                        self._log(metrics, log_path, step)
                        shown = metrics.get("loss", math.nan)
                        bar.set_postfix(loss=f"{shown:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                        window = {"loss": 0.0, "applied": 0, "tokens": 0, "clock": time.perf_counter()}
                    if cfg.eval_steps > 0 and step % cfg.eval_steps == 0 and step < self.total_steps:
                        self._evaluate(step, log_path)
                    if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < self.total_steps:
                        self._save(optimizer, scheduler, self._state(step, epoch, step_in_epoch, guard))
                if step_in_epoch >= self.steps_per_epoch:
                    epoch, step_in_epoch = epoch + 1, 0
        finally:
            bar.close()  # also when the run stops: the error message then starts on its own line
        final_state = self._state(step, epoch, step_in_epoch, guard)
        self._save(optimizer, scheduler, final_state)
        final_dir = self._save_final()
        result = self._evaluate(step, log_path)
        acc.wait_for_everyone()  # a rank tearing down the process group while another still logs can hang
        acc.end_training()
        return TrainResult(final_dir, step, metrics, result)

    @staticmethod
    def _state(step: int, epoch: int, step_in_epoch: int, guard: NonFiniteGuard) -> dict:
        return {"global_step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "skipped_nonfinite": guard.skipped}

    def _update(self, module, optimizer, scheduler, order, step_in_epoch, guard, step):
        """One optimizer step: (mean loss or None when the update was skipped, parts, tokens, grad norm)."""
        acc, cfg = self.accelerator, self.config
        loss_sum, parts, tokens = self._optimizer_step(module, optimizer, order, step_in_epoch)
        # The mean over ranks: every rank must take the same skip decision (and it is what we log).
        loss = float(acc.reduce(torch.tensor(loss_sum, device=acc.device), "mean"))
        # max_grad_norm 0 still measures the (global) norm for the guard; clipping by inf scales by 1.
        grad_norm = float(acc.clip_grad_norm_(module.parameters(), cfg.max_grad_norm or math.inf))
        applied = guard.check(loss, grad_norm, step)
        if applied:
            optimizer.step()
        with warnings.catch_warnings():
            # After a skipped first update torch warns that the schedule moved before the optimizer: intended.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            scheduler.step()  # also after a skip: the learning rate stays a function of the step
        optimizer.zero_grad(set_to_none=True)
        return (loss if applied else None), parts, tokens, grad_norm

    def _optimizer_step(self, module, optimizer, order, step_in_epoch) -> tuple[float, dict, int]:
        """Forward/backward over this rank's micro-batches of one global batch; returns mean loss."""
        acc, accum = self.accelerator, self.config.gradient_accumulation_steps
        start = step_in_epoch * self.global_batch + acc.process_index * self.micro * accum
        loss_sum, parts, tokens = 0.0, {}, 0
        for m in range(accum):
            idx = order[start + m * self.micro : start + (m + 1) * self.micro].tolist()
            batch = self.method.collate(self.lm, [self.train_set[i] for i in idx])
            batch = {k: v.to(acc.device) if hasattr(v, "to") else v for k, v in batch.items()}
            # Gradients are all-reduced only after the last micro-batch.
            sync = contextlib.nullcontext() if m == accum - 1 else acc.no_sync(module)
            with sync:
                loss, metrics = module(batch)
                acc.backward(loss / accum)
            loss_sum += float(loss.detach()) / accum
            for key, value in metrics.items():
                parts[key] = parts.get(key, 0.0) + value / accum
            tokens += self.method.batch_tokens(batch)
        return loss_sum, parts, tokens * acc.num_processes

    # --- side effects ---------------------------------------------------------------------------
    def _log(self, metrics: dict, log_path: Path, step: int) -> None:
        if self.accelerator.is_main_process:
            with log_path.open("a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if self.config.report_to != "none":
            self.accelerator.log(metrics, step=step)

    def _evaluate(self, step: int, log_path: Path) -> EvalResult | None:
        """Every process solves its shard of the held-out problems; all get the gathered result."""
        acc = self.accelerator
        if not self.held_out:
            return None
        lm = acc.unwrap_model(self.lm)
        was_training = lm.training
        lm.eval()
        result = evaluate_sharded(
            self.method.solver(lm),
            self.held_out,
            acc,
            self.benchmark,
            self.config.eval_batch_size,
            self.config.answer_mode,
            progress=self.progress and acc.is_main_process,
        )
        lm.train(was_training)
        self._log(
            {
                "step": step,
                "eval_accuracy": result.accuracy,
                "eval_text_tokens": result.text_tokens,
                "eval_latent_tokens": result.latent_tokens,
            },
            log_path,
            step,
        )
        acc.print(f"step {step}: held-out accuracy {result.accuracy:.1%} on {result.n} problems")
        return result

    def _save(self, optimizer, scheduler, state: dict) -> None:
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.output_dir,
                state["global_step"],
                self.lm,
                optimizer.optimizer,
                scheduler,
                state,
                self.config.save_total_limit,
            )
        self.accelerator.wait_for_everyone()

    def _save_final(self) -> Path:
        final = self.output_dir / "final"
        if self.accelerator.is_main_process:
            tmp = self.output_dir / ".tmp-final"
            shutil.rmtree(tmp, ignore_errors=True)
            self.lm.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        self.accelerator.wait_for_everyone()
        return final
