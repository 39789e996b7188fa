"""The fields of a training run (names follow TRL / transformers where they mean the same).

TrainConfig holds what every run reads, supervised (`latentreason train`) or RL (`latentreason rl`,
rl/config.py's RLConfig). SFTConfig adds what only a supervised run reads: the model it builds or loads and
the longest sequence it trains on; every training method's config derives from it. RL starts from a model
already trained, so it has none of these (a config has no field its run would ignore).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from latentreason.config import field
from latentreason.data.formats import ON_INVALID
from latentreason.data.sources import DEFAULT_EVAL_SPLIT
from latentreason.errors import ConfigError

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
REPORTERS = ("none", "tensorboard", "wandb")


@dataclass
class TrainConfig:
    # How this run's replies may be read (a method whose replies are a chat model's also reads boxed answers).
    answer_modes: ClassVar[tuple[str, ...]] = ("strict", "flexible")
    # --- data ---
    dataset: str = field(
        "synthetic:chain",
        help="a benchmark name (gsm8k-aug, prosqa, mult-4x4, ...), 'synthetic:<generator>', or a data file path",
    )
    dataset_params: dict = field({}, help="parameters of a synthetic generator (e.g. {num_steps: 3})")
    data_dir: str | None = field(None, help="directory laid out like the benchmark data (env LATENTREASON_DATA_DIR)")
    train_split: str = field("train", help="split used for training")
    eval_split: str = field(
        DEFAULT_EVAL_SPLIT,
        help="held-out split for evaluation during training (never test); where there is none, the last "
        "num_eval_examples training problems are held out",
    )
    num_train_examples: int = field(0, help="training examples to use/generate (0 = the whole split)")
    num_eval_examples: int = field(200, help="held-out examples evaluated during and after training")
    never_train_on: str | None = field(
        None,
        help="a data file or benchmark (NAME for its evaluation split, or NAME:SPLIT) whose questions are dropped "
        "from the training problems; a study sets it to what it evaluates on",
    )
    on_invalid: str = field(
        "error", help="a malformed data record: 'error' stops with file, record and field; 'skip' drops and counts it"
    )
    # --- optimisation ---
    output_dir: str = field("runs/train", help="where checkpoints, logs and the final model go")
    overwrite_output_dir: bool = field(
        False,
        help="train into a non-empty output_dir without resuming; its checkpoints, final model and log are deleted",
    )
    per_device_train_batch_size: int = field(32, help="sequences per device per micro-batch")
    gradient_accumulation_steps: int = field(1, help="micro-batches per optimizer step")
    learning_rate: float = field(1e-4, help="peak AdamW learning rate")
    weight_decay: float = field(0.01, help="AdamW weight decay")
    adam_beta1: float = field(0.9, help="AdamW beta1")
    adam_beta2: float = field(0.999, help="AdamW beta2 (0.95 suits small models trained at high learning rates)")
    lr_scheduler_type: str = field("cosine", help=f"one of {', '.join(SCHEDULERS)}")
    warmup_steps: int = field(0, help="linear warm-up steps")
    num_train_epochs: float = field(1.0, help="passes over the training set (ignored when max_steps > 0)")
    max_steps: int = field(-1, help="optimizer steps to run; -1 derives them from num_train_epochs")
    max_grad_norm: float = field(1.0, help="gradient clipping norm (0 disables)")
    max_nonfinite_steps: int = field(
        10,
        help="a NaN/inf loss or gradient norm skips the update; this many skips in a row stop the run "
        "(the last checkpoint is kept)",
    )
    bf16: str = field("auto", help="bf16 autocast: auto (when the GPU supports it), true or false")
    seed: int = field(42, help="seed for initialisation, data order and generation")
    logging_steps: int = field(10, help="log every N optimizer steps")
    eval_steps: int = field(0, help="evaluate every N optimizer steps (0 = only at the end)")
    save_steps: int = field(0, help="checkpoint every N optimizer steps (0 = only at the end)")
    save_total_limit: int = field(2, help="checkpoints kept, the latest ones (older ones are deleted; 0 keeps all)")
    resume_from_checkpoint: str | None = field(None, help="'auto' (latest in output_dir) or a checkpoint path")
    report_to: str = field("none", help=f"metrics logger: {', '.join(REPORTERS)}")
    # --- evaluation ---
    eval_batch_size: int = field(64, help="problems per generation batch")
    max_new_tokens: int = field(64, help="generation budget per problem (reasoning + answer)")
    answer_mode: str = field("strict", help="answer extraction: strict (after '###'), flexible (last number)")

    def __post_init__(self):
        positive = (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "eval_batch_size",
            "max_new_tokens",
            "max_nonfinite_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"field '{name}': must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"field 'learning_rate': must be > 0, got {self.learning_rate}")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise ConfigError(
                f"field 'lr_scheduler_type': expected one of {SCHEDULERS}, got {self.lr_scheduler_type!r}"
            )
        if self.report_to not in REPORTERS:
            raise ConfigError(f"field 'report_to': expected one of {REPORTERS}, got {self.report_to!r}")
        if self.bf16 not in ("auto", "true", "false"):
            raise ConfigError(f"field 'bf16': expected auto, true or false, got {self.bf16!r}")
        if self.on_invalid not in ON_INVALID:
            raise ConfigError(f"field 'on_invalid': expected one of {ON_INVALID}, got {self.on_invalid!r}")
        if self.answer_mode not in self.answer_modes:
            expected = " or ".join(self.answer_modes)
            raise ConfigError(f"field 'answer_mode': expected {expected}, got {self.answer_mode!r}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set max_steps > 0 or num_train_epochs > 0: nothing to train otherwise")
        if self.eval_split == "test":
            raise ConfigError("field 'eval_split': evaluation during training must not use the test split")


@dataclass
class SFTConfig(TrainConfig):
    # --- model ---
    model_name_or_path: str = field(
        "tiny",
        help="a local model directory (HF format or a latentreason checkpoint), 'tiny' for a from-scratch "
        "model sized by tiny_model, or 'smollm2' for the packaged SmolLM2-135M-Instruct",
    )
    tiny_model: dict = field(
        {}, help="architecture of the 'tiny' model: model_type, hidden_size, num_hidden_layers, ..."
    )
    tokenizer_vocab_size: int = field(384, help="BPE vocabulary size of the tokenizer trained for a 'tiny' model")
    init_from_token: str = field("<<", help="existing token whose embedding initialises the new special tokens")
    # --- data ---
    max_seq_length: int = field(512, help="longer training sequences are dropped (and counted in the log)")
