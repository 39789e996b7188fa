"""One rank of the two-process DeepSpeed ZeRO-3 runs in test_distributed.py (torchrun with the variables
`accelerate launch --config_file latentreason/configs/accelerate/deepspeed-zero3.yaml` sets).

In one launch:
  coconut/   Coconut on chains whose ranks' longest thoughts differ on every step (the latent pass pads),
             evaluating the held-out problems at step 2 and at the end, checkpointing at step 2; this rank
             writes zero3_{r}.json (per latent pass: its longest thought and the agreed one; the parameter
             values it keeps between steps and the most it had whole during a training forward; the final
             evaluation's records) and its final weights, gathered whole, in rank{r}.safetensors;
  resumed/   coconut/ resumed from its step-2 checkpoint;
  atp/       ATP-Latent on the same chains (a latent-head call per slot, a 1-layer step decoder);
  bf16/      two steps of coconut/ in bf16 (the engine's bf16 weights, gathered, in bf16_rank{r}.safetensors);
  lora/      CODI with LoRA adapters (peft);
  rl/        GRPO on distributed_rl_worker.py's tiny ATP-Latent model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from deepspeed.runtime.zero.partition_parameters import GatheredParameters
from safetensors.torch import save_file

from latentreason.processes import leave_process_group
from latentreason.training.prepared_module import PreparedModule
from latentreason.training.run import run_training
from tests.distributed_latent import latent_config, latent_run, train_recording_passes
from tests.distributed_rl_worker import run_rl_recording


class WholeValues:
    """The most parameter values whole at once in each training forward (measured after each submodule
    that owns parameters ran, before DeepSpeed frees them: its hooks come after these)."""

    def __init__(self, lm):
        self.params, self.per_forward = list(lm.parameters()), []
        for module in lm.modules():
            if any(True for _ in module.parameters(recurse=False)):
                module.register_forward_hook(self.measure)
        forward = PreparedModule.forward

        def counting(module, *args, run=None):
            if run is None:  # the training objective, not evaluation (which gathers everything)
                self.per_forward.append(0)
            return forward(module, *args, run=run)

        PreparedModule.forward = counting

    def measure(self, module, inputs, output) -> None:
        if torch.is_grad_enabled():
            whole = sum(p.data.numel() for p in self.params)
            self.per_forward[-1] = max(self.per_forward[-1], whole)


def gathered_weights(lm) -> dict:
    """The live weights, gathered whole (a collective); copies, as safetensors refuses shared storage."""
    with GatheredParameters(list(lm.parameters())):
        return {k: v.detach().clone().contiguous() for k, v in lm.state_dict().items()}


def coconut(out: Path, run: dict, rank: int) -> None:
    config, lm = latent_run("coconut", out / "coconut", run)
    whole = WholeValues(lm)
    result, passes = train_recording_passes("coconut", config, lm)
    records = [{"question": r["question"], "generated": r["generated"]} for r in result.eval.records]
    view = {
        "passes": passes,
        "held": sum(p.ds_tensor.numel() for p in lm.parameters()),  # its partition of every tensor
        "whole_between_steps": sum(p.data.numel() for p in lm.parameters()),
        "whole_in_forwards": whole.per_forward,
        "total": sum(p.ds_numel for p in lm.parameters()),
        "n": result.eval.n,
        "records": records,
    }
    (out / f"zero3_{rank}.json").write_text(json.dumps(view))
    save_file(gathered_weights(lm), out / f"rank{rank}.safetensors")


def resume(out: Path, run: dict) -> None:
    if PartialState().is_main_process:
        shutil.copytree(out / "coconut" / "checkpoint-2", out / "resumed" / "checkpoint-2")
    PartialState().wait_for_everyone()
    config = latent_config("coconut", out / "resumed", {**run, "resume_from_checkpoint": "auto"})
    assert run_training("coconut", config, progress=False).global_step == run["max_steps"]


def main(out: Path, runs: dict) -> None:
    rank = int(os.environ["RANK"])
    sft = {**runs["coconut"], "eval_steps": 2, "save_steps": 2}
    coconut(out, sft, rank)
    resume(out, sft)
    atp_passes = train_recording_passes("atp", *latent_run("atp", out / "atp", runs["atp"]))[1]
    (out / f"atp{rank}.json").write_text(json.dumps(atp_passes))
    bf16 = {**runs["coconut"], "max_steps": 2, "num_eval_examples": 0, "bf16": "true"}
    config, lm = latent_run("coconut", out / "bf16", bf16)
    run_training("coconut", config, progress=False, lm=lm)
    save_file(gathered_weights(lm), out / f"bf16_rank{rank}.safetensors")
    run_training("codi", latent_config("codi", out / "lora", runs["lora"]), progress=False)
    run_rl_recording(out, runs["rl"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
    leave_process_group(0)
