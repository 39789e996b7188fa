"""Noise keyed by row, built on `sampling.row_uniform`: Gaussian, Gumbel and Gamma/Dirichlet draws whose
values depend only on (row seed, the row's counter, stream), never on the batch they are drawn in."""

from __future__ import annotations

import math

import torch

from latentreason.engine.sampling import row_uniform

GAMMA_ROUNDS = 12  # Marsaglia-Tsang proposals per draw; each is accepted with probability > 0.95


def row_normal(seeds: torch.Tensor, counters: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """Standard normal draws, float64 [B, n] (Box-Muller on pairs of row uniforms)."""
    u = row_uniform(seeds, counters, stream, 2 * n).view(-1, n, 2)  # [B, n, 2]
    return torch.sqrt(-2 * u[..., 0].log()) * torch.cos(2 * math.pi * u[..., 1])


def row_gumbel(seeds: torch.Tensor, counters: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """Standard Gumbel draws, float64 [B, n]."""
    return -(-row_uniform(seeds, counters, stream, n).log()).log()


def row_gamma(shape: torch.Tensor, seeds: torch.Tensor, counters: torch.Tensor, stream: int) -> torch.Tensor:
    """Gamma(shape, 1) draws, float64 [B, n], for shape [B, n] > 0 (Marsaglia-Tsang; shapes below 1 are
    boosted: Gamma(a) = Gamma(a + 1) x U^(1/a)). A draw whose every proposal is rejected (probability
    below 0.05^12) takes the mean."""
    b, n = shape.shape
    a = shape.double()
    boosted = a + (a < 1).double()  # [B, n] >= 1
    d = boosted - 1 / 3
    c = 1 / torch.sqrt(9 * d)
    u = row_uniform(seeds, counters, stream, n * (3 * GAMMA_ROUNDS + 1)).view(b, n, -1)  # [B, n, 3R+1]
    normal = torch.sqrt(-2 * u[..., 0:GAMMA_ROUNDS].log()) * torch.cos(
        2 * math.pi * u[..., GAMMA_ROUNDS : 2 * GAMMA_ROUNDS]
    )
    accept_u = u[..., 2 * GAMMA_ROUNDS : 3 * GAMMA_ROUNDS]  # [B, n, R]
    v = (1 + c[..., None] * normal) ** 3  # [B, n, R]
    ok = (v > 0) & (accept_u.log() < 0.5 * normal**2 + d[..., None] * (1 - v + v.clamp(min=1e-300).log()))
    first = ok.int().argmax(-1, keepdim=True)  # [B, n, 1] the first accepted proposal
    draw = (d[..., None] * v).gather(-1, first).squeeze(-1)  # [B, n]
    draw = torch.where(ok.any(-1), draw, boosted)
    boost = torch.where(a < 1, u[..., -1] ** (1 / a), torch.ones_like(a))
    return draw * boost


def row_dirichlet(
    concentration: torch.Tensor, seeds: torch.Tensor, counters: torch.Tensor, stream: int
) -> torch.Tensor:
    """Dirichlet draws [B, n] for concentration [B, n]; entries with concentration 0 get weight 0."""
    positive = concentration > 0
    gammas = row_gamma(torch.where(positive, concentration.double(), 1.0), seeds, counters, stream) * positive
    return gammas / gammas.sum(-1, keepdim=True)
