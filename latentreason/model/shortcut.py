"""System-1.5's shortcut modules: a router and an adapter per decoder layer (the depth shortcut) and one pair
over whole latent steps (the step shortcut). Saved with the model as the head `shortcut`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortcutAdapter(nn.Module):
    """h + Up(GELU(Down(LayerNorm(h)))): a bottleneck update of a state. Up starts at zero, so a fresh adapter
    returns its input: exiting through it carries the state as it is."""

    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.down = nn.Linear(hidden_size, inner_size)
        self.up = nn.Linear(inner_size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(F.gelu(self.down(self.norm(hidden))))  # [..., d]


class ShortcutRouter(nn.Module):
    """LayerNorm (no weights), Linear -> one logit; sigmoid(logit) = w, the confidence that the adapter can stand
    in for the full computation. The weights start at zero and the bias at `bias`, so every w starts at
    sigmoid(bias) (small: training starts close to the full path), whatever the scale of the states."""

    def __init__(self, hidden_size: int, bias: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, bias)

    def logit(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(hidden)).squeeze(-1)  # [...]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(hidden))  # [...] w in (0, 1)


class ShortcutHeads(nn.Module):
    """routers[l], adapters[l] read the input of decoder layer l; step_router, step_adapter read a latent step's
    input (the thought fed at its slot)."""

    def __init__(self, hidden_size: int, num_layers: int, adapter_size: int = 0, router_bias: float = -2.0):
        super().__init__()
        inner = adapter_size or max(1, hidden_size // 4)
        self.routers = nn.ModuleList(ShortcutRouter(hidden_size, router_bias) for _ in range(num_layers))
        self.adapters = nn.ModuleList(ShortcutAdapter(hidden_size, inner) for _ in range(num_layers))
        self.step_router = ShortcutRouter(hidden_size, router_bias)
        self.step_adapter = ShortcutAdapter(hidden_size, inner)

    @classmethod
    def for_model(cls, base, **kwargs) -> ShortcutHeads:
        return cls(base.config.hidden_size, base.config.num_hidden_layers, **kwargs)
