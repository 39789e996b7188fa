"""`latentreason bench tts`: N latent trajectories of one problem from one shared prefill, batched, against N
separate solves of the same problem (each its own prefill and rollout, batch 1), with each latent sampler.

The model is the demo's Coconut-sized Llama (hidden 128, 4 layers) with random weights, thinking the demo's 6
thoughts (identity thought map, as Coconut) on a demo question, then 8 answer tokens (no stop token: every
trajectory runs every step, on both sides). Speed does not depend on the weights.

Figures, each measured side by side in one run:
  tts_speedup          N separate solves' time / the batched solve's, Gaussian noise on the thoughts
  tts_speedup_dropout  the same with Monte-Carlo dropout during the latent steps
  same_answers         every batched trajectory's answer tokens equal its separate solve's (the row seeds make
                       them the same trajectory; checked for both samplers)
The last line printed is one JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from latentreason.bench.timing import paired
from latentreason.data.generators import generate
from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.engine.sampling import row_seeds
from latentreason.layout import encode_problem
from latentreason.model.latent_lm import LatentLM
from latentreason.model.tiny import TinyModelSpec, build_tiny_model
from latentreason.model.tokenizer import train_tokenizer
from latentreason.tts import latent_sampler_from_args

SAMPLERS = {"noise": {"sigma": 0.6}, "dropout": {"p": 0.2}}  # LatentTTS's values for Coconut
TASK = {"num_steps": 3, "min_steps": 1, "ops": "+-*", "modulus": 10}  # the demo's chains (coconut-tiny.yaml)


@dataclass
class TTSBenchConfig:
    samples: int = 16
    model: TinyModelSpec = field(default_factory=TinyModelSpec)  # the demo's: hidden 128, 4 layers
    latents: int = 6
    answer_tokens: int = 8
    repeats: int = 5


def identity(hidden, slot):
    return hidden, None


def bench_model(cfg: TTSBenchConfig, problems, device: str) -> LatentLM:
    tokenizer = train_tokenizer([f"{p.question}\n{' '.join(p.steps)}\n### {p.answer}" for p in problems], 300)
    lm = LatentLM(build_tiny_model(cfg.model, tokenizer), tokenizer).to(device).eval()
    # The new tokens' rows start as copies of one row: their logits would tie exactly, and rounding breaks a tie
    # one way in a batch and another alone. Trained rows differ; so do these.
    special = [lm.bot_id, lm.latent_id, lm.eot_id]
    with torch.no_grad():
        rows = lm.embed.weight[special]
        lm.embed.weight[special] = rows + torch.randn(rows.shape, generator=torch.Generator().manual_seed(0)).to(rows)
    return lm


def run_tts_bench(cfg: TTSBenchConfig | None = None, device: str | None = None) -> dict:
    cfg = cfg or TTSBenchConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    problems = generate("chain", 256, seed=0, **TASK)
    lm = bench_model(cfg, problems, device)
    problem = problems[0]
    prompt = [encode_problem(lm.tokenizer, problem).prompt + [lm.bot_id]]
    seeds = row_seeds(0, [problem.question], cfg.samples)
    never = [len(lm.tokenizer) + 1]  # a stop id no row produces

    def solve(sampler, rows: slice, samples: int):
        return latent_rollout(
            lm,
            prompt,
            identity,
            fixed_latents(cfg.latents),
            cfg.latents,
            cfg.answer_tokens,
            seeds=seeds[rows],
            stop_ids=never,
            samples=samples,
            perturbation=sampler.bind(seeds[rows]),
        )

    figures: dict = {"device": device, "threads": torch.get_num_threads(), "samples": cfg.samples}
    same = True
    for name, args in SAMPLERS.items():
        sampler = latent_sampler_from_args(name, args)

        def batched(sampler=sampler):
            return solve(sampler, slice(None), cfg.samples)

        def separate(sampler=sampler):
            return [solve(sampler, slice(s, s + 1), 1) for s in range(cfg.samples)]

        with torch.no_grad():
            together, apart = batched().tokens.tolist(), [out.tokens[0].tolist() for out in separate()]
            same &= together == apart
            ratio, separate_s, batched_s = paired(separate, batched, cfg.repeats)
        key = "tts_speedup" if name == "noise" else f"tts_speedup_{name}"
        figures.update({key: ratio, f"{name}_separate_s": separate_s, f"{name}_batched_s": batched_s})
    figures["same_answers"] = same
    print_figures(figures, cfg)
    return figures


def print_figures(figures: dict, cfg: TTSBenchConfig) -> None:
    print(
        f"tts benchmark on {figures['device']} ({figures['threads']} threads): {cfg.samples} trajectories of one "
        f"problem, {cfg.latents} thoughts and {cfg.answer_tokens} answer tokens each (same answers batched and "
        f"separately: {figures['same_answers']})"
    )
    print(f"| {'sampler':8s} | {'speed-up':>8s} | {'separate':>10s} | {'batched':>10s} |")
    for name in SAMPLERS:
        ratio = figures["tts_speedup" if name == "noise" else f"tts_speedup_{name}"]
        separate, batched = figures[f"{name}_separate_s"] * 1000, figures[f"{name}_batched_s"] * 1000
        print(f"| {name:8s} | {ratio:7.2f}x | {separate:7.0f} ms | {batched:7.0f} ms |")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
