"""Token Assorted's VQ-VAE: each chunk of `chunk_length` CoT tokens becomes one code of a learned codebook.

- Encoder: a small bidirectional transformer over prompt + CoT (its own token embeddings, positions from the
  attention mask), then the mean of its outputs over each chunk's tokens, through a Linear: one vector per chunk.
- Quantizer: the nearest codebook vector by squared distance; the straight-through estimator passes the
  decoder's gradient to the encoder unchanged; codebook loss ||sg(z) - e||^2 and commitment loss
  ||z - sg(e)||^2 (weighted by beta in the objective). Codes left unused are restarted on encoder outputs.
- Decoder: non-autoregressive; the code vector plus a learned embedding of each of the chunk's slots, a
  position-wise MLP (each slot's token is a function of the code and the slot alone: no attention needed),
  a Linear to the text vocabulary: the chunk's tokens, padded with the pad id (so the decoder also says
  where a short last chunk ends).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentreason.engine.batch import left_pad


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row to each vector, by squared Euclidean distance.

    z: [N, d]; codebook: [K, d] -> [N] (ties: the lowest index, as argmin).
    """
    # ||z||^2 - 2 z.e + ||e||^2 without the [N, K, d] difference tensor.
    distances = z.pow(2).sum(-1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(-1)[None]  # [N, K]
    return distances.argmin(-1)


def straight_through(z: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """`quantized` in the forward pass, the identity towards `z` in the backward pass."""
    return z + (quantized - z).detach()


@dataclass
class Quantized:
    codes: torch.Tensor  # [N] chosen code of each vector
    decoder_input: torch.Tensor  # [N, d] codebook vectors, straight-through to the encoder
    codebook_loss: torch.Tensor  # scalar: moves the chosen codes towards the (detached) encoder outputs
    commitment_loss: torch.Tensor  # scalar: keeps the encoder outputs near their (detached) codes


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def forward(self, z: torch.Tensor) -> Quantized:
        codes = nearest_codes(z.detach().float(), self.codebook.weight.detach().float())  # [N]
        chosen = self.codebook(codes)  # [N, d]
        return Quantized(
            codes,
            straight_through(z, chosen),
            F.mse_loss(chosen, z.detach()),
            F.mse_loss(z, chosen.detach()),
        )

    @torch.no_grad()
    def restart(self, dead: torch.Tensor, z: torch.Tensor, generator: torch.Generator) -> int:
        """Move the `dead` codes ([K] bool) onto encoder outputs drawn from `z` [N, d]; returns how many moved."""
        count = int(dead.sum())
        if count == 0 or z.shape[0] == 0:
            return 0
        picks = torch.randint(z.shape[0], (count,), generator=generator).to(z.device)
        self.codebook.weight[dead] = z[picks].to(self.codebook.weight.dtype)
        return count


class ChunkVQVAE(nn.Module):
    """Saved as a LatentLM head (kind "vqvae"); `vocab_size` is the text vocabulary (codes never enter it)."""

    def __init__(
        self,
        vocab_size: int,
        chunk_length: int,
        codebook_size: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        max_positions: int = 1024,
        pad_id: int = 0,
    ):
        super().__init__()
        self.chunk_length, self.pad_id, self.max_positions = chunk_length, pad_id, max_positions
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.positions = nn.Embedding(max_positions, hidden_size)
        self.encoder = _transformer(hidden_size, num_layers, num_heads)
        self.to_latent = nn.Linear(hidden_size, hidden_size)
        self.quantizer = VectorQuantizer(codebook_size, hidden_size)
        self.slots = nn.Embedding(chunk_length, hidden_size)
        self.decoder = nn.Sequential(
            nn.LayerNorm(hidden_size),
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.GELU(),
            nn.Linear(4 * hidden_size, hidden_size),
        )
        self.to_vocab = nn.Linear(hidden_size, vocab_size)

    def chunk_vectors(self, ids: torch.Tensor, mask: torch.Tensor, chunk_of: torch.Tensor) -> torch.Tensor:
        """One encoder vector per chunk, in row-major order.

        ids, mask: [B, T] prompt + CoT (any padding, masked); chunk_of: [B, T] the flat index of the chunk each
        CoT token belongs to (chunks numbered row by row from 0), -1 for prompt tokens and pads.
        """
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0, max=self.max_positions - 1)  # [B, T]
        x = self.embed(ids) + self.positions(positions)  # [B, T, h]
        x = self.encoder(x, src_key_padding_mask=~mask.bool())  # [B, T, h]
        in_chunk = chunk_of >= 0  # [B, T]
        index = chunk_of[in_chunk]  # [M] chunk of each CoT token
        chunks = int(index.max()) + 1 if index.numel() else 0
        sums = x.new_zeros(chunks, x.shape[-1]).index_add(0, index, x[in_chunk])  # [C, h]
        counts = torch.bincount(index, minlength=chunks).clamp(min=1).to(x.dtype)  # [C]
        return self.to_latent(sums / counts[:, None])  # [C, h]

    def decode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Logits [C, chunk_length, vocab] of each chunk's tokens from its (quantized) vector [C, h]."""
        x = vectors[:, None] + self.slots.weight[None]  # [C, L, h]
        return self.to_vocab(x + self.decoder(x))  # [C, L, V]

    def forward(self, ids, mask, chunk_of, targets) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(losses, codes [C], encoder vectors [C, h]); targets: [C, chunk_length] chunk tokens padded with pad_id."""
        z = self.chunk_vectors(ids, mask, chunk_of)  # [C, h]
        quantized = self.quantizer(z)
        logits = self.decode(quantized.decoder_input)  # [C, L, V]
        reconstruction = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        exact = (logits.argmax(-1) == targets).all(-1).float().mean()  # chunks rebuilt token for token
        losses = {
            "reconstruction": reconstruction,
            "codebook": quantized.codebook_loss,
            "commitment": quantized.commitment_loss,
            "exact_chunks": exact.detach(),
        }
        return losses, quantized.codes, z.detach()

    @torch.no_grad()
    def encode(self, ids, mask, chunk_of) -> torch.Tensor:
        """The code [C] of every chunk."""
        return self.quantizer(self.chunk_vectors(ids, mask, chunk_of)).codes


def _transformer(hidden_size: int, num_layers: int, num_heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        hidden_size, num_heads, 4 * hidden_size, dropout=0.0, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


def chunk_batch(prompts: list[list[int]], cots: list[list[int]], chunk_length: int, pad_id: int) -> dict:
    """The VQ-VAE's input for rows of (prompt, CoT): left-padded ids and mask [B, T], `chunk_of` [B, T] (each CoT
    token's flat chunk index, -1 elsewhere) and `targets` [C, chunk_length] (each chunk's tokens, pad_id after)."""
    batch = left_pad([p + c for p, c in zip(prompts, cots)], pad_id)
    width = batch["input_ids"].shape[1]
    chunk_of = torch.full((len(cots), width), -1, dtype=torch.long)  # [B, T]
    targets, first = [], 0
    for row, cot in enumerate(cots):
        count = -(-len(cot) // chunk_length)  # ceil
        if count:
            chunk_of[row, width - len(cot) :] = first + torch.arange(len(cot)) // chunk_length
        for start in range(0, len(cot), chunk_length):
            piece = cot[start : start + chunk_length]
            targets.append(piece + [pad_id] * (chunk_length - len(piece)))
        first += count
    target = torch.tensor(targets, dtype=torch.long).view(len(targets), chunk_length)  # [C, L]
    return {"ids": batch["input_ids"], "mask": batch["attention_mask"], "chunk_of": chunk_of, "targets": target}
