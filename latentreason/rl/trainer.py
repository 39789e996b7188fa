"""GRPO over latent plans (ATP-Latent or CoLaR; what differs is each method's latent_actions), or over the tokens
(text, Multiplex, soft, hybrid) of a pretrained chat model or of a model trained here with a text method: what its
steps are in the shared loop (training/loop.py), read top to bottom.

Per rollout step (the unit of max_steps, checkpoints and resume):
  1. questions: this rank's whole questions of the step (a group never spans ranks), from the epoch's
     permutation, so a resumed run sees the same questions;
  2. rollouts: num_generations per question, sampled with a generator seeded by (seed, step, rank)
     (latent noise from the learned variance, sampled stop decisions, answer tokens at `temperature`),
     their log-probs recorded on the way;
  3. rewards and group-normalised advantages (each group lies on one rank, so no gathering is needed);
  4. updates: num_iterations passes over the rollouts in shuffled minibatches of
     per_device_train_batch_size x gradient_accumulation_steps, each one optimizer step: recompute the
     log-probs in a teacher-forced latent pass, PPO-clip loss, clip gradients, AdamW.
ATP-Latent's step decoder is frozen (it only scores coherence). Dropout is off throughout, so the recomputed
log-probs of an unchanged policy equal the sampled ones.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import get_scheduler

from latentreason.data.problems import Problem
from latentreason.decoding import decoder_from_args
from latentreason.errors import UserError
from latentreason.evaluation.chat_solver import ChatSolver
from latentreason.evaluation.layout_prompt import LayoutPrompt
from latentreason.methods.sft import TextSFT
from latentreason.model.latent_lm import LatentLM
from latentreason.model.step_decoder import StepDecoder
from latentreason.rl.config import RLConfig
from latentreason.rl.grpo import clipped_policy_loss, group_advantages
from latentreason.rl.hybrid_policy import HybridPolicy
from latentreason.rl.policy import LatentPolicy, RolloutBatch
from latentreason.rl.rewards import RewardContext, build_rewards, combine
from latentreason.rl.soft_token_policy import SoftTokenPolicy
from latentreason.rl.token_policy import MultiplexPolicy, chat_prompt
from latentreason.training.loop import TrainingLoop
from latentreason.training.prepared_module import PreparedModule


class PolicyLossModule(PreparedModule):
    """The model behind one forward: recompute the rollouts' log-probs, GRPO loss."""

    def __init__(self, lm, policy: LatentPolicy, config: RLConfig):
        super().__init__(lm)
        self.policy, self.config = policy, config

    def objective(self, rollouts: RolloutBatch, advantages: torch.Tensor):
        cfg = self.config
        new = self.policy.logprobs(rollouts)
        return clipped_policy_loss(
            new.flat(),
            rollouts.old.flat(),
            rollouts.action_mask,
            advantages,
            loss_type=cfg.loss_type,
            epsilon=cfg.epsilon,
            epsilon_high=cfg.epsilon_high or None,
            log_ratio_clamp=cfg.log_ratio_clamp or None,
            ref_logp=rollouts.ref.flat() if rollouts.ref is not None else None,
            beta=cfg.beta,
        )


class RLTrainer(TrainingLoop):
    """`resume`: a complete checkpoint to continue from (`lm` must hold its weights); `run_rl` resolves it."""

    tracker_project, progress_label = "latentreason-rl", "rl"

    def __init__(
        self,
        config: RLConfig,
        method,
        lm,
        train: list[Problem],
        held_out: list[Problem],
        progress: bool = True,
        resume: Path | None = None,
    ):
        if not train:
            raise UserError("no training questions (check dataset / num_train_examples)")
        if method is not None and method.latent_actions is None and not isinstance(method, TextSFT):
            raise UserError(
                f"RL needs an ATP-Latent or CoLaR model, a model trained with a text method (cot, icot, no-cot) or a "
                f"pretrained one; {config.model_name_or_path} was trained with {method.name}"
            )
        # method None: a pretrained chat model; it and a text method's model think in tokens (rl/token_policy.py).
        self.method, self.lm = method, lm
        self.train_set, self.held_out = train, held_out
        if method is not None:
            method.prepare(lm)
        lm.meta["rl_config"] = asdict(config)  # method_config stays the SFT one: `eval` rebuilds the solver from it
        super().__init__(config, resume, progress)
        acc, cfg = self.accelerator, config
        world = acc.num_processes
        if cfg.questions_per_step % world:
            raise UserError(f"questions_per_step {cfg.questions_per_step} must divide over {world} processes")
        self.local_questions = cfg.questions_per_step // world
        local_rollouts = self.local_questions * cfg.num_generations
        self.micro = cfg.per_device_train_batch_size
        per_update = self.micro * cfg.gradient_accumulation_steps
        if local_rollouts % per_update:
            raise UserError(
                f"{local_rollouts} rollouts per process (questions_per_step / processes x num_generations) do not "
                f"split into updates of {per_update} (per_device_train_batch_size x gradient_accumulation_steps)"
            )
        self.updates_per_step = local_rollouts // per_update * cfg.num_iterations
        self.steps_per_epoch = len(train) // cfg.questions_per_step
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(train)} training questions are fewer than questions_per_step={cfg.questions_per_step}"
            )
        self.total_steps = (
            cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * self.steps_per_epoch)
        )
        self.policy = self._policy(lm, method)
        self.reward_context = self._reward_context()
        self.rewards = build_rewards(cfg.reward_funcs, self.reward_context)
        self.weights = dict(zip(cfg.reward_funcs, cfg.reward_weights))
        # Accuracy is logged even where it is not rewarded (EMPO trains without labels; its user still wants to
        # see whether the label-free reward moves it). Logged as monitor/accuracy/mean, never in the reward.
        self.monitors = {} if "accuracy" in self.rewards else build_rewards(["accuracy"], self.reward_context)
        self.ref_policy = self._reference_policy() if cfg.beta > 0 else None
        # Under bf16 the incremental sampling pass and the teacher-forced pass round differently: recompute
        # the old log-probs in the updates' own pass (one more no-grad pass per rollout batch).
        mixed = self.accelerator.mixed_precision != "no"
        self.recompute_old = cfg.recompute_old_logprobs == "true" or (cfg.recompute_old_logprobs == "auto" and mixed)

    # --- set-up ---------------------------------------------------------------------------------
    def _policy(self, lm, method) -> LatentPolicy | MultiplexPolicy | SoftTokenPolicy | HybridPolicy:
        cfg = self.config
        if method is None:
            return self._token_policy(lm, chat_prompt(lm, cfg))
        if isinstance(method, TextSFT):
            if not method.with_cot and cfg.think_inputs != "tokens":
                raise UserError(
                    f"think_inputs {cfg.think_inputs}: a {method.name} model answers without a chain, so it has no "
                    "thinking to feed as soft or hybrid inputs; use think_inputs: tokens (text, or multiplex_width > 1)"
                )
            return self._token_policy(lm, LayoutPrompt(lm.tokenizer))  # its training layout, not a chat template
        if cfg.multiplex_width != 1 or cfg.think_inputs != "tokens":
            raise UserError(
                f"multiplex_width {cfg.multiplex_width}, think_inputs {cfg.think_inputs}: Multiplex Thinking, soft "
                f"tokens and HRPO are for pretrained models and text methods' models, not {method.name}"
            )
        return LatentPolicy(
            lm, method, cfg.temperature, cfg.max_completion_length, cfg.latent_logprob, cfg.latent_logprob_scale
        )

    def _token_policy(self, lm, prompt) -> MultiplexPolicy | SoftTokenPolicy | HybridPolicy:
        """The policy of a model that thinks in tokens (text, Multiplex), in noisy soft tokens or in HRPO's hybrid
        inputs, after `prompt` (a chat model's PromptBuilder or a text method's LayoutPrompt)."""
        cfg = self.config
        if cfg.think_inputs == "tokens":
            return MultiplexPolicy(lm, prompt, cfg.multiplex_width, cfg.temperature, cfg.max_completion_length)
        if cfg.think_inputs == "hybrid":
            return HybridPolicy(lm, prompt, cfg)
        return SoftTokenPolicy(lm, prompt, cfg)

    def resume_resets_optimizer(self) -> bool:
        return self.config.lora_r > 0 or (self.method is not None and self.method.resume_resets_optimizer())

    def run_label(self) -> str:
        if isinstance(self.policy, LatentPolicy):
            return self.method.name
        cfg = self.config
        if cfg.think_inputs == "hybrid":
            thinking = "hrpo"
        elif cfg.think_inputs != "tokens":
            thinking = f"{cfg.think_inputs} tokens"
        else:
            thinking = "text" if cfg.multiplex_width == 1 else f"multiplex K={cfg.multiplex_width}"
        return thinking if self.method is None else f"{self.method.name} {thinking}"

    def held_out_solver(self):
        """What `eval --model` reads the saved model with: a model trained here, its method's solver (plain tokens for
        a text method, whatever its RL thought in); a chat model, the chat solver (through HRPO's gates)."""
        if self.method is not None:
            return self.method.solver(self.lm)
        decoder = decoder_from_args("hrpo") if self.config.think_inputs == "hybrid" else None  # through the gates
        return ChatSolver(self.lm, self.policy.prompt, max_new_tokens=self.config.max_new_tokens, decoder=decoder)

    def _starting_model(self):
        """A frozen copy of the model RL started from (the SFT model, also when resuming a checkpoint)."""
        if self.resume is None:
            start = copy.deepcopy(self.lm)
        else:
            start = LatentLM.from_pretrained(self.config.model_name_or_path)
        return start.requires_grad_(False).eval()

    def _reward_context(self) -> RewardContext:
        cfg, decoder = self.config, getattr(self.method, "decoder", None)  # CoLaR and chat models: no coherence
        if decoder is not None:
            if decoder.mode == "shared":
                # The base model is the decoder and RL changes it: score with the frozen starting model.
                decoder = StepDecoder(self._starting_model(), "shared")
            else:
                decoder.model.requires_grad_(False)
        c = self.policy.actions.group if isinstance(self.policy, LatentPolicy) else 1  # ATP's c_thought
        return RewardContext(self.lm, decoder, c, cfg.coherence_max_tokens, cfg.coherence_empty, cfg.num_generations)

    def _reference_policy(self) -> LatentPolicy:
        """The frozen starting policy for the KL term (costs one more copy of the model)."""
        ref_lm = self._starting_model()
        cfg = self.config
        if not isinstance(self.policy, LatentPolicy):
            return self._token_policy(ref_lm, self.policy.prompt)
        ref_method = type(self.method)(self.method.config)
        ref_method.prepare(ref_lm)
        return LatentPolicy(
            ref_lm, ref_method, cfg.temperature, cfg.max_completion_length, cfg.latent_logprob, cfg.latent_logprob_scale
        )

    def setup(self):
        """(module, optimizer, scheduler), prepared by accelerate; the model is put in eval mode."""
        cfg = self.config
        self.lm.eval()  # no dropout: sampled and recomputed log-probs must agree
        optimizer = self._optimizer()
        total_updates = self.total_steps * self.updates_per_step
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, cfg.warmup_steps, total_updates)
        module, optimizer = self.accelerator.prepare(PolicyLossModule(self.lm, self.policy, cfg), optimizer)
        # The frozen copies are not prepared: put them where the policy now lives.
        device = self.accelerator.device
        if self.ref_policy is not None:
            self.ref_policy.lm.to(device)
        decoder = self.reward_context.decoder
        if decoder is not None and decoder.lm is not self.lm:  # a copy/small decoder is a head of the model
            decoder.lm.to(device)
        return module, optimizer, scheduler

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the model; HRPO's gates and Lambda in groups of their own learning rates."""
        groups = self.policy.optimizer_groups() if isinstance(self.policy, HybridPolicy) else []
        own = {id(p) for group in groups for p in group["params"]}
        optimizer = self.adamw(p for p in self.lm.parameters() if id(p) not in own)
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    # --- the steps -----------------------------------------------------------------------------
    def start_epoch(self, epoch, step_in_epoch, optimizer):
        """Nothing: the SFT method's curriculum stays where SFT left it."""

    def train_step(self, module, optimizer, scheduler, order, step_in_epoch, step) -> dict:
        """This rank's questions of the rollout step, then `rl_step` on them."""
        first = step_in_epoch * self.config.questions_per_step + self.accelerator.process_index * self.local_questions
        questions = [self.train_set[i] for i in order[first : first + self.local_questions].tolist()]
        return self.rl_step(module, optimizer, scheduler, questions, step)

    def summary(self, since_log, seconds, lr):
        return {**since_log[-1], "lr": lr}  # the last rollout step's metrics (already averaged over processes)

    def postfix(self, metrics):
        if "latents/mean_active" in metrics:
            return {"reward": f"{metrics['reward']:.3f}", "latents": f"{metrics['latents/mean_active']:.1f}"}
        return {"reward": f"{metrics['reward']:.3f}", "length": f"{metrics['completions/mean_length']:.0f}"}

    def rl_step(self, module, optimizer, scheduler, questions: list[Problem], step: int) -> dict:
        """Sample, score and update on one rollout batch; returns its metrics (phase times included)."""
        cfg, acc, lm = self.config, self.accelerator, self.lm
        seed = cfg.seed * 1_000_003 + step * acc.num_processes + acc.process_index
        generator = torch.Generator(device=lm.device).manual_seed(seed)
        began = time.perf_counter()
        problems = [q for q in questions for _ in range(cfg.num_generations)]  # groups are consecutive
        # One gather of a sharded model for both: the coherence reward decodes with the step decoder, a head
        # of the model in copy/small mode.
        rollouts, scores, monitored, sampled = self.backend.outside_forward(
            module, lambda: self._sample_and_score(problems, generator)
        )
        rewards = combine(scores, self.weights, cfg.coherence_gate)  # [B]
        advantages = group_advantages(rewards, cfg.num_generations, scale=cfg.scale_rewards).to(lm.device)  # [B]
        scored = time.perf_counter()
        update_stats = self._updates(module, optimizer, scheduler, rollouts, advantages, step)
        updated = time.perf_counter()
        grouped = rewards.view(-1, cfg.num_generations)  # [Q, G]
        metrics = {
            "reward": float(rewards.mean()),
            "reward_std": float(grouped.std(1).mean()),
            "frac_reward_zero_std": float((grouped.std(1) < 1e-6).float().mean()),
            **{f"rewards/{name}/mean": sum(v) / len(v) for name, v in scores.items()},
            **{f"monitor/{name}/mean": sum(v) / len(v) for name, v in monitored.items()},
            **update_stats,
            **rollouts.metrics(),
            "time/rollout_s": sampled - began,
            "time/score_s": scored - sampled,
            "time/update_s": updated - scored,
        }
        return self._mean_over_processes(metrics)

    def _sample_and_score(self, problems: list[Problem], generator: torch.Generator):
        """(rollouts with their old (and reference) log-probs, each reward's scores, each monitor's scores, the
        time sampling ended), without gradients."""
        with self.accelerator.autocast():  # the precision the updates use, so an unchanged policy has ratio 1
            rollouts = self.policy.sample(self.policy.prompts(problems), generator)
            if self.recompute_old:
                rollouts.old = self.policy.logprobs(rollouts)
            if self.ref_policy is not None:
                rollouts.ref = self.ref_policy.logprobs(rollouts)
        sampled = time.perf_counter()
        completions = rollouts.completions(self.lm.tokenizer, self.config.answer_mode)
        scores = {name: fn(problems, completions) for name, fn in self.rewards.items()}
        monitored = {name: fn(problems, completions) for name, fn in self.monitors.items()}
        return rollouts, scores, monitored, sampled

    def _updates(self, module, optimizer, scheduler, rollouts, advantages, step) -> dict:
        """num_iterations passes of minibatch updates; a non-finite loss or gradient skips its update."""
        cfg = self.config
        total = advantages.shape[0]
        per_update = self.micro * cfg.gradient_accumulation_steps
        sums: dict[str, float] = {}
        micro_batches, norms = 0, []
        shuffle = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        for _ in range(cfg.num_iterations):
            order = torch.randperm(total, generator=shuffle)
            for start in range(0, total, per_update):
                chunk = order[start : start + per_update]
                losses = []
                for m in range(cfg.gradient_accumulation_steps):
                    rows = chunk[m * self.micro : (m + 1) * self.micro].to(advantages.device)
                    last = m == cfg.gradient_accumulation_steps - 1
                    with self.backend.micro_batch(module, last):
                        out = module(rollouts.select(rows), advantages[rows])
                        losses.append(out.loss)
                        self.backend.backward(losses, last)
                    for key, value in {"loss": float(out.loss.detach()), **out.stats}.items():
                        sums[key] = sums.get(key, 0.0) + value
                    micro_batches += 1
                _, applied, norm = self.finish_update(module, optimizer, scheduler, losses, step + 1)
                if applied:
                    norms.append(norm)
        stats = {k: v / micro_batches for k, v in sums.items()}
        if norms:
            stats["grad_norm"] = sum(norms) / len(norms)
        stats["skipped_nonfinite"] = self.guard.skipped
        return stats

    # --- side effects ---------------------------------------------------------------------------
    def _mean_over_processes(self, metrics: dict) -> dict:
        acc = self.accelerator
        if acc.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], device=acc.device)
        return dict(zip(keys, acc.reduce(values, reduction="mean").tolist()))
