"""Per-row sampling for the step engine: settings as [B] tensors and random draws keyed by row, not by batch.

Every draw is a pure function of (row seed, the row's own step counter, stream, index): a counter-based
generator (splitmix64's finaliser on int64 tensors) instead of a torch.Generator whose sequence is shared by
the whole batch. So a problem's sample is the same whichever problems share its batch, however the batch
is split, and whether other rows have already left it.

Token sampling follows the order of the Soft Thinking reference (SGLang): p = softmax(logits / T), then
top-k, top-p (on the cumulative probability of the sorted, unrenormalised p) and min-p (drop p < min_p x
max p) decide which tokens stay, then the kept p is renormalised. Temperature 0 is greedy. The draw inverts
the kept p's cumulative sum in vocabulary order for every row, so a row's sample does not depend on the
settings of the rows beside it either (rows of different requests share a batch when serving).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from latentreason.errors import ConfigError

STREAM_TOKENS = 0  # which draws a purpose uses, so two uses at one step never share numbers


def _signed(constant: int) -> int:
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> keeps the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser; int64 products wrap modulo 2^64 as the algorithm wants."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def row_uniform(seeds: torch.Tensor, counters: torch.Tensor, stream: int, n: int = 1) -> torch.Tensor:
    """Uniform draws in (0, 1), float64 [B, n]: entry (r, i) depends only on (seeds[r], counters[r], stream, i).

    seeds, counters: [B] int64 (a row's seed, and e.g. how many tokens the row has generated).
    """
    offset = _signed((stream * _GOLDEN) % (1 << 64))  # the wrapped product, as a tensor op would give
    key = _mix(_mix(seeds.long() + offset) + counters.long() * _GOLDEN)  # [B]
    index = torch.arange(1, n + 1, device=seeds.device, dtype=torch.long)  # [n]
    bits = _shift_right(_mix(key[:, None] + index[None] * _GOLDEN), 11)  # [B, n] 53 random bits
    return (bits.double() + 0.5) * 2.0**-53


def row_seeds(seed: int, keys: list[str], samples: int = 1) -> torch.Tensor:
    """[len(keys) x samples] int64 seeds: one per (key, sample), e.g. a problem's question and its sample index.

    Keyed by content, so a problem draws the same numbers wherever it sits in the benchmark."""
    out = []
    for key in keys:
        digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
        base = int.from_bytes(digest, "little") >> 2  # fits int64 with room for + sample
        out += [base + s for s in range(samples)]
    return torch.tensor(out, dtype=torch.long)


@dataclass(frozen=True)
class Sampling:
    """How a row picks its next token. temperature 0 is greedy (and ignores the filters)."""

    temperature: float = 0.0
    top_k: int = 0  # keep the k most probable tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest prefix of the sorted tokens whose probability reaches top_p
    min_p: float = 0.0  # drop tokens with p < min_p x the largest p

    def __post_init__(self):
        checks = {
            "temperature": self.temperature >= 0,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "min_p": 0 <= self.min_p <= 1,
        }
        expected = {"temperature": ">= 0", "top_k": ">= 0", "top_p": "in (0, 1]", "min_p": "in [0, 1]"}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name}: expected {expected[name]}, got {getattr(self, name)!r}")

    def rows(self, batch: int, device=None) -> RowSampling:
        return RowSampling.stack([self] * batch, device)


@dataclass
class RowSampling:
    """Sampling settings per row, [B] each."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor

    row_state = ("temperature", "top_k", "top_p", "min_p")  # engine.slots: every field is per row

    @classmethod
    def stack(cls, settings: list[Sampling], device=None) -> RowSampling:
        def column(name, dtype):
            return torch.tensor([getattr(s, name) for s in settings], dtype=dtype, device=device)

        return cls(
            column("temperature", torch.float32),
            column("top_k", torch.long),
            column("top_p", torch.float32),
            column("min_p", torch.float32),
        )

    def take(self, rows: torch.Tensor) -> RowSampling:
        return RowSampling(self.temperature[rows], self.top_k[rows], self.top_p[rows], self.min_p[rows])


def filtered_logprobs(logits: torch.Tensor, sampling: RowSampling) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs of the kept tokens renormalised, -inf where dropped [B, K]; their token ids [B, K]).

    logits: [B, V] float. Rows with temperature 0 keep only their argmax. Without filters K = V in vocabulary
    order; otherwise the candidates are sorted, most probable first, and K = V, or the largest top-k when
    every row has one (a partial sort instead of a full one)."""
    greedy = sampling.temperature <= 0  # [B]
    scaled = logits / torch.where(greedy, 1.0, sampling.temperature)[:, None]  # [B, V]
    logp = scaled.log_softmax(-1)  # [B, V] over the whole vocabulary, as p is defined
    filters = bool(((sampling.top_k > 0) | (sampling.top_p < 1) | (sampling.min_p > 0) | greedy).any())
    if not filters:  # plain sampling: every token, in vocabulary order
        return logp, torch.arange(logits.shape[1], device=logits.device).expand_as(logits)
    if bool((sampling.top_k > 0).all()):
        values, ids = logp.topk(int(sampling.top_k.max()), dim=-1)  # [B, K]
    else:
        values, ids = logp.sort(dim=-1, descending=True)  # [B, V]
    probs = values.exp()  # [B, K]
    rank = torch.arange(probs.shape[1], device=probs.device)[None]  # [1, K]
    keep = (sampling.top_k[:, None] <= 0) | (rank < sampling.top_k[:, None])
    keep &= (probs.cumsum(-1) - probs) < sampling.top_p[:, None]  # the token that reaches top_p stays
    keep &= probs >= sampling.min_p[:, None] * probs[:, :1]
    keep &= ~greedy[:, None] | (rank == 0)
    return values.masked_fill(~keep, float("-inf")).log_softmax(-1), ids


def draw_ids(logp: torch.Tensor, seeds: torch.Tensor, counters: torch.Tensor, n: int = 1) -> torch.Tensor:
    """[B, n] ids drawn i.i.d. from exp(logp) [B, V] (-inf: never), walking the vocabulary in its own order;
    draw i of row r depends only on (seeds[r], counters[r], i), see `row_uniform`."""
    cdf = logp.double().exp().cumsum(-1)  # [B, V]
    u = row_uniform(seeds, counters, STREAM_TOKENS, n) * cdf[:, -1:]  # [B, n]
    return torch.searchsorted(cdf, u, right=True).clamp(max=logp.shape[1] - 1)  # [B, n]: first cdf > u


def sample_tokens(
    logits: torch.Tensor, sampling: RowSampling, seeds: torch.Tensor, counters: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(next ids [B], their log-probs [B]) from logits [B, V].

    A sampled row's log-prob is under the distribution it was drawn from (after the filters); a greedy
    row's is under softmax(logits), as RL and the trace want. seeds, counters: [B] (see `row_uniform`)."""
    greedy = sampling.temperature <= 0  # [B]
    if bool(greedy.all()):
        ids = logits.argmax(-1)  # [B]
        return ids, logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    logp, candidates = filtered_logprobs(logits, sampling)  # [B, K]
    # The draw walks the vocabulary in its own order for every row: the sorted order that filters give would
    # make a row's sample depend on whether other rows in its batch filter.
    logp = logp.new_full(logits.shape, float("-inf")).scatter(1, candidates, logp)  # [B, V]
    pick = draw_ids(logp, seeds, counters)  # [B, 1]
    ids = pick.squeeze(-1)  # [B] vocabulary order
    logprob = logp.gather(-1, pick).squeeze(-1)
    argmax = logits.argmax(-1)
    ids = torch.where(greedy, argmax, ids)
    greedy_logprob = logits.log_softmax(-1).gather(-1, argmax[:, None]).squeeze(-1)
    return ids, torch.where(greedy, greedy_logprob, logprob)
