"""Leave-one-out split and the batches the models read.

Per user with items s_1..s_n: the test target is s_n (history s_1..s_{n-1}), the validation target s_{n-1}
(history s_1..s_{n-2}), and training predicts every s_{i+1} from the items before it for i < n-2. An example
(user, end) is the window of at most `max_len` items before index `end`, padded on the left with 0 (so the
last position holds the latest item), with the item following each position. Training cuts each user's
training items into consecutive windows (every training target appears once per epoch, predicted from the
window's earlier items, as SASRec trains); evaluation reads one window per user, ending before its target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.errors import UserError
from latentreason.rec.data import Sequences

SPLITS = ("valid", "test")


@dataclass
class LeaveOneOut:
    sequences: list[list[int]]
    num_items: int
    max_len: int

    @classmethod
    def of(cls, data: Sequences, max_len: int) -> LeaveOneOut:
        short = sum(len(s) < 3 for s in data.sequences)
        if short:
            raise UserError(f"{data.source}: {short} users have fewer than 3 interactions (train, valid, test)")
        return cls(data.sequences, data.num_items, max_len)

    def train_examples(self) -> torch.Tensor:
        """[E, 2] (user, end) windows covering each user's training targets s_2..s_{n-2} once."""
        pairs = []
        for user, seq in enumerate(self.sequences):
            end = len(seq) - 3  # the window before the last training target (index n-3, 0-based)
            while end >= 1:
                pairs.append((user, end))
                end -= self.max_len
        return torch.tensor(pairs, dtype=torch.long)

    def eval_examples(self, split: str) -> torch.Tensor:
        """[U, 2] (user, end), one per user: its history before the validation or the test target."""
        if split not in SPLITS:
            raise UserError(f"split {split!r}: expected one of {SPLITS}")
        back = 2 if split == "valid" else 1
        return torch.tensor([(u, len(seq) - back) for u, seq in enumerate(self.sequences)], dtype=torch.long)

    def batch(self, examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(histories [B, max_len], next items [B, max_len]) of `examples` [B, 2]: histories[b] holds the items
        before `end` (left-padded with 0), next[b, p] the item after histories[b, p] (0 after padding); so
        next[:, -1] is the target of an evaluation example."""
        L = self.max_len
        histories = torch.zeros(len(examples), L, dtype=torch.long)
        following = torch.zeros(len(examples), L, dtype=torch.long)
        for row, (user, end) in enumerate(examples.tolist()):
            seq = torch.tensor(self.sequences[user])
            start = max(0, end - L)
            histories[row, L - (end - start) :] = seq[start:end]
            following[row, L - (end - start) :] = seq[start + 1 : end + 1]
        return histories, following
