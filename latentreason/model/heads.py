"""Small modules that sit on top of the base model: thought maps, the stop head, the step decoder copy.

Each head type is registered by name so a saved model can rebuild its heads from `latentreason.json`
before loading their weights (strictly) from `heads.safetensors`.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from latentreason.errors import UserError


class GaussianLatentHead(nn.Module):
    """ATP-Latent's latent head: MLP (Linear, GELU, Linear, LayerNorm), then mean and log-variance."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
            nn.LayerNorm(hidden_size),
        )
        self.mean = nn.Linear(hidden_size, hidden_size)
        self.logvar = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(hidden)  # [B, d]
        return self.mean(x), self.logvar(x)  # [B, d], [B, d]


class ProjectorHead(nn.Module):
    """CODI's thought map: Dropout, Linear, GELU, Linear, LayerNorm (hidden state -> next latent input)."""

    def __init__(self, hidden_size: int, inner_size: int = 0, dropout: float = 0.0):
        super().__init__()
        inner = inner_size or hidden_size
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden_size, inner),
            nn.GELU(),
            nn.Linear(inner, hidden_size),
            nn.LayerNorm(hidden_size),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden)  # [..., d]


class StopHead(nn.Module):
    """Linear, GELU, Linear -> 2 logits: index 0 continue thinking, 1 stop."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 2))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)  # [B, 2]


class StepScoreHead(nn.Module):
    """LatentRM's per-step score: Linear, GELU, Linear -> one logit per hidden state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(-1)  # [...]


def step_decoder_model(base, num_hidden_layers: int | None = None, copy_weights: bool = True):
    """A separate causal LM that decodes latents back into text.

    num_hidden_layers None: a full copy of the base model (the reference's choice; doubles the weights).
    An int: a smaller model of the same architecture with that many layers, its embeddings and first
    layers copied from the base model.
    """
    if num_hidden_layers is None:
        return copy.deepcopy(base) if copy_weights else AutoModelForCausalLM.from_config(base.config)
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = num_hidden_layers
    if hasattr(config, "n_layer"):
        config.n_layer = num_hidden_layers
    small = AutoModelForCausalLM.from_config(config)
    if copy_weights:
        # Only the base model's deeper layers may be left out; anything else means a mismatch.
        result = small.load_state_dict(base.state_dict(), strict=False)
        deeper = re.compile(
            rf"\.(?:{'|'.join(str(i) for i in range(num_hidden_layers, base.config.num_hidden_layers))})\."
        )
        unexpected = [k for k in result.unexpected_keys if not deeper.search(k)]
        if result.missing_keys or unexpected:
            raise UserError(
                f"small step decoder: weights do not match the base model "
                f"(missing {result.missing_keys[:3]}, unexpected {unexpected[:3]})"
            )
    return small


def build_head(kind: str, base, **kwargs) -> nn.Module:
    """A head of a registered kind sized for `base` (a PreTrainedModel)."""
    hidden = base.config.hidden_size
    if kind == "gaussian":
        return GaussianLatentHead(hidden)
    if kind == "stop":
        return StopHead(hidden)
    if kind == "step_score":
        return StepScoreHead(hidden)
    if kind == "projector":
        return ProjectorHead(hidden, **kwargs)
    if kind == "step_decoder":
        return step_decoder_model(base, **kwargs)
    if kind == "vqvae":
        from latentreason.model.vqvae import ChunkVQVAE

        return ChunkVQVAE(**kwargs)
    if kind == "lta_prior":
        from latentreason.model.lta_prior import LatentPrior

        return LatentPrior.for_model(base, **kwargs)
    if kind == "shortcut":
        from latentreason.model.shortcut import ShortcutHeads

        return ShortcutHeads.for_model(base, **kwargs)
    if kind == "hybrid_gates":
        from latentreason.model.hybrid_gates import HybridGates

        return HybridGates(hidden, **kwargs)
    raise UserError(
        f"unknown head kind {kind!r}; expected gaussian, stop, step_score, projector, step_decoder, vqvae, lta_prior, "
        "shortcut or hybrid_gates"
    )
