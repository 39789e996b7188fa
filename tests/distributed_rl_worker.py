"""One rank of the two-process DDP runs of latent methods in test_distributed.py (started by torchrun).

Runs the RL trainer on a tiny ATP-Latent model (the same on every rank: same seed) and writes what this
rank saw: per step the questions it rolled out, the rewards and the advantages it computed
(rl{r}.json), and its parameters after training (rl_rank{r}.safetensors). Then, when asked, trains
ATP-Latent SFT in atp/ (what the ZeRO-3 run of the same SFT is compared with). Given `token_rl`, it runs
GRPO on a saved tiny chat model instead (token_rl{r}.json, token_rl_rank{r}.safetensors).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from latentreason.data.sources import load_train_and_held_out
from latentreason.methods.atp import ATPConfig, ATPLatent
from latentreason.model.pretrained import load_pretrained
from latentreason.processes import leave_process_group
from latentreason.rl import trainer as rl_trainer
from latentreason.rl.config import RLConfig
from latentreason.rl.rewards import register_reward
from tests.distributed_latent import latent_run, train_recording_passes
from tests.helpers import build_tiny_lm


@register_reward("test_fewer_latents")
def fewer_latents(context):
    """Varies within the groups of an untrained model, which answers nothing: without it every advantage,
    and every gradient, would be 0, and the launches would be compared on weight decay alone."""
    return lambda problems, completions: [-float(c.num_latents) for c in completions]


@register_reward("test_text_length")
def text_length(context):
    """Varies within the groups of an untrained chat model, for the same reason as test_fewer_latents."""
    return lambda problems, completions: [float(len(c.text)) for c in completions]


def main(out: Path, runs: dict) -> None:
    rank = int(os.environ["RANK"])
    if "token_rl" in runs:  # a pretrained chat model thinking in Multiplex tokens, instead of ATP-Latent
        lm = load_pretrained(runs["model_dir"])
        seen, lm = run_rl_recording(out, runs["token_rl"], start=(lm, None))
        save_view(out, "token_rl", rank, seen, lm)
        return
    seen, lm = run_rl_recording(out, runs["rl"])
    save_view(out, "rl", rank, seen, lm)
    if "atp" in runs:
        train_recording_passes("atp", *latent_run("atp", out / "atp", runs["atp"]))


def save_view(out: Path, name: str, rank: int, seen: list[dict], lm) -> None:
    """What this rank saw (<name><rank>.json) and its trained parameters (<name>_rank<rank>.safetensors)."""
    (out / f"{name}{rank}.json").write_text(json.dumps(seen))
    state = {k: v.detach().clone().contiguous() for k, v in lm.state_dict().items()}
    save_file(state, out / f"{name}_rank{rank}.safetensors")


def atp_start():
    """The tiny ATP-Latent model every rank starts from (the same seed on each)."""
    lm = build_tiny_lm("llama", seed=2)
    method = ATPLatent(ATPConfig(c_thought=1, max_latent_stage=3, step_decoder="small", step_decoder_layers=1))
    torch.manual_seed(0)
    method.prepare(lm)
    lm.meta = {"method": "atp", "method_config": dataclasses.asdict(method.config)}
    return lm, method


def run_rl_recording(out: Path, overrides: dict, start: tuple | None = None) -> tuple[list[dict], object]:
    """Train in out/rl from `start` (lm, method; default: `atp_start()`); (per step: the questions, rewards and
    advantages this rank saw; the trained model)."""
    lm, method = start or atp_start()
    config = RLConfig(model_name_or_path="(in memory)", output_dir=str(out / "rl"), **overrides)
    train, held_out = load_train_and_held_out(config)
    seen = []
    grouped = rl_trainer.group_advantages

    def recording(rewards, group_size, **kwargs):
        advantages = grouped(rewards, group_size, **kwargs)
        seen[-1].update(rewards=rewards.tolist(), advantages=advantages.tolist())
        return advantages

    rl_trainer.group_advantages = recording
    trainer = rl_trainer.RLTrainer(config, method, lm, train, held_out, progress=False)
    step = trainer.rl_step

    def recorded_step(module, optimizer, scheduler, questions, index):
        seen.append({"step": index, "questions": [q.question for q in questions]})
        return step(module, optimizer, scheduler, questions, index)

    trainer.rl_step = recorded_step
    trainer.train()
    rl_trainer.group_advantages = grouped
    return seen, lm


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
    leave_process_group(0)
