"""LatentMAS's map from last-layer hidden states back to the input-embedding space (arXiv 2511.20639).

A hidden state h lives where the output embeddings W_out read it, not where the input embeddings W_in
write: fed back as an input it is off-distribution. The ridge alignment W_a solves
    min_W ||W_out W - W_in||^2 + lambda ||W||^2   ->   W_a = (W_out^T W_out + lambda I)^-1 W_out^T W_in
so an output-embedding row maps to its token's input-embedding row, and the latent input is
e = h W_a, rescaled to the mean norm of the input-embedding rows. Without realignment (the reference's
default) e is h itself, rescaled the same way.

W_a is [d, d]: the solve is cheap; the products over the vocabulary are accumulated in chunks so no
float32 copy of a whole embedding matrix is made. It is computed once per model (and ridge), in float32
at least (the model's own dtype when wider), and applied in that precision.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from latentreason.errors import UserError

CHUNK_ROWS = 16384  # vocabulary rows per product: bounds the float32 copies to CHUNK_ROWS x d


@dataclass(frozen=True)
class Alignment:
    matrix: torch.Tensor | None  # [d, d] W_a; None: the identity (the hidden state is only rescaled)
    target_norm: torch.Tensor  # [] mean L2 norm of the input-embedding rows, in the working dtype

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """The latent inputs [b, d] (in `hidden`'s dtype) for the hidden states [b, d]."""
        work = hidden.to(self.target_norm.dtype)  # [b, d]
        aligned = work @ self.matrix if self.matrix is not None else work  # [b, d]
        norm = aligned.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(work.dtype).tiny)  # [b, 1]
        return (aligned * (self.target_norm / norm)).to(hidden.dtype)


@torch.no_grad()
def ridge_alignment(w_in: torch.Tensor, w_out: torch.Tensor, ridge: float, realign: bool = True) -> Alignment:
    """The alignment for input embeddings `w_in` [V, d] and output embeddings `w_out` [V, d]."""
    dtype = torch.promote_types(w_in.dtype, torch.float32)
    d = w_in.shape[1]
    gram = torch.zeros((d, d), dtype=dtype, device=w_in.device)  # W_out^T W_out
    cross = torch.zeros((d, d), dtype=dtype, device=w_in.device)  # W_out^T W_in
    norm_sum = torch.zeros((), dtype=dtype, device=w_in.device)
    for start in range(0, w_in.shape[0], CHUNK_ROWS):
        rows_in = w_in[start : start + CHUNK_ROWS].to(dtype)  # [c, d]
        norm_sum += rows_in.norm(dim=1).sum()
        if realign:
            rows_out = w_out[start : start + CHUNK_ROWS].to(dtype)  # [c, d]
            gram += rows_out.T @ rows_out
            cross += rows_out.T @ rows_in
    target_norm = norm_sum / w_in.shape[0]
    if not realign:
        return Alignment(None, target_norm)
    gram += ridge * torch.eye(d, dtype=dtype, device=w_in.device)
    return Alignment(torch.linalg.solve(gram, cross), target_norm)  # [d, d]


# model -> {(ridge, realign): (weights' storage and version, Alignment)}; dropped with the model
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def alignment_for(lm, ridge: float, realign: bool = True) -> Alignment:
    """`ridge_alignment` of `lm`'s embeddings, computed once per model and recomputed only if the weights
    were modified in place or moved (their storage or version counter changed)."""
    w_in, w_out = lm.embed.weight, lm.lm_head.weight
    if w_in.shape != w_out.shape:
        raise UserError(
            f"LatentMAS aligns output to input embeddings row by row: their shapes differ "
            f"({tuple(w_out.shape)} vs {tuple(w_in.shape)})"
        )
    stamp = tuple((w.data_ptr(), w._version) for w in (w_in, w_out))
    per_model = _CACHE.setdefault(lm.model, {})
    cached = per_model.get((ridge, realign))
    if cached is None or cached[0] != stamp:
        cached = per_model[(ridge, realign)] = (stamp, ridge_alignment(w_in, w_out, ridge, realign))
    return cached[1]
