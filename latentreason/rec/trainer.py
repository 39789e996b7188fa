"""Training a recommender in the shared loop (training/loop.py): checkpoints, exact resume, logging and the
schedule are the loop's. What differs: a step's data (windows of user histories, every position predicting
its next item), the objective (cross-entropy over all items, plus PLR's stream regulariser) and the held-out
measure, validation NDCG@10 over all items, whose best value keeps its model in output_dir/best; after
`patience` evaluations without a better one the run stops early (not before `min_epochs`)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import get_scheduler

from latentreason.errors import UserError
from latentreason.rec.config import RecConfig
from latentreason.rec.evaluate import rank_split
from latentreason.rec.model import META_FILE, Recommender
from latentreason.rec.reasoning import stream_similarity
from latentreason.rec.split import LeaveOneOut
from latentreason.training.loop import TrainingLoop
from latentreason.training.outputs import publish
from latentreason.training.prepared_module import PreparedModule

BEST_DIR = "best"
SELECTED_BY = "ndcg@10"


@dataclass(frozen=True)
class RecMethod:
    """What the loop asks of a method: its name (progress bar) and whether a resume drops the optimizer state."""

    name: str

    def resume_resets_optimizer(self) -> bool:
        return False


class RecObjective(PreparedModule):
    def __init__(self, model: Recommender, diversity_weight: float, fast_loss_weight: float):
        super().__init__(model)
        self.diversity_weight, self.fast_loss_weight = diversity_weight, fast_loss_weight

    def objective(self, histories: torch.Tensor, following: torch.Tensor):
        """histories, following [B, L]: every real position predicts the item after it. -> (loss, parts)."""
        reasoned = self.lm.represent(histories, every_position=True)
        scores = self.lm.item_scores(reasoned.final)  # [B, L, N + 1]
        ce = F.cross_entropy(scores.flatten(0, 1), following.flatten(), ignore_index=0)
        real = following > 0  # [B, L]
        similarity = stream_similarity(reasoned.streams[real])  # over [K, M, d]
        loss = ce + self.diversity_weight * similarity
        parts = {"ce": float(ce.detach()), "stream_similarity": float(similarity.detach())}
        if self.fast_loss_weight:  # the encoder's state supervised directly, as ReaRec's progressive loss does
            fast_scores = self.lm.item_scores(reasoned.fast)  # [B, L, N + 1]
            fast_ce = F.cross_entropy(fast_scores.flatten(0, 1), following.flatten(), ignore_index=0)
            loss = loss + self.fast_loss_weight * fast_ce
            parts["fast_ce"] = float(fast_ce.detach())
        return loss, parts


class RecTrainer(TrainingLoop):
    tracker_project, progress_label = "latentreason-rec", "rec"

    def __init__(self, config: RecConfig, model: Recommender, split: LeaveOneOut, progress=True, resume=None):
        self.method, self.lm, self.split = RecMethod(config.model), model, split
        self.train_set = split.train_examples()
        if not len(self.train_set):
            raise UserError(f"{config.dataset}: no training windows (every user needs more than 3 interactions)")
        super().__init__(config, resume, progress)
        self.micro = config.per_device_train_batch_size
        self.global_batch = self.micro * self.accelerator.num_processes * config.gradient_accumulation_steps
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.train_set)} training windows are fewer than one global batch of {self.global_batch} "
                "(per_device_train_batch_size x processes x gradient_accumulation_steps)"
            )
        epochs = math.ceil(config.num_train_epochs * self.steps_per_epoch)
        self.total_steps = config.max_steps if config.max_steps > 0 else epochs
        self.best, self.best_step = self.resumed_best() if resume is not None else (-1.0, 0)

    def resumed_best(self) -> tuple[float, int]:
        """The best validation score the stopped run kept in output_dir/best, and its step."""
        meta = self.output_dir / BEST_DIR / META_FILE
        if not meta.is_file():
            return -1.0, 0
        selected = json.loads(meta.read_text())["selected"]
        return selected[SELECTED_BY], selected["step"]

    def setup(self):
        cfg = self.config
        optimizer = self.adamw(self.lm.parameters())
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, cfg.warmup_steps, self.total_steps)
        objective = RecObjective(self.lm, cfg.diversity_weight, cfg.fast_loss_weight)
        module, optimizer = self.accelerator.prepare(objective, optimizer)
        return module, optimizer, scheduler

    def start_epoch(self, epoch, step_in_epoch, optimizer):
        """Nothing: no curriculum."""

    def train_step(self, module, optimizer, scheduler, order, step_in_epoch, step) -> dict:
        acc, accum = self.accelerator, self.config.gradient_accumulation_steps
        start = step_in_epoch * self.global_batch + acc.process_index * self.micro * accum
        losses, parts = [], {}
        for m in range(accum):
            rows = order[start + m * self.micro : start + (m + 1) * self.micro]
            histories, following = (t.to(acc.device) for t in self.split.batch(self.train_set[rows]))
            with self.backend.micro_batch(module, last=m == accum - 1):
                loss, step_parts = module(histories, following)
                losses.append(loss)
                self.backend.backward(losses, last=m == accum - 1)
            for key, value in step_parts.items():
                parts[key] = parts.get(key, 0.0) + value / accum
        loss, applied, grad_norm = self.finish_update(module, optimizer, scheduler, losses, step + 1)
        return {"loss": loss if applied else None, "grad_norm": grad_norm, **parts}

    def summary(self, since_log, seconds, lr):
        losses = [s["loss"] for s in since_log if s["loss"] is not None]
        metrics = {"lr": lr, "grad_norm": since_log[-1]["grad_norm"], "skipped_nonfinite": self.guard.skipped}
        metrics.update({k: since_log[-1][k] for k in ("ce", "stream_similarity", "fast_ce") if k in since_log[-1]})
        metrics["steps_per_s"] = len(since_log) / max(seconds, 1e-9)
        if losses:
            metrics["loss"] = sum(losses) / len(losses)
        return metrics

    def postfix(self, metrics):
        return {"loss": f"{metrics.get('loss', math.nan):.3f}"}

    def evaluate(self, module, step: int) -> dict:
        """Validation metrics over all items; a new best NDCG@10 replaces output_dir/best, and `patience`
        evaluations without one end the run (the loop stops at total_steps)."""
        result = self.backend.outside_forward(
            module, lambda: rank_split(self.lm, self.split, self.config.eval_split, self.config.eval_batch_size)
        )
        self.log({"step": step, **{f"eval_{k}": v for k, v in result.items()}}, step)
        self.accelerator.print(
            f"step {step}: validation NDCG@10 {result['ndcg@10']:.4f}, Recall@10 {result['recall@10']:.4f}"
        )
        if result[SELECTED_BY] > self.best:
            self.best, self.best_step = result[SELECTED_BY], step
            self.save_best(module, step, result)
        patience = self.config.patience * self.config.eval_steps
        warm = step >= self.config.min_epochs * self.steps_per_epoch
        if patience and warm and step - self.best_step >= patience and step < self.total_steps:
            self.accelerator.print(f"no better validation {SELECTED_BY} since step {self.best_step}: stopping")
            self.total_steps = step
        return result

    def save_best(self, module, step: int, result: dict) -> None:
        weights = self.backend.full_weights(module)
        if self.accelerator.is_main_process:
            tmp = self.output_dir / f".tmp-{BEST_DIR}"
            shutil.rmtree(tmp, ignore_errors=True)
            self.lm.meta["selected"] = {"step": step, **result}
            self.lm.save_pretrained(tmp, state_dict=weights)
            del self.lm.meta["selected"]
            publish(tmp, self.output_dir / BEST_DIR)
        self.accelerator.wait_for_everyone()
