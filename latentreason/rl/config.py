"""Settings of GRPO over latent plans (names follow TRL's GRPOConfig where they mean the same)."""

from __future__ import annotations

from dataclasses import dataclass

from latentreason.config import field
from latentreason.errors import ConfigError
from latentreason.evaluation.prompting import BOXED_TEMPLATE
from latentreason.rl.grpo import LOSS_TYPES
from latentreason.rl.policy import LATENT_LOGPROB
from latentreason.train_config import TrainConfig

GATES = ("accuracy", "none")
THINK_INPUTS = ("tokens", "soft", "fuzzy", "hybrid")
SOFT_INPUTS = ("soft", "fuzzy")  # Soft Tokens, Hard Truths


@dataclass
class RLConfig(TrainConfig):
    model_name_or_path: str = field(
        "runs/atp-tiny/final",
        help="the model to improve: an ATP-Latent or CoLaR SFT model (a run's final/ or a checkpoint), a model "
        "trained here with cot, icot or no-cot, or a pretrained chat model (smollm2, a Hugging Face directory or hub "
        "id); the last two think in tokens",
    )
    learning_rate: float = field(1e-6, help="peak AdamW learning rate (the reference uses 1e-6)")
    max_steps: int = field(-1, help="rollout batches to run; -1 derives them from num_train_epochs")
    logging_steps: int = field(1, help="log every N rollout batches")
    # --- rollouts ---
    questions_per_step: int = field(16, help="questions per rollout batch, over all processes (reference 16)")
    num_generations: int = field(8, help="rollouts per question, the GRPO group (reference 8)")
    per_device_train_batch_size: int = field(
        16,
        help="rollouts per optimizer update per device; a rollout batch gives questions x generations / this "
        "updates (reference: 128 / 16 = 8 minibatch updates)",
    )
    num_iterations: int = field(1, help="passes over each rollout batch")
    temperature: float = field(1.0, help="answer-token sampling temperature (reference 1.0)")
    max_completion_length: int = field(16, help="answer tokens per rollout (reference 16)")
    # --- objective ---
    loss_type: str = field("sequence-ratio", help=f"loss aggregation: {', '.join(LOSS_TYPES)}")
    epsilon: float = field(0.2, help="PPO clip range below and above 1 (reference 0.2)")
    epsilon_high: float = field(0.0, help="upper clip range if > 0 (DAPO's clip-higher); 0 = epsilon")
    log_ratio_clamp: float = field(3.0, help="clamp log-ratios to [-c, c] before exp (reference 3; 0 = off)")
    beta: float = field(0.0, help="weight of KL to the frozen starting policy (reference 0: no reference model)")
    scale_rewards: bool = field(True, help="divide advantages by the group's reward std")
    recompute_old_logprobs: str = field(
        "auto",
        help="true: the old log-probs come from a no-grad teacher-forced pass, not from sampling; auto: true "
        "under bf16 (where the two passes round differently), false otherwise",
    )
    latent_logprob: str = field(
        "mean", help="latent log-density: mean (per dimension, tames ratios) or sum (exact, the reference)"
    )
    latent_logprob_scale: float = field(1.0, help="multiplier on the latent log-density term")
    # --- models that think in tokens: pretrained chat models (smollm2, a HF directory) and text methods' models ---
    multiplex_width: int = field(
        1,
        help="tokens drawn per step and fed as their mean embedding (Multiplex Thinking; the paper's K = 3); 1 = text",
    )
    think_inputs: str = field(
        "tokens",
        help="how a chat model thinks: tokens (text, or Multiplex Thinking with multiplex_width > 1), soft or fuzzy "
        "(Soft Tokens, Hard Truths: noisy mixtures of token embeddings, then a hard-token answer), hybrid (HRPO: "
        "sampled tokens fed through learned gates that mix in the step's distribution, until answer_marker)",
    )
    think_temperature: float = field(0.0, help="soft/fuzzy: the thinking mixture's temperature (0: 0.5 or 1e-4)")
    soft_noise: float = field(
        0.33, help="soft/fuzzy: noise std as a fraction of the embedding matrix's root-mean-square entry"
    )
    soft_top_k: int = field(64, help="soft/fuzzy/hybrid: tokens in each thinking mixture (the most probable)")
    max_thinking_steps: int = field(
        0, help="soft/fuzzy: thinking steps before the think-end text is forced (0: half of max_completion_length)"
    )
    answer_marker: str = field(
        "",
        help="hybrid: the reply's inputs are hybrid until its text contains this (the paper's '####'); empty: the "
        "prompt's own, \\boxed for a chat model (the default prompt asks for it), ### for a model trained here",
    )
    gate_learning_rate: float = field(1e-4, help="hybrid: learning rate of the gates W_r and W_i (the paper's 1e-4)")
    lambda_learning_rate: float = field(1e-3, help="hybrid: learning rate of Lambda (the paper's 1e-3)")
    gate_init_min: float = field(0.99, help="hybrid: the starting a (at r = 1) is uniform in [min, max]; paper 0.99")
    gate_init_max: float = field(0.999, help="hybrid: see gate_init_min; the paper's 0.999")
    prompt_template: str = field(
        BOXED_TEMPLATE, help="a chat model's user turn; {question} is replaced by the question"
    )
    system_prompt: str = field("", help="a chat model's system prompt; empty: the chat template's own default")
    lora_r: int = field(0, help="LoRA rank through peft (0 = full fine-tuning)")
    lora_alpha: int = field(32, help="LoRA alpha (the adapters' scale is alpha / r)")
    lora_target_modules: str = field("all-linear", help="'all-linear' or comma-separated module names")
    # --- rewards ---
    reward_funcs: list = field(
        ["accuracy", "format", "coherence"], help="registered reward functions (coherence: ATP-Latent only)"
    )
    reward_weights: list = field([1.0, 0.5, 0.1], help="one weight per reward function (reference 1, 0.5, 0.1)")
    coherence_gate: str = field("accuracy", help="accuracy: coherence counts only when the answer is right; none")
    coherence_empty: float = field(0.0, help="coherence of a plan with no latent steps (reference: 1.0)")
    coherence_max_tokens: int = field(16, help="tokens decoded per latent step for coherence (reference 16)")

    def __post_init__(self):
        super().__post_init__()
        if self.questions_per_step < 1 or self.num_iterations < 1:
            raise ConfigError("questions_per_step and num_iterations must be >= 1")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"field 'loss_type': expected one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.latent_logprob not in LATENT_LOGPROB:
            raise ConfigError(f"field 'latent_logprob': expected one of {LATENT_LOGPROB}, got {self.latent_logprob!r}")
        if self.recompute_old_logprobs not in ("auto", "true", "false"):
            raise ConfigError(
                f"field 'recompute_old_logprobs': expected auto, true or false, got {self.recompute_old_logprobs!r}"
            )
        if not self.reward_funcs:
            raise ConfigError("field 'reward_funcs': name at least one reward function")
        if (
            self.coherence_gate == "accuracy"
            and "coherence" in self.reward_funcs
            and "accuracy" not in self.reward_funcs
        ):
            raise ConfigError("coherence_gate 'accuracy' needs 'accuracy' in reward_funcs (or coherence_gate: none)")
        if self.coherence_gate not in GATES:
            raise ConfigError(f"field 'coherence_gate': expected one of {GATES}, got {self.coherence_gate!r}")
        if len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(
                f"field 'reward_weights': {len(self.reward_weights)} weights for {len(self.reward_funcs)} reward_funcs"
            )
        if self.temperature <= 0 or self.epsilon <= 0 or self.max_completion_length < 1:
            raise ConfigError("temperature and epsilon must be > 0 and max_completion_length >= 1")
        if self.think_inputs not in THINK_INPUTS:
            raise ConfigError(f"field 'think_inputs': expected one of {THINK_INPUTS}, got {self.think_inputs!r}")
        if self.think_inputs != "tokens" and self.multiplex_width != 1:
            raise ConfigError("field 'multiplex_width': Multiplex Thinking is for think_inputs: tokens")
        if self.soft_noise <= 0 or self.soft_top_k < 1 or self.think_temperature < 0 or self.max_thinking_steps < 0:
            raise ConfigError("soft_noise must be > 0, soft_top_k >= 1, think_temperature and max_thinking_steps >= 0")
        if self.think_inputs in SOFT_INPUTS and not 0 < self.thinking_steps < self.max_completion_length:
            raise ConfigError(
                f"field 'max_thinking_steps': {self.thinking_steps} thinking steps leave no room for the answer in "
                f"max_completion_length {self.max_completion_length}"
            )
        if self.think_inputs == "hybrid":
            self._check_hybrid()
        if self.multiplex_width < 1:
            raise ConfigError(f"field 'multiplex_width': expected >= 1 (1 = plain tokens), got {self.multiplex_width}")
        if self.lora_r < 0 or (self.lora_r and self.lora_alpha <= 0):
            raise ConfigError("fields 'lora_r' and 'lora_alpha': lora_r >= 0 (0 = no LoRA) and lora_alpha > 0")
        if self.num_generations < 2:
            raise ConfigError("field 'num_generations': GRPO compares rollouts of a question, so it needs >= 2")

    def _check_hybrid(self):
        if self.think_temperature or self.max_thinking_steps:
            raise ConfigError(
                "fields 'think_temperature' and 'max_thinking_steps': for soft/fuzzy; hybrid thinking mixes the "
                "sampling distribution (temperature) and lasts until answer_marker"
            )
        if self.gate_learning_rate < 0 or self.lambda_learning_rate < 0:
            raise ConfigError("fields 'gate_learning_rate' and 'lambda_learning_rate': expected >= 0 (0 freezes them)")
        if not 0 < self.gate_init_min <= self.gate_init_max < 1:
            raise ConfigError(
                f"fields 'gate_init_min' and 'gate_init_max': expected 0 < min <= max < 1, got {self.gate_init_min} "
                f"and {self.gate_init_max}"
            )

    @property
    def thinking_steps(self) -> int:
        """Soft/fuzzy thinking steps before the think-end text is forced (max_thinking_steps, 0: half the reply)."""
        return self.max_thinking_steps or self.max_completion_length // 2
