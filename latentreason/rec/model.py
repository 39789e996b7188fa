"""The recommender: encoder (SASRec) + latent reasoning (ReaRec depth, PLR width), scoring every item.

It saves like every model here, as safetensors plus a JSON of what rebuilds it (recommender.json: the
architecture, the item count and the run's record), and plays the `LatentLM` part in the shared training
loop (training/loop.py), which reads `lm.model.config.hidden_size`, `save_pretrained` and `meta`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from latentreason.config import from_dict
from latentreason.errors import UserError
from latentreason.rec.config import ModelSettings
from latentreason.rec.encoder import SequenceEncoder
from latentreason.rec.reasoning import LatentReasoner, Reasoned

WEIGHTS_FILE, META_FILE = "model.safetensors", "recommender.json"


class Recommender(nn.Module):
    def __init__(self, settings: ModelSettings, num_items: int):
        super().__init__()
        settings.check_model()
        self.config, self.num_items = settings, num_items
        self.meta: dict = {}  # what the run records with the model (data set, selection)
        s = settings
        self.encoder = SequenceEncoder(
            num_items, s.max_seq_length, s.hidden_size, s.num_layers, s.num_heads, s.inner_size, s.dropout,
            s.attention_dropout,
        )  # fmt: skip
        self.reasoner = None
        if s.model != "sasrec":
            plr = s.model == "plr"
            pooling = s.stream_pooling if plr else "last"
            blend = plr and s.blend_fast
            self.reasoner = LatentReasoner(s.hidden_size, s.reasoning_steps, s.streams, plr, pooling, blend)
        self.apply(_init_weights)

    @property
    def model(self) -> Recommender:
        """The loop reads the network's width as `lm.model.config.hidden_size`: here the network is this module."""
        return self

    @property
    def device(self) -> torch.device:
        return self.encoder.items.weight.device

    def represent(self, histories: torch.Tensor, every_position: bool = False) -> Reasoned:
        """histories [B, L] (left-padded, L <= max_seq_length) -> the user representation at the last position
        (A = 1), or at every position (A = L, for training: position p predicts the item after it)."""
        states, context = self.encoder.encode(histories)  # [B, L, d]
        L = histories.shape[1]
        anchors = torch.arange(L if every_position else 1, device=states.device) + (0 if every_position else L - 1)
        fast = states[:, anchors]  # [B, A, d]
        if self.reasoner is None:
            return Reasoned(fast, fast[:, :, None], fast.new_ones(*fast.shape[:2], 1), fast)
        return self.reasoner(self.encoder, fast, context, anchors)

    def item_scores(self, users: torch.Tensor) -> torch.Tensor:
        """users [..., d] -> [..., num_items + 1] dot products with every item embedding; padding (0) gets -inf."""
        scores = users @ self.encoder.items.weight.T
        scores[..., 0] = float("-inf")
        return scores

    def scores(self, histories: torch.Tensor) -> torch.Tensor:
        """[B, L] histories -> [B, num_items + 1] scores of every item as the next one."""
        return self.item_scores(self.represent(histories).final[:, -1])

    # --- saving -----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, state_dict: dict | None = None) -> None:
        """`state_dict`: the whole weights when the live ones are shards (the loop's backends pass them)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = self.state_dict() if state_dict is None else state_dict
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(directory / WEIGHTS_FILE))
        record = {"settings": self.config.model_settings().__dict__, "num_items": self.num_items, **self.meta}
        (directory / META_FILE).write_text(json.dumps(record, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Recommender:
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise UserError(f"{directory}: not a saved recommender (needs {META_FILE} and {WEIGHTS_FILE})")
        record = json.loads(meta_path.read_text())
        settings = from_dict(ModelSettings, record.pop("settings"), str(meta_path))
        model = cls(settings, int(record.pop("num_items")))
        model.meta = record
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))  # strict: every tensor, no stray one
        return model


def _init_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) weights, zero biases, as RecBole's SASRec initialises."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
