"""The step engine: one batched loop on one KV cache in which each row's next input is a token or an embedding.

    prefix   the prompts' prefill (one call), optionally repeated for N samples per prompt (cache rows
             repeated, not recomputed)
    step t   the policy sees every row still running (its hidden state, lazily its logits) and chooses,
             per row, a token id or an input embedding, and whether the row ends here; queued forced
             tokens (an end-of-thinking text, an agent's prompt) replace its choice
    feed     rows that ended leave the batch (cache rows selected), the others run one call

A policy keeps its own per-row state in full-size [B] tensors indexed by `view.rows` (each running row's
original index), so rows leaving the batch cost it nothing. `run_steps` returns a `Trace`: per row and step
the kind of input, the token (fed, or recorded for an embedding step), its log-prob, and optionally the
entropy, top-1 token and hidden state. Its loop is a `StepLoop`, which a server drives itself to let rows
join between steps (engine/continuous.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import DynamicCache

from latentreason.engine.batch import left_pad
from latentreason.engine.compat import cache_kwargs
from latentreason.engine.forward import forward_step, new_cache

NONE, TOKEN, EMBED, FORCED = (
    0,
    1,
    2,
    3,
)  # trace kinds: no step (the row had ended), chosen token, embedding, forced token


@dataclass
class Prefix:
    """What the cache holds for each running row, and the hidden state that predicts its next input."""

    cache: DynamicCache
    attention_mask: torch.Tensor  # [b, S] over the cache
    hidden: torch.Tensor  # [b, d]
    rows: torch.Tensor | None = None  # [b] original row of each; None: 0..b-1

    def __post_init__(self):
        if self.rows is None:
            self.rows = torch.arange(self.hidden.shape[0], device=self.hidden.device)


@torch.no_grad()
def prefill(lm, prompts: list[list[int]], samples: int = 1) -> Prefix:
    """The left-padded prompts in one call; with `samples` > 1 each row is repeated that many times in a
    row (row i x samples + s is sample s of prompt i), sharing the one prefill."""
    batch = left_pad(prompts, lm.pad_id)
    mask = batch["attention_mask"].to(lm.device)  # [B, P]
    cache = new_cache(lm)
    hidden = forward_step(lm, cache, mask, input_ids=batch["input_ids"].to(lm.device))[:, -1]  # [B, d]
    if samples > 1:
        cache.batch_repeat_interleave(samples)
        mask, hidden = mask.repeat_interleave(samples, 0), hidden.repeat_interleave(samples, 0)
    return Prefix(cache, mask, hidden)


@dataclass
class StepChoice:
    """A policy's decision for the b running rows."""

    tokens: torch.Tensor  # [b] token fed (for an embedding step: the token recorded, e.g. its top-1)
    embeds: torch.Tensor | None = None  # [b, d] inputs of the rows with is_embed (anything elsewhere)
    is_embed: torch.Tensor | None = None  # [b] bool; None: every row feeds its token
    logprobs: torch.Tensor | None = None  # [b] log-prob of the chosen token (recorded in the trace)
    finished: torch.Tensor | None = None  # [b] bool: the row ends with this step (recorded, not fed)
    forced: torch.Tensor | None = None  # [b] bool: the token is imposed, not chosen (traced as FORCED)


class ForcedQueue:
    """Tokens waiting to be fed to rows in place of their policy's choice, first in first out. [B, Q] ids."""

    def __init__(self, batch: int, device):
        self.ids = torch.zeros((batch, 0), dtype=torch.long, device=device)  # [B, Q]
        self.head = torch.zeros(batch, dtype=torch.long, device=device)  # [B] next to feed
        self.end = torch.zeros(batch, dtype=torch.long, device=device)  # [B] one past the last queued
        self.maybe_pending = False  # False: certainly nothing queued (skips the checks)

    def push(self, rows: torch.Tensor, ids: list[int]) -> None:
        """Queue `ids` after whatever rows [n] (original indices) already wait for."""
        if not ids or rows.numel() == 0:
            return
        n = len(ids)
        at = self.end[rows][:, None] + torch.arange(n, device=rows.device)[None]  # [n_rows, n]
        width = int(at.max()) + 1
        if width > self.ids.shape[1]:  # grow only as far as the furthest row needs (rows reset by `reset` reuse it)
            self.ids = torch.cat([self.ids, self.ids.new_zeros((self.ids.shape[0], width - self.ids.shape[1]))], 1)
        self.ids[rows[:, None], at] = torch.tensor(ids, device=rows.device)
        self.end[rows] += n
        self.maybe_pending = True

    def pop(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(has [b] bool, ids [b]) for the running rows [b], advancing those that had one; None if none waits."""
        if not self.maybe_pending:
            return None
        has = self.head[rows] < self.end[rows]  # [b]
        if not bool(has.any()):
            self.maybe_pending = bool((self.head < self.end).any())
            return None
        ids = self.ids[rows, self.head[rows].clamp(max=self.ids.shape[1] - 1)]  # [b]
        self.head[rows] += has.long()
        return has, ids

    def reset(self, rows: torch.Tensor) -> None:
        """Forget whatever rows [n] (original indices) still wait for: new rows take their places."""
        self.head[rows] = 0
        self.end[rows] = 0

    def pending(self, rows: torch.Tensor) -> torch.Tensor:
        """[b] bool: rows with tokens still queued."""
        return self.head[rows] < self.end[rows]


@dataclass
class StepView:
    """What a policy sees at step t: the running rows and their hidden states."""

    lm: object
    t: int  # steps the loop has taken (the same for every row: they all start at the prefix)
    rows: torch.Tensor  # [b] original row index of each running row
    hidden: torch.Tensor  # [b, d] the state that predicts each row's next input
    queue: ForcedQueue

    @cached_property
    def logits(self) -> torch.Tensor:
        return self.lm.lm_head(self.hidden).float()  # [b, V]

    @cached_property
    def entropy(self) -> torch.Tensor:
        """[b] entropy of softmax(logits), unfiltered and at temperature 1."""
        logp = self.logits.log_softmax(-1)
        return -(logp.exp() * logp).sum(-1)

    def force(self, rows: torch.Tensor, ids: list[int]) -> None:
        """Queue `ids` for the running rows at positions `rows` [n] (indices into this view); the first is fed
        at this very step."""
        self.queue.push(self.rows[rows], ids)


@dataclass
class Trace:
    """Per row (original order) and step. Steps a row did not take have kind NONE."""

    kind: torch.Tensor  # [B, S] int8
    tokens: torch.Tensor  # [B, S] token fed or recorded (pad_id where NONE)
    logprobs: torch.Tensor  # [B, S] the policy's log-prob of the token (0 where it gave none)
    entropy: torch.Tensor | None = None  # [B, S] with stats (nan where NONE)
    top1: torch.Tensor | None = None  # [B, S] with stats (-1 where NONE)
    hidden: torch.Tensor | None = None  # [B, S, d] with keep_hidden: the state each input was chosen from
    # The rows in the batch at the last step when max_steps ended the loop (that step's inputs not fed yet)
    state: Prefix | None = field(default=None, repr=False)

    @property
    def steps(self) -> torch.Tensor:
        """[B] steps each row took."""
        return (self.kind != NONE).sum(1)

    def count(self, kind: int) -> torch.Tensor:
        """[B] steps of `kind` per row."""
        return (self.kind == kind).sum(1)

    def packed(self, kind: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [B, T], log-probs [B, T], lengths [B]) of each row's steps of `kind`, left-aligned in order."""
        chosen = self.kind == kind  # [B, S]
        lengths = chosen.sum(1)  # [B]
        order = torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices  # [B, S] chosen steps first
        width = int(lengths.max()) if lengths.numel() else 0
        order = order[:, :width]
        valid = torch.arange(width, device=lengths.device)[None] < lengths[:, None]  # [B, T]
        tokens = torch.where(valid, self.tokens.gather(1, order), pad_id)
        logprobs = torch.where(valid, self.logprobs.gather(1, order), 0.0)
        return tokens, logprobs, lengths


@dataclass
class StepRecord:
    """One step's outcome for the b rows that ran it (batch order), before any of them is fed."""

    view: StepView  # what the policy saw (its hidden states, lazily logits and entropy)
    tokens: torch.Tensor  # [b] token fed or recorded
    kind: torch.Tensor  # [b] int8 TOKEN, EMBED or FORCED
    logprobs: torch.Tensor | None  # [b] the policy's log-prob (0 where forced); None when it gave none
    finished: torch.Tensor | None  # [b] bool: the row ends with this step
    embeds: torch.Tensor | None  # [b, d] the policy's embeddings (where is_embed)
    is_embed: torch.Tensor | None  # [b] bool

    @property
    def rows(self) -> torch.Tensor:
        return self.view.rows


class StepLoop:
    """The step engine's loop as an object, so a caller can act between steps.

    `choose()` asks the policy for every running row's next input (queued forced tokens win) and returns the
    step's record; `feed(record)` drops the rows that finished (and any the caller ends), then runs the others
    through the model. Between steps, `admit(prefix)` merges newly prefilled rows into the running batch
    (continuous batching): the shorter cache is left-padded with masked positions, which change no row's
    positions (they come from the attention mask). A policy whose rows join mid-flight must not read `view.t`,
    which counts the loop's steps, not the row's.
    """

    def __init__(self, lm, prefix: Prefix, policy, batch_size: int | None = None, on_feed=None):
        self.lm, self.policy, self.on_feed = lm, policy, on_feed
        self._start(prefix)
        rows = self.rows
        self.total = batch_size or (int(rows.max()) + 1 if rows.numel() else 0)  # original rows B
        self.positions = self.mask.sum(1)  # [b] the position of each row's next input
        self.queue = ForcedQueue(self.total, self.hidden.device)
        self.t = 0

    def _start(self, prefix: Prefix) -> None:
        self.cache, self.mask, self.hidden, self.rows = prefix.cache, prefix.attention_mask, prefix.hidden, prefix.rows

    @property
    def running(self) -> int:
        return self.rows.shape[0]

    def state(self) -> Prefix:
        return Prefix(self.cache, self.mask, self.hidden, self.rows)

    def choose(self) -> StepRecord:
        view = StepView(self.lm, self.t, self.rows, self.hidden, self.queue)
        choice = self.policy.step(view)
        tokens, is_embed, finished = choice.tokens, choice.is_embed, choice.finished
        kind = torch.full_like(tokens, TOKEN, dtype=torch.int8)
        if is_embed is not None:
            kind = torch.where(is_embed, EMBED, kind).to(torch.int8)
        if choice.forced is not None:
            kind = torch.where(choice.forced, FORCED, kind).to(torch.int8)
        popped = self.queue.pop(self.rows)
        if popped is not None:  # a queued token replaces the policy's choice and keeps its row running
            has, ids = popped
            tokens = torch.where(has, ids, tokens)
            kind = torch.where(has, FORCED, kind).to(torch.int8)
            is_embed = is_embed & ~has if is_embed is not None else None
            finished = finished & ~has if finished is not None else None
        logprobs = choice.logprobs
        if logprobs is not None:
            logprobs = torch.where(kind == FORCED, 0.0, logprobs.float())
        return StepRecord(view, tokens, kind, logprobs, finished, choice.embeds, is_embed)

    def feed(self, record: StepRecord, end: torch.Tensor | None = None) -> None:
        """Feed the record's rows, except those that finished or that `end` [b] (bool) ends."""
        finished = record.finished
        if end is not None:
            finished = end if finished is None else finished | end
        tokens, embeds, is_embed = record.tokens, record.embeds, record.is_embed
        if finished is not None and bool(finished.any()):  # the one sync per step
            stay = self._keep(finished)
            if stay.numel() == 0:
                return
            tokens = tokens[stay]
            embeds = embeds[stay] if is_embed is not None else None
            is_embed = is_embed[stay] if is_embed is not None else None
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)  # [b, S+1]
        if self.on_feed is not None:
            self.on_feed(self.rows, self.t)
        self.hidden = _feed(self.lm, self.cache, self.mask, self.positions, tokens, embeds, is_embed)
        self.positions = self.positions + 1
        self.t += 1

    def remove(self, leaving: torch.Tensor) -> None:
        """Rows leave between steps: `leaving` [b] bool over the running rows."""
        self._keep(leaving)

    def _keep(self, leaving: torch.Tensor) -> torch.Tensor:
        """Keep the running rows that are not `leaving` [b]; returns their positions [b'] in the old batch."""
        stay = (~leaving).nonzero().squeeze(1)  # [b']
        self.rows, self.mask, self.positions, self.hidden = (
            self.rows[stay],
            self.mask[stay],
            self.positions[stay],
            self.hidden[stay],
        )
        if stay.numel():
            self.cache.batch_select_indices(stay)
        return stay

    def admit(self, prefix: Prefix) -> None:
        """Merge prefilled rows (their original indices in `prefix.rows`, each free) into the running batch."""
        from latentreason.engine.join import join_caches

        self.queue.reset(prefix.rows)
        if self.running == 0:
            self._start(prefix)
        else:
            self.mask = join_caches(self.cache, self.mask, prefix.cache, prefix.attention_mask)
            self.hidden = torch.cat([self.hidden, prefix.hidden.to(self.hidden.dtype)])
            self.rows = torch.cat([self.rows, prefix.rows.to(self.rows.device)])
        self.positions = self.mask.sum(1)


@torch.no_grad()
def run_steps(
    lm,
    prefix: Prefix,
    policy,
    max_steps: int,
    batch_size: int | None = None,
    stats: bool = False,
    keep_hidden: bool = False,
    on_feed=None,
) -> Trace:
    """Run `policy` (an object with `step(view) -> StepChoice`) from `prefix` for at most `max_steps` steps.

    batch_size: the number of original rows B (default: the prefix's rows). stats: record the entropy and
    top-1 token of every step (one LM-head call per step when the policy made none). on_feed(rows [b], t):
    called just before step t's inputs go through the model, with the original index of each row fed, in
    batch order (for hooks inside the model that treat rows differently).
    """
    loop = StepLoop(lm, prefix, policy, batch_size, on_feed)
    total, device, hidden = loop.total, prefix.hidden.device, prefix.hidden
    kind = torch.zeros((total, max_steps), dtype=torch.int8, device=device)  # [B, S]
    tokens = torch.full((total, max_steps), lm.pad_id, dtype=torch.long, device=device)  # [B, S]
    logprobs = torch.zeros((total, max_steps), device=device)  # [B, S]
    entropy = torch.full((total, max_steps), float("nan"), device=device) if stats else None  # [B, S]
    top1 = torch.full((total, max_steps), -1, dtype=torch.long, device=device) if stats else None  # [B, S]
    kept = hidden.new_zeros((total, max_steps, hidden.shape[-1])) if keep_hidden else None  # [B, S, d]
    state = prefix if max_steps == 0 else None
    for t in range(max_steps):
        record = loop.choose()
        rows = record.rows
        kind[rows, t] = record.kind
        tokens[rows, t] = record.tokens
        if record.logprobs is not None:
            logprobs[rows, t] = record.logprobs
        if stats:
            entropy[rows, t] = record.view.entropy
            top1[rows, t] = record.view.logits.argmax(-1)
        if keep_hidden:
            kept[rows, t] = record.view.hidden.to(kept.dtype)
        if t == max_steps - 1:  # the last step's choice is recorded, never fed
            state = loop.state()
            break
        loop.feed(record)
        if loop.running == 0:
            break
    return Trace(kind, tokens, logprobs, entropy, top1, kept, state)


def _feed(lm, cache, mask, positions, tokens, embeds, is_embed) -> torch.Tensor:
    """One call with each row's input (token ids, or embeddings where is_embed); the new hidden states [b, d]."""
    if is_embed is None:
        inputs = {"input_ids": tokens[:, None]}  # [b, 1]
    else:
        token_embeds = lm.embed(tokens.clamp(min=0))  # [b, d] (an embedding row may carry a -1 token)
        mixed = torch.where(is_embed[:, None], embeds.to(token_embeds.dtype), token_embeds)  # [b, d]
        inputs = {"inputs_embeds": mixed[:, None]}  # [b, 1, d]
    out = lm.backbone(
        **inputs,
        attention_mask=mask,
        position_ids=positions[:, None],  # [b, 1]
        use_cache=True,
        **cache_kwargs(lm.backbone, cache),
    )
    return out.last_hidden_state[:, -1]  # [b, d]
