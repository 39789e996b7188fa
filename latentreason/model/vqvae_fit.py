"""Stage 1 of Token Assorted: fit the chunk VQ-VAE on the training CoTs, then read off every chunk's code.

AdamW on reconstruction CE + codebook loss + beta x commitment loss. After the first step and then every
`restart_every` steps, codes no chunk chose since the last check are moved onto encoder outputs of the
current batch (the dead-code fix), so the whole codebook stays in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.model.vqvae import ChunkVQVAE, chunk_batch


@dataclass
class VQFit:
    steps: int = 300  # optimizer steps
    batch_size: int = 64  # (prompt, CoT) rows per step
    learning_rate: float = 1e-3
    beta: float = 0.25  # commitment weight
    restart_every: int = 50  # steps between dead-code restarts (0: never)
    seed: int = 0


def batches(rows: list[tuple[list[int], list[int]]], size: int, generator: torch.Generator):
    """Endless shuffled batches of row indices (each epoch a new permutation)."""
    while True:
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, max(len(order) - size, 0) + 1, size):  # fewer rows than `size`: one batch of all
            yield order[start : start + size]


def fit_vqvae(vqvae: ChunkVQVAE, rows: list[tuple[list[int], list[int]]], fit: VQFit, device) -> dict[str, float]:
    """Train `vqvae` in place on (prompt, CoT) id rows whose CoT is not empty; returns the last step's metrics."""
    generator = torch.Generator().manual_seed(fit.seed)
    vqvae.train()
    optimizer = torch.optim.AdamW(vqvae.parameters(), lr=fit.learning_rate, weight_decay=0.0)
    used = torch.zeros(vqvae.quantizer.codebook.num_embeddings, dtype=torch.bool, device=device)  # since last check
    metrics: dict[str, float] = {}
    restarted = 0
    for step, picked in zip(range(fit.steps), batches(rows, fit.batch_size, generator)):
        batch = chunk_batch(
            [rows[i][0] for i in picked], [rows[i][1] for i in picked], vqvae.chunk_length, vqvae.pad_id
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        losses, codes, z = vqvae(batch["ids"], batch["mask"], batch["chunk_of"], batch["targets"])
        total = losses["reconstruction"] + losses["codebook"] + fit.beta * losses["commitment"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        used[codes] = True
        # After the first step the codebook restarts on encoder outputs (its uniform init is far from them).
        if fit.restart_every and (step == 0 or (step + 1) % fit.restart_every == 0) and step + 1 < fit.steps:
            restarted += vqvae.quantizer.restart(~used, z, generator)
            used.zero_()
        metrics = {k: float(v.detach()) for k, v in losses.items()}
    vqvae.eval()
    return {**metrics, "restarted_codes": float(restarted)}


@torch.no_grad()
def assign_codes(vqvae: ChunkVQVAE, rows: list[tuple[list[int], list[int]]], device, batch_size: int = 256):
    """The codes of every row's chunks: a list (one per row) of code lists."""
    out = []
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        batch = chunk_batch([r[0] for r in part], [r[1] for r in part], vqvae.chunk_length, vqvae.pad_id)
        codes = vqvae.encode(batch["ids"].to(device), batch["mask"].to(device), batch["chunk_of"].to(device)).tolist()
        for _, cot in part:
            count = -(-len(cot) // vqvae.chunk_length)
            out.append(codes[:count])
            codes = codes[count:]
    return out
