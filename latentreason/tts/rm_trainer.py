"""Training LatentRM in the shared loop (training/loop.py): checkpoints, resume, logging and the schedule are
the loop's; what differs is the data (labelled questions, made once before training), one step's loss
(`step_softmax_loss` averaged over a micro-batch of questions) and the held-out measure, recall@1, whose
best value so far also keeps its model in output_dir/best (the checkpoint LatentTTS selects)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import get_scheduler

from latentreason.errors import UserError
from latentreason.model.latent_lm import META_FILE
from latentreason.training.loop import TrainingLoop
from latentreason.training.outputs import publish
from latentreason.training.prepared_module import PreparedModule
from latentreason.tts.reward_model import LatentRM
from latentreason.tts.rm_config import RMConfig
from latentreason.tts.rm_labels import QuestionLabels
from latentreason.tts.rm_objective import chance_recall_at_1, recall_at_1, step_softmax_loss

BEST_DIR = "best"


@dataclass
class RecallResult:
    """The held-out measure of one evaluation (what `TrainResult.eval` holds for this trainer)."""

    recall_at_1: float
    n: int  # held-out questions with both right and wrong trajectories


class RMLossModule(PreparedModule):
    def __init__(self, rm: LatentRM):
        super().__init__(rm.lm)
        self.rm = rm

    def objective(self, questions: list[QuestionLabels]):
        device = self.rm.lm.device
        losses = []
        for q in questions:
            prompts = [q.prompt] * len(q.correct)
            scores = self.rm.step_scores(prompts, q.latents, q.num_latents)  # [K, N]
            losses.append(step_softmax_loss(scores, q.values.to(device), q.mask.to(device)))
        return torch.stack(losses).mean()


class RMTrainer(TrainingLoop):
    tracker_project, progress_label = "latentreason-rm", "train-rm"

    def __init__(
        self,
        config: RMConfig,
        method,
        rm: LatentRM,
        train: list[QuestionLabels],
        held_out: list[QuestionLabels],
        progress: bool = True,
        resume: Path | None = None,
    ):
        if not train:
            raise UserError("no training question has both right and wrong trajectories: nothing to rank")
        self.method, self.rm, self.lm = method, rm, rm.lm  # method: the rated model's (its name, resume rule)
        self.train_set, self.held_out = train, held_out
        rm.lm.requires_grad_(config.train_backbone)
        rm.head.requires_grad_(True)
        rm.lm.meta["rm_config"] = asdict(config)
        super().__init__(config, resume, progress)
        self.micro = config.per_device_train_batch_size
        self.global_batch = self.micro * self.accelerator.num_processes * config.gradient_accumulation_steps
        self.steps_per_epoch = len(train) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(train)} labelled training questions are fewer than one global batch of {self.global_batch} "
                "(per_device_train_batch_size x processes x gradient_accumulation_steps)"
            )
        epochs = math.ceil(config.num_train_epochs * self.steps_per_epoch)
        self.total_steps = config.max_steps if config.max_steps > 0 else epochs
        self.best = self.resumed_best() if resume is not None else -1.0

    def resumed_best(self) -> float:
        """The best recall@1 the stopped run kept in output_dir/best (-1 when it kept none)."""
        meta = self.output_dir / BEST_DIR / META_FILE
        return json.loads(meta.read_text())["selected"]["recall_at_1"] if meta.is_file() else -1.0

    def setup(self):
        cfg = self.config
        optimizer = self.adamw(self.lm.parameters())
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, cfg.warmup_steps, self.total_steps)
        module, optimizer = self.accelerator.prepare(RMLossModule(self.rm), optimizer)
        return module, optimizer, scheduler

    def start_epoch(self, epoch, step_in_epoch, optimizer):
        """Nothing: the reward model has no curriculum."""

    def train_step(self, module, optimizer, scheduler, order, step_in_epoch, step) -> dict:
        acc, accum = self.accelerator, self.config.gradient_accumulation_steps
        start = step_in_epoch * self.global_batch + acc.process_index * self.micro * accum
        losses = []
        for m in range(accum):
            idx = order[start + m * self.micro : start + (m + 1) * self.micro].tolist()
            with self.backend.micro_batch(module, last=m == accum - 1):
                losses.append(module([self.train_set[i] for i in idx]))
                self.backend.backward(losses, last=m == accum - 1)
        loss, applied, grad_norm = self.finish_update(module, optimizer, scheduler, losses, step + 1)
        return {"loss": loss if applied else None, "grad_norm": grad_norm}

    def summary(self, since_log, seconds, lr):
        losses = [s["loss"] for s in since_log if s["loss"] is not None]
        metrics = {"lr": lr, "grad_norm": since_log[-1]["grad_norm"], "skipped_nonfinite": self.guard.skipped}
        if losses:
            metrics["loss"] = sum(losses) / len(losses)
        return metrics

    def postfix(self, metrics):
        return {"loss": f"{metrics.get('loss', math.nan):.3f}"}

    def evaluate(self, module, step: int) -> RecallResult | None:
        """recall@1 on the held-out questions; a new best also replaces output_dir/best."""
        if not self.held_out:
            return None
        was_training = self.lm.training
        self.lm.eval()
        with torch.no_grad():
            finals = [
                self.rm.final_scores([q.prompt] * len(q.correct), q.latents, q.num_latents).tolist()
                for q in self.held_out
            ]
        self.lm.train(was_training)
        correct = [q.correct for q in self.held_out]
        result = RecallResult(recall_at_1(finals, correct), len(self.held_out))
        chance = chance_recall_at_1(correct)
        self.log({"step": step, "eval_recall_at_1": result.recall_at_1, "eval_recall_at_1_chance": chance}, step)
        self.accelerator.print(
            f"step {step}: held-out recall@1 {result.recall_at_1:.1%} on {result.n} questions "
            f"(a random pick: {chance:.1%})"
        )
        if result.recall_at_1 > self.best:
            self.best = result.recall_at_1
            self.save_best(module, step)
        return result

    def save_best(self, module, step: int) -> None:
        weights = self.backend.full_weights(module)
        if self.accelerator.is_main_process:
            tmp = self.output_dir / f".tmp-{BEST_DIR}"
            shutil.rmtree(tmp, ignore_errors=True)
            self.lm.meta["selected"] = {"step": step, "recall_at_1": self.best}
            self.lm.save_pretrained(tmp, state_dict=weights)
            del self.lm.meta["selected"]
            publish(tmp, self.output_dir / BEST_DIR)
        self.accelerator.wait_for_everyone()
