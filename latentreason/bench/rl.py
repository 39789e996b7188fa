"""`latentreason bench rl`: one GRPO step split by phase, and batched rollouts against a per-problem loop.

Figures, measured side by side in one run on the same model and questions:
  step_rollout_s / step_score_s / step_update_s   the three phases of one RL step (questions x
      generations rollouts; rewards incl. coherence decoding; all minibatch updates)
  rollout_speedup_loop   rollouts/s of one batched `LatentPolicy.sample` over all rollouts divided by
      rollouts/s of sampling them one problem at a time (same policy, same work per rollout)
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
    ):
        print(f"| {name:38s} | {value:>14s} |")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return figures
