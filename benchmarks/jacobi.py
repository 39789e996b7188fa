"""Jacobi iterations T = 1..c against the sequential latent engines (PCCoT's speed/exactness trade).

For each T: a training step (forward + backward) of `jacobi_latent_forward`, a rollout of
`jacobi_rollout`, each as a ratio to the sequential engine on the same model and batch, and how far the
thoughts are from the exact sequential ones (max |z_T - z| / max |z|; 0 from T = c on).

    python benchmarks/jacobi.py            # Llama d=256, 4 layers, batch 16, c=6 (under a minute on one core)
    python benchmarks/jacobi.py --quick    # a tiny model: checks the script runs

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json

import torch

from latentreason.bench.engine import EngineBenchConfig, bench_model, identity, timed
from latentreason.engine.batch import IGNORE
from latentreason.engine.jacobi import jacobi_latent_forward, jacobi_rollout
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.methods.base import next_token_loss


def run(quick: bool, latents: int) -> dict:
    cfg = EngineBenchConfig(hidden_size=64 if quick else 256, num_hidden_layers=2 if quick else 4)
    lm = bench_model(cfg, "cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    vocab = len(lm.tokenizer) - 3
    batch_size, prompt_len, suffix_len = (4, 12, 6) if quick else (16, 40, 20)
    prefixes = [p + [lm.bot_id] for p in torch.randint(3, vocab, (batch_size, prompt_len), generator=gen).tolist()]
    suffixes = torch.randint(3, vocab, (batch_size, suffix_len), generator=gen).tolist()
    batch = build_latent_batch(
        prefixes, [latents] * batch_size, suffixes, [[IGNORE] + s[1:] for s in suffixes], lm.pad_id
    )

    def train_step(pass_fn):
        out = pass_fn()
        next_token_loss(lm, out.suffix_hidden, batch.suffix_labels)[0].backward()
        lm.zero_grad(set_to_none=True)

    no_stop, answer = [-1], cfg.answer_tokens  # decode every answer token so each path does the same work
    sequential_train = timed(lambda: train_step(lambda: latent_forward(lm, batch, identity)), cfg.repeats)
    lm.eval()
    with torch.no_grad():
        exact = latent_rollout(lm, prefixes, identity, fixed_latents(latents), latents, answer, stop_ids=no_stop)
        sequential_rollout = timed(
            lambda: latent_rollout(lm, prefixes, identity, fixed_latents(latents), latents, answer, stop_ids=no_stop),
            cfg.repeats,
        )
    figures = {"latents": latents, "train_sequential_s": sequential_train, "rollout_sequential_s": sequential_rollout}
    scale = float(exact.latent_inputs.abs().max())
    for t in range(1, latents + 1):
        lm.train()
        train_s = timed(lambda t=t: train_step(lambda: jacobi_latent_forward(lm, batch, identity, t)), cfg.repeats)
        lm.eval()
        with torch.no_grad():

            def rollout(t=t):
                return jacobi_rollout(lm, prefixes, identity, latents, t, answer, stop_ids=no_stop)

            rollout_s = timed(rollout, cfg.repeats)
            error = float((rollout().latent_inputs - exact.latent_inputs).abs().max()) / scale
        figures[f"T{t}"] = {
            "train_ratio": train_s / sequential_train,
            "rollout_ratio": rollout_s / sequential_rollout,
            "thought_error": error,
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, to check the script runs")
    parser.add_argument("--latents", type=int, default=6, help="latent slots c (PCCoT's Llama setting: 6)")
    args = parser.parse_args()
    torch.manual_seed(0)
    figures = run(args.quick, args.latents)
    print(
        f"sequential: train step {figures['train_sequential_s'] * 1000:.0f} ms, "
        f"rollout {figures['rollout_sequential_s'] * 1000:.0f} ms ({torch.get_num_threads()} threads)"
    )
    print(f"| {'T':>2s} | {'train step / sequential':>23s} | {'rollout / sequential':>20s} | {'thought error':>13s} |")
    for t in range(1, args.latents + 1):
        row = figures[f"T{t}"]
        print(
            f"| {t:2d} | {row['train_ratio']:22.2f}x | {row['rollout_ratio']:19.2f}x | {row['thought_error']:13.2e} |"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
