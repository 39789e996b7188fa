"""HRPO's gates (Hybrid Reasoning Policy Optimization, arXiv 2505.18454): how a thinking step's input mixes the
sampled token's embedding e with h^, the normalised mixture of the step's next-token distribution.

    r = sigmoid(W_r e)    i = sigmoid(W_i e)    a = exp(-8 softplus(-Lambda) r)
    input = a * e + sqrt(1 - a^2) * (i * h^)

W_r and W_i are d x d linear layers with biases and Lambda a vector of d, as in the public HRPO code. `reset`
draws Lambda so that exp(-8 softplus(-Lambda)), the value a takes where r = 1, is uniform in [a_min, a_max]
(the paper's [0.99, 0.999]): training starts from almost pure token embeddings.

The module also carries how its inputs are built (`HybridSettings`: the mixture's top-k and temperature, the
text that ends thinking), saved with its weights as a head of the model, so a saved model is evaluated with
the inputs it was trained on (decoding/hybrid.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GATES_HEAD = "hybrid_gates"  # the head's name in LatentLM.heads and latentreason.json
DECAY = 8.0  # the constant c in a = exp(-c softplus(-Lambda) r)


@dataclass(frozen=True)
class HybridSettings:
    top_k: int  # tokens in h^ (the most probable; gathered through the embedding, never a dense product)
    temperature: float  # h^ mixes softmax(logits / temperature): RL's sampling distribution
    answer_marker: str  # thinking ends once the reply's text contains it


class HybridGates(nn.Module):
    def __init__(self, hidden_size: int, top_k: int, temperature: float, answer_marker: str):
        super().__init__()
        self.gate_r = nn.Linear(hidden_size, hidden_size)
        self.gate_i = nn.Linear(hidden_size, hidden_size)
        self.Lambda = nn.Parameter(torch.zeros(hidden_size))
        self.settings = HybridSettings(top_k, temperature, answer_marker)

    @property
    def gate_parameters(self) -> list[nn.Parameter]:
        return [*self.gate_r.parameters(), *self.gate_i.parameters()]

    @torch.no_grad()
    def reset(self, a_min: float, a_max: float, generator: torch.Generator) -> None:
        """W_r, W_i as nn.Linear initialises them (uniform within 1/sqrt(d)) and Lambda for a in [a_min, a_max],
        all drawn from `generator` (CPU), so a run's starting gates depend only on its seed. 0 < a_min <= a_max < 1."""
        bound = 1 / math.sqrt(self.Lambda.shape[0])
        for param in self.gate_parameters:
            param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=generator))
        a = torch.empty(self.Lambda.shape, dtype=torch.float64).uniform_(a_min, a_max, generator=generator)
        # softplus(-Lambda) = -log(a) / c  <=>  Lambda = -log(exp(-log(a) / c) - 1)
        self.Lambda.copy_(-torch.log(torch.expm1(-a.log() / DECAY)))

    def forward(self, token_embeds: torch.Tensor, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the hybrid inputs, a). token_embeds: e [.., d]; mixture: h^ [.., d]."""
        r = torch.sigmoid(self.gate_r(token_embeds))  # [.., d]
        i = torch.sigmoid(self.gate_i(token_embeds))  # [.., d]
        log_a = -DECAY * F.softplus(-self.Lambda) * r  # [.., d]
        # sqrt(1 - a^2) through expm1: exact near a = 1, where training starts; the floor keeps its gradient
        # finite should a round to exactly 1.
        mixed = (-torch.expm1(2 * log_a)).clamp_min(torch.finfo(log_a.dtype).tiny).sqrt()  # [.., d]
        a = log_a.exp()
        return a * token_embeds + mixed * (i * mixture.to(token_embeds.dtype)), a
