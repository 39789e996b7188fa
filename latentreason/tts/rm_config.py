"""Settings of `latentreason train-rm`: which latent model's trajectories, how they are sampled and labelled,
and the shared training fields (output_dir, steps, checkpoints, resume, logging)."""

from __future__ import annotations

from dataclasses import dataclass

from latentreason.config import field
from latentreason.train_config import TrainConfig
from latentreason.tts.rm_labels import RMLabelConfig


@dataclass
class RMConfig(TrainConfig):
    model_name_or_path: str = field("runs/coconut-tiny/final", help="the latent model whose trajectories are rated")
    latent_sampler: str = field("noise", help="what makes the trajectories differ: noise or dropout")
    latent_sampler_args: dict = field({}, help="the sampler's settings (default: the model's method's)")
    trajectories: int = field(8, help="trajectories sampled per question (LatentTTS: 8)")
    continuations: int = field(2, help="Monte-Carlo continuations per prefix (LatentTTS: 32; small for CPU)")
    train_backbone: bool = field(False, help="false: only the score head learns; true: the backbone too")
    per_device_train_batch_size: int = field(4, help="questions (each with its trajectories) per micro-batch")
    num_eval_examples: int = field(50, help="held-out questions whose trajectories recall@1 is measured on")

    def __post_init__(self):
        super().__post_init__()
        self.label_config()  # checks trajectories and continuations

    def label_config(self) -> RMLabelConfig:
        return RMLabelConfig(self.trajectories, self.continuations, self.seed)
