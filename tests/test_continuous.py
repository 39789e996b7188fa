"""Continuous batching (engine/continuous.py, engine/join.py, engine/slots.py): a request whose rows join a
running batch mid-flight, beside rows with other prompts, sampling settings, limits and decoders' states,
gets token for token what it gets alone. float64 tiny models, so "equal" is exact for tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from latentreason.decoding import DecodeContext, decoder_from_args
from latentreason.engine.continuous import ContinuousBatch
from latentreason.engine.decode import TokenPolicy
from latentreason.engine.join import join_caches
from latentreason.engine.rollout import LatentThenAnswer, fixed_latents, latent_rollout
from latentreason.engine.sampling import Sampling, row_seeds
from latentreason.engine.steps import ForcedQueue, prefill
from latentreason.model.hybrid_gates import GATES_HEAD, HybridGates
from tests.helpers import EXACT, MODEL_TYPES, build_tiny_lm
from tests.test_steps import lm64, prompts_for


@dataclass
class Request:
    prompt: list[int]
    sampling: Sampling = Sampling()
    seed: int = 0
    samples: int = 1
    max_new_tokens: int = 8
    arrives: int = 0  # the step boundary at which it joins

    def context(self, lm, stop_ids, think_end) -> DecodeContext:
        return DecodeContext(
            prompts=[self.prompt],
            stop_ids=stop_ids,
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling.rows(self.samples),
            seeds=row_seeds(self.seed, ["request"], self.samples),
            think_start=[lm.bot_id],
            think_end=think_end,
            samples=self.samples,
        )


def serve(lm, requests: list[Request], build, capacity: int, limit=lambda r: r.max_new_tokens) -> dict:
    """Drive a ContinuousBatch: each request joins at its step boundary (those arriving together share one
    prefill). build(request or None, rows) -> the policy for its rows (None: the batch's, for every slot).
    Returns {(request index, sample): tokens}."""
    batch = ContinuousBatch(lm, build(None, capacity), capacity)
    out, owner, step = {}, {}, 0
    waiting = sorted(range(len(requests)), key=lambda i: requests[i].arrives)
    while waiting or batch.running:
        joining = [i for i in waiting if requests[i].arrives <= step]
        if joining:
            waiting = [i for i in waiting if i not in joining]
            chosen = [requests[i] for i in joining]
            slots = batch.admit(
                [r.prompt for r in chosen],
                [r.samples for r in chosen],
                [limit(r) for r in chosen],
                [build(r, r.samples) for r in chosen],
            ).tolist()
            keys = [(i, s) for i in joining for s in range(requests[i].samples)]
            for slot, key in zip(slots, keys):
                owner[slot], out[key] = key, []
        if batch.running:
            record = batch.choose()
            for slot, token in zip(record.rows.tolist(), record.tokens.tolist()):
                out[owner[slot]].append(token)
            batch.feed(record)
        step += 1
    return out


def mixed_requests(lm) -> list[Request]:
    prompts = prompts_for(lm, 5)
    warm = Sampling(temperature=0.9, top_p=0.9)
    return [
        Request(prompts[0], max_new_tokens=10),
        Request(prompts[1], warm, seed=4, samples=3, max_new_tokens=9, arrives=2),  # a short prompt, joins late
        Request(prompts[2], Sampling(temperature=1.3, top_k=5), seed=1, max_new_tokens=4, arrives=2),
        Request(prompts[3], arrives=5, max_new_tokens=7),  # joins after request 2 left: its slot is reused
        Request(prompts[4] * 2, warm, seed=9, samples=2, arrives=6),  # longer than every running row
        Request(prompts[2], Sampling(temperature=1.0), seed=3, samples=2, arrives=1),  # no filter, beside filters
    ]


def stops_for(lm) -> list[int]:
    """A stop id that ends some replies early: the 4th token of the first request's greedy reply."""
    first = mixed_requests(lm)[0]
    reply = decoder_from_args("text").generate(lm, first.context(lm, [len(lm.tokenizer) + 10], [lm.eot_id]))
    return [reply.tokens(0)[3]]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_text_rows_joining_mid_flight_equal_each_request_alone(model_type):
    lm = lm64(model_type)
    stops, requests = stops_for(lm), mixed_requests(lm)

    def build(request, rows):
        if request is None:
            return TokenPolicy(rows, lm.device, stops, 64)
        ctx = request.context(lm, stops, [lm.eot_id])
        return decoder_from_args("text").policy(lm, ctx)

    served = serve(lm, requests, build, capacity=10)
    for i, request in enumerate(requests):
        alone = decoder_from_args("text").generate(lm, request.context(lm, stops, [lm.eot_id]))
        for s in range(request.samples):
            assert served[(i, s)] == alone.tokens(s), (i, s)
    assert any(len(tokens) < requests[i].max_new_tokens for (i, _), tokens in served.items())  # some stopped early


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_soft_thinking_rows_joining_mid_flight_equal_each_request_alone(model_type):
    lm = lm64(model_type)
    decoder = decoder_from_args("soft-thinking", {"temperature": 1.0, "max_thinking_steps": 3, "noise": "dirichlet"})
    end = lm.tokenizer("###", add_special_tokens=False)["input_ids"]
    requests = mixed_requests(lm)

    def build(request, rows):
        if request is None:
            ctx = Request([1], samples=rows, max_new_tokens=64).context(lm, [len(lm.tokenizer) + 10], end)
        else:
            ctx = request.context(lm, [len(lm.tokenizer) + 10], end)
        return decoder.policy(lm, ctx)

    served = serve(lm, requests, build, capacity=10)
    for i, request in enumerate(requests):
        alone = decoder.generate(lm, request.context(lm, [len(lm.tokenizer) + 10], end))
        for s in range(request.samples):
            assert served[(i, s)] == alone.tokens(s), (i, s)
            assert int(alone.soft_steps[s]) == min(3, request.max_new_tokens)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_swireasoning_rows_joining_mid_flight_equal_each_request_alone(model_type):
    lm = lm64(model_type)
    # window 1 and a budget of 1 switch: rows switch often, and the forced think_end / answer text is exercised
    decoder = decoder_from_args("swireasoning", {"window_size": 1, "max_switches": 1, "answer_tokens": 2})
    end = lm.tokenizer("###", add_special_tokens=False)["input_ids"]
    stop = [len(lm.tokenizer) + 10]
    requests = mixed_requests(lm)

    def build(request, rows):
        ctx = (request or Request([1], samples=rows, max_new_tokens=64)).context(lm, stop, end)
        return decoder.policy(lm, ctx)

    served = serve(lm, requests, build, capacity=10)
    mixed = 0
    for i, request in enumerate(requests):
        alone = decoder.generate(lm, request.context(lm, stop, end))
        for s in range(request.samples):
            assert served[(i, s)] == alone.tokens(s), (i, s)
            mixed += int(alone.soft_steps[s]) > 0 and int(alone.text_steps[s]) > 0
    assert mixed > 0  # some rows thought in both modes


def test_hrpo_rows_joining_mid_flight_equal_each_request_alone():
    """HRPO's hybrid thinking with open gates (a ~ 0.06): a row feeds gated mixtures until its reply writes the
    answer marker (the commonest token of the greedy replies, so rows switch at different steps), then tokens.
    Six slots for eight requests arriving every third step: rows join slots whose last rows stopped thinking, or not."""
    lm = build_tiny_lm("llama", dtype=torch.float64)  # its own model: the gates become one of its heads
    stop, prompts, warm = [len(lm.tokenizer) + 10], prompts_for(lm, 5), Sampling(temperature=0.9, top_p=0.9)
    requests = [
        Request(prompts[k % 5], warm if k % 2 else Sampling(), seed=k, samples=1 + k % 2, max_new_tokens=5 + k % 4,
                arrives=3 * k)
        for k in range(8)
    ]  # fmt: skip
    greedy = [decoder_from_args("text").generate(lm, r.context(lm, stop, [lm.eot_id])).tokens(0) for r in requests]
    common = max(set(t for reply in greedy for t in reply), key=lambda t: sum(reply.count(t) for reply in greedy))
    marker = lm.tokenizer.decode([common]).strip()
    gates = HybridGates(lm.embed.weight.shape[1], top_k=8, temperature=1.0, answer_marker=marker)
    gates.reset(0.05, 0.1, torch.Generator().manual_seed(0))
    lm.heads[GATES_HEAD] = gates.double()
    decoder = decoder_from_args("hrpo")

    def build(request, rows):
        ctx = (request or Request([1], samples=rows, max_new_tokens=64)).context(lm, stop, [lm.eot_id])
        return decoder.policy(lm, ctx)

    served = serve(lm, requests, build, capacity=6)
    switched = 0
    for i, request in enumerate(requests):
        alone = decoder.generate(lm, request.context(lm, stop, [lm.eot_id]))
        for s in range(request.samples):
            assert served[(i, s)] == alone.tokens(s), (i, s)
            switched += 0 < int(alone.soft_steps[s]) < len(alone.tokens(s)) - 1
    assert switched > 0  # some rows wrote the marker mid-reply and went on in plain tokens


def test_latent_rows_joining_mid_flight_equal_each_request_alone():
    """Rows at different latent slots in one step: each group calls the thought map with its own slot."""
    lm = lm64()
    calls = []

    def thought_map(hidden, slot):  # a thought that depends on its slot
        calls.append(slot)
        return torch.tanh(hidden) * (1 + 0.1 * slot), None

    requests = mixed_requests(lm)
    latents = {0: 3, 1: 2, 2: 4, 3: 1, 4: 3, 5: 2}  # per request: its maximum latents
    stops = stops_for(lm)

    def build(request, rows):
        if request is None:
            answer = TokenPolicy(rows, lm.device, stops, 64)
        else:
            seeds = row_seeds(request.seed, ["request"], rows)
            answer = TokenPolicy(rows, lm.device, stops, request.max_new_tokens, request.sampling, seeds)
        policy = LatentThenAnswer(lm, thought_map, fixed_latents(4), 4, answer, rows)
        if request is not None:
            policy.limits[:] = latents[requests.index(request)]
        return policy

    served = serve(lm, requests, build, capacity=10, limit=lambda r: 4 + 1 + r.max_new_tokens)
    assert len(set(calls)) > 1
    for i, request in enumerate(requests):
        seeds = row_seeds(request.seed, ["request"], request.samples)
        alone = latent_rollout(
            lm,
            [request.prompt],
            thought_map,
            fixed_latents(latents[i]),
            latents[i],
            request.max_new_tokens,
            sampling=request.sampling,
            seeds=seeds,
            stop_ids=stops,
            samples=request.samples,
        )
        for s in range(request.samples):
            steps = alone.trace.kind[s] != 0
            assert served[(i, s)] == alone.trace.tokens[s][steps].tolist(), (i, s)


def test_joined_cache_continues_like_a_fresh_prefill():
    """Two prefilled batches joined (the shorter left-padded) predict what one prefill of all prompts does."""
    lm = lm64()
    prompts = prompts_for(lm, 4)
    first, second = prefill(lm, prompts[:2]), prefill(lm, [prompts[2] * 3, prompts[3]])
    mask = join_caches(first.cache, first.attention_mask, second.cache, second.attention_mask)
    together = prefill(lm, [prompts[0], prompts[1], prompts[2] * 3, prompts[3]])
    assert torch.equal(mask, together.attention_mask)
    for joined, fresh in zip(first.cache.layers, together.cache.layers):
        real = mask.bool()[:, None, :, None].expand_as(fresh.keys)
        torch.testing.assert_close(joined.keys[real], fresh.keys[real], **EXACT)


def test_forced_queue_width_stays_bounded_when_rows_are_reset():
    queue = ForcedQueue(2, "cpu")
    rows = torch.tensor([0])
    for _ in range(50):
        queue.push(rows, [1, 2, 3])
        queue.reset(rows)
    assert queue.ids.shape[1] == 3
