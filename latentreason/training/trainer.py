"""The SFT loop every method shares: read top to bottom.

Per optimizer step: a global batch of `per_device_train_batch_size * world * accumulation` problems
is cut from a permutation seeded by (seed, epoch); each rank takes its slice, runs its micro-batches
(gradient sync only on the last), then clip, AdamW step, schedule step. Because the data order is a
pure function of (seed, epoch, step), resuming from a checkpoint replays exactly the same batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from latentreason.data.problems import Problem
from latentreason.errors import UserError
from latentreason.evaluation.harness import EvalResult, evaluate
from latentreason.training.checkpoint import load_training_state, resolve_resume, save_checkpoint
from latentreason.training.config import TrainConfig


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
    def __init__(
        self,
        config: TrainConfig,
        method,
        lm,
        train: list[Problem],
        held_out: list[Problem],
        benchmark: str = "",
        progress: bool = True,
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
        cfg = config
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision(cfg.bf16),
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_dir=cfg.output_dir,
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
    def _check_output_dir(self, resuming: bool) -> None:
        cfg = self.config
        existing = self.output_dir.is_dir() and any(self.output_dir.iterdir())
        if existing and not resuming and not cfg.overwrite_output_dir:
            raise UserError(
                f"output_dir {self.output_dir} is not empty; pass resume_from_checkpoint=auto to continue it "
                f"or overwrite_output_dir=true to train into it anyway"
            )

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
        cfg, acc = self.config, self.accelerator
        resume = resolve_resume(self.output_dir, cfg.resume_from_checkpoint)
        if acc.is_main_process:
            self._check_output_dir(resuming=resume is not None)
        set_seed(cfg.seed)
        module = TrainingModule(self.lm, self.method)
        optimizer = self._optimizer(module)
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, cfg.warmup_steps, self.total_steps)
        module, optimizer = acc.prepare(module, optimizer)
        state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
        if resume is not None:
            state = load_training_state(resume, optimizer.optimizer, scheduler)
            acc.print(f"resumed from {resume} at step {state['global_step']}")
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
        window = {"loss": 0.0, "steps": 0, "tokens": 0, "clock": time.perf_counter()}  # since the last log
        step, epoch, step_in_epoch = state["global_step"], state["epoch"], state["step_in_epoch"]
        while step < self.total_steps:
            # Always tell the method the epoch (a resumed run needs its curriculum stage); a requested
            # optimizer reset applies only when the epoch really starts here.
            if self.method.start_epoch(epoch) and step_in_epoch == 0:
                optimizer.optimizer.state.clear()
            order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(cfg.seed + epoch))
            while step_in_epoch < self.steps_per_epoch and step < self.total_steps:
                if self.method.start_step(step, self.steps_per_epoch):
                    optimizer.optimizer.state.clear()
                loss_sum, parts, tokens = self._optimizer_step(module, optimizer, order, step_in_epoch)
                grad_norm = (
                    acc.clip_grad_norm_(module.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step, step_in_epoch = step + 1, step_in_epoch + 1
                window["loss"] += loss_sum
                window["steps"] += 1
                window["tokens"] += tokens
                bar.update(1)
                if step % cfg.logging_steps == 0 or step == self.total_steps:
                    took = time.perf_counter() - window["clock"]
                    metrics = {
                        "step": step,
                        "epoch": epoch,
                        "loss": window["loss"] / window["steps"],  # mean over the logging window
                        **parts,  # the last step's parts
                        "lr": scheduler.get_last_lr()[0],
                        "tokens_per_s": window["tokens"] / max(took, 1e-9),
                    }
                    if grad_norm is not None:
                        metrics["grad_norm"] = float(grad_norm)
                    self._log(metrics, log_path, step)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                    window = {"loss": 0.0, "steps": 0, "tokens": 0, "clock": time.perf_counter()}
                if cfg.eval_steps > 0 and step % cfg.eval_steps == 0 and step < self.total_steps:
                    self._evaluate(step, log_path)
                if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < self.total_steps:
                    self._save(
                        optimizer, scheduler, {"global_step": step, "epoch": epoch, "step_in_epoch": step_in_epoch}
                    )
            if step_in_epoch >= self.steps_per_epoch:
                epoch, step_in_epoch = epoch + 1, 0
        bar.close()
        final_state = {"global_step": step, "epoch": epoch, "step_in_epoch": step_in_epoch}
        self._save(optimizer, scheduler, final_state)
        final_dir = self._save_final()
        result = self._evaluate(step, log_path) if self.held_out else None
        acc.end_training()
        return TrainResult(final_dir, step, metrics, result)

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
        acc = self.accelerator
        result = None
        if acc.is_main_process and self.held_out:
            lm = acc.unwrap_model(self.lm)
            was_training = lm.training
            lm.eval()
            result = evaluate(
                self.method.solver(lm),
                self.held_out,
                self.benchmark,
                self.config.eval_batch_size,
                self.config.answer_mode,
                progress=self.progress,
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
        acc.wait_for_everyone()
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
