"""Lockstep padding (engine/lockstep.py), in one process: told that another process needs more latent slots
or decodes steps, the engine runs the extra calls and still computes the same values, gradients and random
draws, in the order a batch needing that many slots would."""

from __future__ import annotations

import contextlib

import pytest
import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.engine.batch import IGNORE
from latentreason.engine.jacobi import jacobi_latent_forward
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.lockstep import agreed_any, agreed_max, lockstep
from latentreason.methods.atp import ATPConfig, ATPLatent
from tests.helpers import EXACT, build_tiny_lm
from tests.test_latent_engine import rows, scaled
from tests.test_rl_policy import atp_policy, prompts_for

EXTRA = 2  # slots "another process" needs beyond this one's longest thought


def more_elsewhere(n: int) -> int:
    return n + EXTRA


def test_outside_lockstep_every_count_is_the_local_one():
    assert agreed_max(3) == 3 and agreed_any(True) and not agreed_any(False)
    with lockstep(more_elsewhere):
        assert agreed_max(3) == 5 and agreed_any(False)
    assert agreed_max(3) == 3


def calls_and_grads(lm, run):
    """(run()'s output, backbone calls it made, gradients of every parameter after backward of its loss)."""
    calls = []
    hook = lm.backbone.layers[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        out, loss = run()
    finally:
        hook.remove()
    lm.zero_grad(set_to_none=True)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in lm.named_parameters() if p.grad is not None}
    lm.zero_grad(set_to_none=True)
    return out, len(calls), grads


def assert_same_grads(a: dict, b: dict) -> None:
    """Equal up to float64 rounding (the models here are float64): sums over more (masked) positions only
    round differently."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **EXACT, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("engine", ["sequential", "jacobi"])
def test_padded_slots_change_no_value_or_gradient(engine):
    lm = build_tiny_lm("llama", dtype=torch.float64)
    prefixes, ks, suffixes = rows(lm)
    batch = build_latent_batch(prefixes, ks, suffixes, [[IGNORE] + s[1:] for s in suffixes], lm.pad_id)
    n = max(ks)
    probe = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))  # [d]

    def run():
        if engine == "jacobi":
            out = jacobi_latent_forward(lm, batch, scaled, iterations=2)
        else:
            out = latent_forward(lm, batch, scaled)
        # Not squares: the final norm makes every hidden state's sum of squares the same constant.
        latent = (out.latent_hidden * probe * out.slot_mask[..., None]).sum()
        return out, (out.suffix_hidden * probe).sum() + latent

    alone, alone_calls, alone_grads = calls_and_grads(lm, run)
    with lockstep(more_elsewhere):
        padded, padded_calls, padded_grads = calls_and_grads(lm, run)
    # Sequential: one more call per padded slot; Jacobi: the same calls, each over more slots.
    assert padded_calls == alone_calls + (EXTRA if engine == "sequential" else 0)
    assert padded.latent_inputs.shape[1] == n + EXTRA and not padded.slot_mask[:, n:].any()
    torch.testing.assert_close(padded.slot_mask[:, :n], alone.slot_mask)
    torch.testing.assert_close(padded.suffix_hidden, alone.suffix_hidden, **EXACT)
    torch.testing.assert_close(padded.latent_inputs[:, :n], alone.latent_inputs, **EXACT)
    assert_same_grads(padded_grads, alone_grads)


def test_a_process_without_steps_runs_the_step_decoder_with_weight_zero():
    """At curriculum stage 0 this process has no latents and no step to decode; another process has both."""
    lm = build_tiny_lm("llama", dtype=torch.float64)
    lm.train()
    method = ATPLatent(ATPConfig(c_thought=2, max_latent_stage=2, step_decoder="small", step_decoder_layers=1))
    method.prepare(lm)
    method.stage = 0
    batch = method.collate(lm, generate_chain(4, seed=2, num_steps=2))
    assert not batch["latent_batch"].extras["step_targets"]

    def run():
        torch.manual_seed(0)
        total, metrics = method.loss(lm, batch)
        return metrics, total

    alone, _, alone_grads = calls_and_grads(lm, run)
    with lockstep(more_elsewhere):
        padded, _, padded_grads = calls_and_grads(lm, run)
    assert padded == pytest.approx(alone, rel=1e-10, abs=1e-10)
    decoder = {n for n in padded_grads if n.startswith("heads.step_decoder.")}
    assert decoder and not any(n.startswith("heads.step_decoder.") for n in alone_grads)  # it ran, here only
    assert all((padded_grads[n] == 0).all() for n in decoder)
    assert_same_grads({n: g for n, g in padded_grads.items() if n not in decoder}, alone_grads)


def test_rl_log_probs_take_one_model_call_whatever_other_processes_think():
    """The recompute feeds known thoughts in one call, so every process makes the same single call (one
    gather of a sharded model) whether or not others think longer, and its log-probs equal the sampled ones."""
    lm, policy = atp_policy(temperature=0.7)
    batch = policy.sample(prompts_for(lm), torch.Generator().manual_seed(1))
    calls = []
    handle = lm.backbone.register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        with torch.no_grad(), lockstep(more_elsewhere):
            padded = policy.logprobs(batch)
    finally:
        handle.remove()
    assert len(calls) == 1 and int(batch.num_latents.max()) > 1
    torch.testing.assert_close(padded.flat(), batch.old.flat(), **EXACT)


LONGEST = 3  # the longest thought "another process" has, for the ATP-Latent test below


@pytest.fixture(scope="module")
def atp():
    """ATP-Latent (a latent head per slot, a stop head, a 1-layer step decoder) on 3-step chains."""
    lm = build_tiny_lm("llama", seed=1, dtype=torch.float64)
    method = ATPLatent(ATPConfig(c_thought=1, max_latent_stage=LONGEST, step_decoder="small", step_decoder_layers=1))
    torch.manual_seed(0)
    method.prepare(lm)
    return method, lm.train(), generate_chain(4, seed=0, num_steps=LONGEST)


class CallLog:
    """Every call of a submodule that owns parameters, forward then backward, by name: the order in which
    DeepSpeed ZeRO-3 gathers parameters (and checks that every process does alike)."""

    def __init__(self, lm):
        self.calls: list[str] = []
        self.handles = []
        for name, module in lm.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                self.handles.append(module.register_forward_pre_hook(self.hook(f"forward {name}")))
                self.handles.append(module.register_full_backward_pre_hook(self.hook(f"backward {name}")))

    def hook(self, call: str):
        def record(*args):
            self.calls.append(call)

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def atp_micro_batch(method, lm, problems, stage: int, padded: bool):
    """(the loss's terms, the random state after, the submodule calls, gradients) of one ATP-Latent micro-batch
    at curriculum `stage` (its longest thought), run to LONGEST slots when `padded`."""
    method.stage = stage
    batch = method.collate(lm, problems)
    log = CallLog(lm)

    def run():
        torch.manual_seed(1)  # ATP samples its thoughts
        total, metrics = method.loss(lm, batch)
        return (metrics, torch.get_rng_state()), total

    try:
        with lockstep(lambda n: max(n, LONGEST)) if padded else contextlib.nullcontext():
            (metrics, rng), _, grads = calls_and_grads(lm, run)
    finally:
        log.remove()
    return metrics, rng, log.calls, grads


# The embeddings' inputs are token ids: their backward hooks fire on output gradients, as wanted here.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_a_padded_atp_pass_draws_no_noise_and_calls_what_the_longest_pass_calls(atp, stage):
    """The slots run only for the other process sample no thoughts: the draws that follow (the stop head's)
    and so the loss are those of a process that ran none, as under DDP."""
    method, lm, problems = atp
    metrics, rng, calls, grads = atp_micro_batch(method, lm, problems, stage, padded=True)
    alone_metrics, alone_rng, _, alone_grads = atp_micro_batch(method, lm, problems, stage, padded=False)
    assert torch.equal(rng, alone_rng)
    assert metrics == pytest.approx(alone_metrics, rel=1e-10, abs=1e-10)
    assert_same_grads({n: g for n, g in grads.items() if n in alone_grads}, alone_grads)
    # Forward and backward, the same submodule calls in the same order as a pass whose rows think LONGEST.
    assert calls == atp_micro_batch(method, lm, problems, LONGEST, padded=False)[2]
