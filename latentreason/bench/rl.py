"""`latentreason bench rl`: one GRPO step split by phase, and batched rollouts against a per-problem loop.

Figures, measured side by side in one run on the same model and questions:
  step_rollout_s / step_score_s / step_update_s   the three phases of one RL step (questions x
      generations rollouts; rewards incl. coherence decoding; all minibatch updates)
  rollout_speedup_loop   rollouts/s of one batched `LatentPolicy.sample` over all rollouts divided by
      rollouts/s of sampling them one problem at a time (same policy, same work per rollout)
  recompute_speedup   the RL recomputation of the drawn thoughts (forward + backward): N + 1 sequential
      latent-pass calls divided by the one call `LatentPolicy.logprobs` makes; recompute_max_diff is the
      largest difference of their answer-position states
The stop head is biased to always continue so every rollout thinks max_latent_stage x c_thought
latents (the reference's 20) and the work does not depend on random stops. The last line printed is
one JSON object.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch

from latentreason.bench.engine import EngineBenchConfig, bench_model
from latentreason.data.generators.chain import generate_chain
from latentreason.engine.latent_pass import known_latent_forward, latent_forward
from latentreason.layout import encode_problem
from latentreason.methods.atp import ATPConfig, ATPLatent
from latentreason.methods.latent_actions import CONTINUE
from latentreason.rl.config import RLConfig
from latentreason.rl.trainer import RLTrainer


@dataclass
class RLBenchConfig:
    hidden_size: int = 512
    num_hidden_layers: int = 6
    questions: int = 16
    generations: int = 8
    minibatch: int = 16  # rollouts per update: 128 / 16 = 8 updates, as the reference
    c_thought: int = 2
    max_latent_stage: int = 10
    answer_tokens: int = 16
    loop_problems: int = 0  # rollouts timed one by one (0 = all of them)
    seed: int = 0


def always_continue(method: ATPLatent) -> None:
    with torch.no_grad():
        last = method.stop_head.net[-1]
        last.weight.zero_()
        last.bias.fill_(-10.0)
        last.bias[CONTINUE] = 10.0


def recompute_figures(policy, rollouts, repeats: int = 3) -> dict:
    """The teacher-forced recomputation of known thoughts (forward and backward): the one call that
    `LatentPolicy.logprobs` makes against the N + 1 sequential calls of the latent pass, best of `repeats`,
    and the largest difference between their answer-position states."""
    lm, batch = policy.lm, policy.teacher_forced_batch(rollouts)
    thoughts = rollouts.thoughts

    def feed(hidden, j):  # the drawn thought at slot j, as the sequential pass asks for it
        return thoughts[:, j].to(hidden.dtype), None

    def timed(run):
        best = float("inf")
        for _ in range(repeats):
            lm.model.zero_grad(set_to_none=True)
            began = time.perf_counter()
            out = run()
            out.suffix_hidden.float().pow(2).mean().backward()
            best = min(best, time.perf_counter() - began)
        return best, out.suffix_hidden.detach()

    sequential_s, sequential = timed(lambda: latent_forward(lm, batch, feed))
    one_call_s, one_call = timed(lambda: known_latent_forward(lm, batch, thoughts))
    lm.model.zero_grad(set_to_none=True)
    answer = batch.suffix_mask.bool()  # [B, S]
    return {
        "recompute_sequential_s": sequential_s,
        "recompute_one_call_s": one_call_s,
        "recompute_speedup": sequential_s / one_call_s,
        "recompute_max_diff": float((sequential - one_call)[answer].abs().max()),
    }


def run_rl_bench(cfg: RLBenchConfig | None = None, device: str | None = None, output_dir: str = "bench_rl") -> dict:
    cfg = cfg or RLBenchConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = bench_model(EngineBenchConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers), device)
    method = ATPLatent(
        ATPConfig(
            c_thought=cfg.c_thought, max_latent_stage=cfg.max_latent_stage, step_decoder="small", step_decoder_layers=1
        )
    )
    torch.manual_seed(cfg.seed)
    method.prepare(lm)
    always_continue(method)
    questions = generate_chain(cfg.questions, seed=cfg.seed)
    rl_config = RLConfig(
        model_name_or_path="(in memory)",
        output_dir=output_dir,
        questions_per_step=cfg.questions,
        num_generations=cfg.generations,
        per_device_train_batch_size=cfg.minibatch,
        max_completion_length=cfg.answer_tokens,
        max_steps=1,
        bf16="false",
    )
    trainer = RLTrainer(rl_config, method, lm, questions, [], progress=False)
    module, optimizer, scheduler = trainer.setup()
    trainer.rl_step(module, optimizer, scheduler, questions, step=0)  # warm-up
    step = trainer.rl_step(module, optimizer, scheduler, questions, step=1)

    prompts = [encode_problem(lm.tokenizer, q).prompt + [lm.bot_id] for q in questions for _ in range(cfg.generations)]
    policy = trainer.policy
    gen = torch.Generator(device=lm.device)
    began = time.perf_counter()
    batched = policy.sample(prompts, gen.manual_seed(1))
    batched_s = time.perf_counter() - began
    loop = prompts[: cfg.loop_problems or len(prompts)]
    began = time.perf_counter()
    singles = [policy.sample([p], gen.manual_seed(2)) for p in loop]
    loop_s = time.perf_counter() - began
    latents = float(batched.num_latents.float().mean())
    if any(int(s.num_latents[0]) != int(batched.num_latents[0]) for s in singles):
        raise RuntimeError("the per-problem loop thought a different number of latents: the comparison is void")
    figures = {
        "device": device,
        "threads": torch.get_num_threads(),
        "rollouts": len(prompts),
        "latents_per_rollout": latents,
        "step_rollout_s": step["time/rollout_s"],
        "step_score_s": step["time/score_s"],
        "step_update_s": step["time/update_s"],
        "step_total_s": step["time/rollout_s"] + step["time/score_s"] + step["time/update_s"],
        "rollouts_per_s_batched": len(prompts) / batched_s,
        "rollouts_per_s_loop": len(loop) / loop_s,
    }
    figures["rollout_speedup_loop"] = figures["rollouts_per_s_batched"] / figures["rollouts_per_s_loop"]
    figures.update(recompute_figures(policy, batched))
    print(
        f"RL benchmark on {device} ({figures['threads']} threads), "
        f"Llama d={cfg.hidden_size} L={cfg.num_hidden_layers}; "
        f"{cfg.questions} questions x {cfg.generations} rollouts, {latents:.0f} latents and up to "
        f"{cfg.answer_tokens} answer tokens each, updates of {cfg.minibatch} rollouts"
    )
    print(f"| {'figure':38s} | {'value':>14s} |")
    for name, value in (
        ("RL step: rollout", f"{figures['step_rollout_s']:.2f} s"),
        ("RL step: scoring (incl. coherence)", f"{figures['step_score_s']:.2f} s"),
        ("RL step: updates", f"{figures['step_update_s']:.2f} s"),
        ("RL step: total", f"{figures['step_total_s']:.2f} s"),
        ("rollouts/s, batched", f"{figures['rollouts_per_s_batched']:.1f}"),
        ("rollouts/s, one problem at a time", f"{figures['rollouts_per_s_loop']:.1f}"),
        ("batched speed-up", f"{figures['rollout_speedup_loop']:.1f}x"),
        ("recompute + backward, N + 1 calls", f"{figures['recompute_sequential_s']:.3f} s"),
        ("recompute + backward, one call", f"{figures['recompute_one_call_s']:.3f} s"),
        ("one-call speed-up", f"{figures['recompute_speedup']:.2f}x"),
        ("largest state difference", f"{figures['recompute_max_diff']:.1e}"),
    ):
        print(f"| {name:38s} | {value:>14s} |")
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in figures.items()}))
    return figures
