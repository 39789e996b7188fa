"""Latent-SFT stage 1: the two sequences and their attention masks ("induction-supervision masking").

The CoT is cut into chunks of `chunk` tokens (the last may be shorter); chunk i gets latent slot i.

Encoder sequence (induction): `prompt c1 S1 c2 S2 ... cn Sn`. Causal, except that no position attends to an
earlier slot S: each slot reads the question and the CoT up to the end of its chunk, never other latents.

Decoder sequence (supervision): `prompt <bot> L1 c2 L2 c3 ... Ln <eot> answer`.
  context (prompt, <bot>)   causal among themselves
  latent L_j                the context, earlier latents, itself
  chunk c_{j+1} after L_j   L_j and its own earlier tokens only: L_j must carry the next chunk
  tail (<eot>, answer)      the context, every latent, earlier tail tokens; never the CoT
Positions are those of the inference layout `prompt <bot> L1..Ln <eot> answer` (a chunk continues from its
latent's position), so the answer is trained at exactly the geometry it is decoded at.
Sequences are right-padded; a pad position attends only to itself (no query row is empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.engine.batch import IGNORE

PAD, CONTEXT, LATENT, CHUNK, TAIL = -1, 0, 1, 2, 3


def chunks_of(cot: list[int], chunk: int) -> list[list[int]]:
    return [cot[i : i + chunk] for i in range(0, len(cot), chunk)]


@dataclass
class Packed:
    ids: torch.Tensor  # [B, T] right-padded
    valid: torch.Tensor  # [B, T] True where a real token (or slot) sits
    is_slot: torch.Tensor  # [B, T] True at latent slots
    positions: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T, T] bool, True where query (dim 1) may attend to key (dim 2)
    labels: torch.Tensor | None = None  # [B, T] answer labels (<eot> + answer), IGNORE elsewhere
    chunk_labels: torch.Tensor | None = None  # [B, T] chunk-token labels, IGNORE elsewhere

    def to(self, device) -> Packed:
        return Packed(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in self.__dict__.items()})

    @property
    def num_tokens(self) -> int:
        return int(self.valid.sum())


def _pad(rows: list[list[int]], fill: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.long)


def induction_mask(is_slot: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, T, T]: causal, minus every earlier slot as a key. is_slot, valid: [B, T] bool."""
    t = torch.arange(is_slot.shape[1], device=is_slot.device)
    causal = t[None, :] <= t[:, None]  # [T, T] (query, key)
    earlier_slot = is_slot[:, None, :] & (t[None, :] < t[:, None])[None]  # [B, T, T]
    keep = causal[None] & ~earlier_slot & valid[:, :, None] & valid[:, None, :]
    return keep | torch.eye(len(t), dtype=torch.bool, device=t.device)[None]


def supervision_mask(roles: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
    """[B, T, T] from each position's role (PAD/CONTEXT/LATENT/CHUNK/TAIL) and owner (the latent a chunk
    token follows, and a latent's own index; -1 elsewhere). roles, owners: [B, T] long."""
    t = torch.arange(roles.shape[1], device=roles.device)
    causal = (t[None, :] <= t[:, None])[None]  # [1, T, T]
    q, k = roles[:, :, None], roles[:, None, :]  # [B, T, 1], [B, 1, T]
    same_owner = owners[:, :, None] == owners[:, None, :]  # [B, T, T]
    keep = (q == CONTEXT) & (k == CONTEXT)
    keep |= (q == LATENT) & ((k == CONTEXT) | (k == LATENT))
    keep |= (q == CHUNK) & ((k == LATENT) | (k == CHUNK)) & same_owner
    keep |= (q == TAIL) & ((k == CONTEXT) | (k == LATENT) | (k == TAIL))
    return (keep & causal) | torch.eye(len(t), dtype=torch.bool, device=t.device)[None]


def encoder_batch(prompts: list[list[int]], cots: list[list[int]], chunk: int, slot_id: int, pad_id: int) -> Packed:
    """The encoder sequences `prompt c1 S1 ... cn Sn` with the induction mask."""
    ids, slots = [], []
    for prompt, cot in zip(prompts, cots):
        row, slot = list(prompt), [0] * len(prompt)
        for piece in chunks_of(cot, chunk):
            row += piece + [slot_id]
            slot += [0] * len(piece) + [1]
        ids.append(row)
        slots.append(slot)
    valid = _pad([[1] * len(r) for r in ids], 0).bool()
    is_slot = _pad(slots, 0).bool()
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0) * valid
    return Packed(_pad(ids, pad_id), valid, is_slot, positions, induction_mask(is_slot, valid))


def decoder_batch(lm, prompts: list[list[int]], cots: list[list[int]], answers: list[list[int]], chunk: int) -> Packed:
    """The decoder sequences `prompt <bot> L1 c2 L2 ... Ln <eot> answer` with the supervision mask; latent
    slots hold `<|latent|>` ids (their inputs are the encoder's superpositions)."""
    ids, roles, owners, positions, labels, chunk_labels = ([] for _ in range(6))
    for prompt, cot, answer in zip(prompts, cots, answers):
        pieces = chunks_of(cot, chunk)
        start = len(prompt) + 1  # position of L1
        row, role = prompt + [lm.bot_id], [CONTEXT] * (len(prompt) + 1)
        owner, pos = [-1] * len(row), list(range(len(row)))
        row_chunk_labels = [IGNORE] * len(row)
        for j in range(len(pieces)):
            row.append(lm.latent_id)
            role.append(LATENT)
            owner.append(j)
            pos.append(start + j)
            row_chunk_labels.append(IGNORE)
            following = pieces[j + 1] if j + 1 < len(pieces) else []
            row += following
            role += [CHUNK] * len(following)
            owner += [j] * len(following)
            pos += [start + j + 1 + i for i in range(len(following))]
            row_chunk_labels += following
        tail = [lm.eot_id] + answer
        row_labels = [IGNORE] * len(row) + tail
        pos += [start + len(pieces) + i for i in range(len(tail))]
        row += tail
        role += [TAIL] * len(tail)
        owner += [-1] * len(tail)
        row_chunk_labels += [IGNORE] * len(tail)
        for out, value in zip(
            (ids, roles, owners, positions, labels, chunk_labels), (row, role, owner, pos, row_labels, row_chunk_labels)
        ):
            out.append(value)
    roles_t = _pad(roles, PAD)
    return Packed(
        ids=_pad(ids, lm.pad_id),
        valid=roles_t != PAD,
        is_slot=roles_t == LATENT,
        positions=_pad(positions, 0),
        mask=supervision_mask(roles_t, _pad(owners, -1)),
        labels=_pad(labels, IGNORE),
        chunk_labels=_pad(chunk_labels, IGNORE),
    )
