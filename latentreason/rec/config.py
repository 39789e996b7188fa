"""Settings of a recommendation run: the model's architecture (ModelSettings, saved with the model) and the
run's (RecConfig: the loop's TrainConfig plus data, objective and early stopping)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from latentreason.config import field
from latentreason.errors import ConfigError
from latentreason.rec.reasoning import POOLING
from latentreason.train_config import TrainConfig

MODELS = ("sasrec", "rearec", "plr")


@dataclass
class ModelSettings:
    model: str = field("plr", help=f"one of {', '.join(MODELS)}")
    max_seq_length: int = field(50, help="items of history the encoder reads (the latest ones)")
    hidden_size: int = field(64, help="embedding and hidden width")
    num_layers: int = field(2, help="transformer blocks")
    num_heads: int = field(2, help="attention heads")
    inner_size: int = field(256, help="feed-forward width")
    dropout: float = field(0.5, help="dropout on embeddings and block outputs (RecBole's SASRec: 0.5)")
    attention_dropout: float = field(0.5, help="dropout on attention weights (RecBole's SASRec: 0.5)")
    reasoning_steps: int = field(2, help="T, latent reasoning steps per stream (sasrec: 0)")
    streams: int = field(4, help="M, parallel reasoning streams (rearec: 1)")
    stream_pooling: str = field("mean", help=f"plr: a stream's state from its T outputs, {' or '.join(POOLING)}")
    blend_fast: bool = field(True, help="plr: blend the encoder's fast output into the final representation")

    def check_model(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"field 'model': expected one of {MODELS}, got {self.model!r}")
        if (self.model == "sasrec") != (self.reasoning_steps == 0):
            raise ConfigError("field 'reasoning_steps': 0 for sasrec (no reasoning), >= 1 for rearec and plr")
        if self.model == "rearec" and self.streams != 1:
            raise ConfigError("field 'streams': rearec reasons along one stream (set 1, or use model: plr)")
        if self.streams < 1 or self.reasoning_steps < 0:
            raise ConfigError("fields 'streams' >= 1 and 'reasoning_steps' >= 0")
        if self.stream_pooling not in POOLING:
            raise ConfigError(f"field 'stream_pooling': expected one of {POOLING}, got {self.stream_pooling!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"field 'hidden_size': {self.hidden_size} is not a multiple of num_heads")
        for name in ("max_seq_length", "hidden_size", "num_layers", "num_heads", "inner_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field '{name}': must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"field '{name}': expected a probability in [0, 1), got {getattr(self, name)}")

    def model_settings(self) -> ModelSettings:
        """Just the architecture (what a saved model records)."""
        return ModelSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSettings)})


@dataclass
class RecConfig(ModelSettings, TrainConfig):
    dataset: str = field("ml-100k", help="a packaged data set (ml-100k, from the recbole package) or an .inter file")
    min_user_interactions: int = field(5, help="users with fewer interactions are dropped before the split")
    diversity_weight: float = field(0.1, help="plr: weight of the global reasoning regulariser (stream similarity)")
    fast_loss_weight: float = field(
        0.0, help="rearec, plr: weight of a cross-entropy on the encoder's own state, before reasoning (0: none)"
    )
    patience: int = field(5, help="stop after this many evaluations without a better validation NDCG@10 (0: never)")
    min_epochs: float = field(
        10, help="early stopping never ends a run before this many epochs (reasoning models start on a plateau)"
    )
    output_dir: str = field("runs/rec", help="where checkpoints, logs, best/ and final/ go")
    learning_rate: float = field(1e-3, help="peak AdamW learning rate")
    per_device_train_batch_size: int = field(256, help="training examples (history prefixes) per micro-batch")
    eval_batch_size: int = field(256, help="users per full-ranking batch")
    lr_scheduler_type: str = field("constant", help="constant, constant_with_warmup, linear or cosine")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    logging_steps: int = field(50, help="log every N optimizer steps")

    def __post_init__(self):
        super().__post_init__()
        self.check_model()
        if self.eval_split != "valid":
            raise ConfigError("field 'eval_split': training selects on 'valid'; the test split is read only after")
        if self.min_user_interactions < 3:
            raise ConfigError("field 'min_user_interactions': leave-one-out needs >= 3 (train, valid, test)")
        if min(self.diversity_weight, self.fast_loss_weight, self.patience, self.min_epochs) < 0:
            raise ConfigError("fields 'diversity_weight', 'fast_loss_weight', 'patience' and 'min_epochs' must be >= 0")
        if self.model == "sasrec" and self.fast_loss_weight:
            raise ConfigError("field 'fast_loss_weight': sasrec has no reasoning, its output is the fast state (set 0)")
