"""The cost of one GRPO step for each way a chat model can think, side by side in one run on the same model, LoRA,
questions and seed: text tokens (plain GRPO), Multiplex Thinking (K = 3 tokens averaged per step), Soft Tokens
(soft and fuzzy mixtures), and HRPO's hybrid gates. Each policy takes one warm-up step, then `--steps` timed ones;
it prints the seconds of each phase (sampling with the old log-probs, rewards, the updates), the positions
generated per rollout (rollouts end at different lengths), and each policy's seconds per generated position
divided by text GRPO's. The last line is one JSON object.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/rl_policies.py            # SmolLM2-135M-Instruct (its package)
    PYTHONPATH=. python benchmarks/rl_policies.py --model DIR --steps 3        # any local chat model directory
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from latentreason.config import load_config
from latentreason.data.sources import load_train_and_held_out
from latentreason.model.lora import add_lora
from latentreason.model.pretrained import load_pretrained
from latentreason.rl.config import RLConfig
from latentreason.rl.trainer import RLTrainer

# name -> the fields that make the policy; everything else is shared (BASE)
POLICIES = {
    "text": {},
    "multiplex-k3": {"multiplex_width": 3},
    "soft": {"think_inputs": "soft"},
    "fuzzy": {"think_inputs": "fuzzy"},
    "hrpo": {"think_inputs": "hybrid"},
}
BASE = {
    "dataset": "synthetic:chain",
    "dataset_params": {"num_steps": 2, "min_steps": 1, "ops": "+-", "modulus": 10},
    "num_train_examples": 64,
    "num_eval_examples": 0,
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-4,
    "temperature": 1.0,
    "lora_r": 16,
    "reward_funcs": ["accuracy", "format"],
    "reward_weights": [1.0, 0.1],
    "coherence_gate": "none",
    "answer_mode": "flexible",
    "bf16": "false",
}
PHASES = ("time/rollout_s", "time/score_s", "time/update_s")


def time_policy(name: str, args, output_dir: str) -> dict:
    fields = {
        **BASE,
        **POLICIES[name],
        "model_name_or_path": args.model,
        "output_dir": output_dir,
        "questions_per_step": args.questions,
        "max_completion_length": args.max_completion_length,
        "max_steps": args.steps + 1,
        "seed": args.seed,
    }
    config = load_config(RLConfig, None, fields)
    lm = load_pretrained(args.model)
    add_lora(lm.model, config.lora_r, config.lora_alpha, 0.0, config.lora_target_modules)
    questions, _ = load_train_and_held_out(config)
    trainer = RLTrainer(config, None, lm, questions, [], progress=False)
    module, optimizer, scheduler = trainer.setup()
    per_step = config.questions_per_step
    steps = []
    for step in range(args.steps + 1):  # step 0 warms up (allocations, first calls)
        batch = questions[step * per_step : (step + 1) * per_step]
        steps.append(trainer.rl_step(module, optimizer, scheduler, batch, step))
    timed = steps[1:]
    figures = {phase.split("/")[1]: statistics.median(s[phase] for s in timed) for phase in PHASES}
    figures["step_s"] = sum(figures[phase.split("/")[1]] for phase in PHASES)
    figures["positions_per_rollout"] = statistics.fmean(s["completions/mean_length"] for s in timed)
    rollouts = config.questions_per_step * config.num_generations
    figures["ms_per_position"] = 1000 * figures["step_s"] / (rollouts * figures["positions_per_rollout"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2", help="smollm2 (its PyPI package) or a chat model directory")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, of " + ", ".join(POLICIES))
    parser.add_argument("--steps", type=int, default=3, help="timed GRPO steps per policy (after one warm-up)")
    parser.add_argument("--questions", type=int, default=4, help="questions per step (x 4 rollouts each)")
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="/tmp/bench-rl-policies", help="the trainers' (unused) output dir")
    args = parser.parse_args()
    names = args.policies.split(",")
    unknown = sorted(set(names) - set(POLICIES))
    if unknown or "text" not in names:
        parser.error(f"--policies: expected some of {list(POLICIES)}, text included (the ratios' base); got {unknown}")
    results = {name: time_policy(name, args, f"{args.output_dir}/{name}") for name in names}
    for figures in results.values():
        figures["cost_vs_text"] = figures["ms_per_position"] / results["text"]["ms_per_position"]
    print(
        f"one GRPO step on {args.model}, {torch.get_num_threads()} threads: {args.questions} questions x 4 rollouts "
        f"of up to {args.max_completion_length} positions, LoRA r 16; median of {args.steps} steps after a warm-up"
    )
    print("| policy | sampling s | rewards s | updates s | step s | positions / rollout | ms / position | vs text |")
    print("|---|---|---|---|---|---|---|---|")
    for name, f in results.items():
        print(
            f"| {name} | {f['rollout_s']:.2f} | {f['score_s']:.2f} | {f['update_s']:.2f} | {f['step_s']:.2f} | "
            f"{f['positions_per_rollout']:.1f} | {f['ms_per_position']:.2f} | {f['cost_vs_text']:.2f}x |"
        )
    print(json.dumps({name: {k: round(v, 4) for k, v in f.items()} for name, f in results.items()}))


if __name__ == "__main__":
    main()
