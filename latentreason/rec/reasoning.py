"""Latent reasoning after the encoder: depth (ReaRec) and width (PLR) in one batched module.

Every stream m starts from the encoder's last state h0 (the "fast" answer), plus its learnable trigger token
tau_m under PLR: x_1 = h0 + tau_m + r_1, and feeds each output back as its next input, x_{t+1} = y_t + r_{t+1},
for T steps (r_t: reasoning position embeddings, as in ReaRec). All M streams run as one [B, M, d] call per
step over the shared history cache; a stream attends to the history and to its own steps, never to another
stream (encoder.py). Then per stream a pooled state (mean or last of its T outputs), a gate (a linear score per
pooled state, softmax over streams) that mixes them into the "slow" answer, and a learned blend of fast and
slow. ReaRec is the special case M = 1, no trigger, last state, no blend; SASRec is T = 0.

Training reasons from every history position at once (anchors, see encoder.py); ranking from the last.
The paper's exact formulas for the regulariser, the pooling and the blend are not public in the sources we
could read; the choices here are ours and are ablated in docs/recommendation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentreason.rec.encoder import ContextCache, SequenceEncoder, StreamCache

POOLING = ("mean", "last")


@dataclass
class Reasoned:
    final: torch.Tensor  # [B, A, d] the user representation at each anchor, scored against every item
    streams: torch.Tensor  # [B, A, M, d] each stream's pooled state
    gate: torch.Tensor  # [B, A, M] the mixture weights of the streams
    fast: torch.Tensor  # [B, A, d] the encoder's own state at each anchor, before reasoning


class LatentReasoner(nn.Module):
    def __init__(self, hidden: int, steps: int, streams: int, triggers: bool, pooling: str, blend: bool):
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"pooling {pooling!r}: expected one of {POOLING}")
        self.steps, self.num_streams, self.pooling, self.blend = steps, streams, pooling, blend
        self.positions = nn.Parameter(torch.randn(steps, hidden) * 0.02)  # r_1..r_T
        self.triggers = nn.Parameter(torch.randn(streams, hidden) * 0.02) if triggers else None  # tau_1..tau_M
        self.gate = nn.Linear(hidden, 1) if streams > 1 else None
        self.mix = nn.Parameter(torch.zeros(())) if blend else None  # sigmoid(0) = an even blend to start

    def forward(self, encoder: SequenceEncoder, fast: torch.Tensor, context: ContextCache, anchors: torch.Tensor):
        """fast [B, A, d]: the encoder's states at the anchor positions `anchors` [A]."""
        B, A, d = fast.shape
        x = fast[:, :, None, :].expand(B, A, self.num_streams, d)  # [B, A, M, d]
        if self.triggers is not None:
            x = x + self.triggers
        cache, outputs = StreamCache(), []
        for t in range(self.steps):
            y = encoder.step(x + self.positions[t], context, anchors, cache)  # [B, A, M, d]
            outputs.append(y)
            x = y
        states = torch.stack(outputs, dim=3)  # [B, A, M, T, d]
        pooled = states.mean(3) if self.pooling == "mean" else states[:, :, :, -1]  # [B, A, M, d]
        if self.gate is None:
            gate = fast.new_ones(B, A, 1)
        else:
            gate = torch.softmax(self.gate(pooled).squeeze(-1), dim=-1)  # [B, A, M]
        slow = (gate[..., None] * pooled).sum(2)  # [B, A, d]
        if self.mix is None:
            return Reasoned(slow, pooled, gate, fast)
        weight = torch.sigmoid(self.mix)
        return Reasoned((1 - weight) * fast + weight * slow, pooled, gate, fast)


def stream_similarity(streams: torch.Tensor) -> torch.Tensor:
    """The global reasoning regulariser (our choice): the mean squared cosine similarity over all pairs of
    distinct streams, over the batch; 0 when the M pooled states are orthogonal. streams [N, M, d] -> []."""
    M = streams.shape[1]
    if M < 2:
        return streams.new_zeros(())
    unit = F.normalize(streams, dim=-1)
    cosines = unit @ unit.transpose(1, 2)  # [N, M, M]
    off_diagonal = ~torch.eye(M, dtype=torch.bool, device=streams.device)
    return cosines[:, off_diagonal].pow(2).mean()
