"""One rank of the two-process per-layer FSDP runs in test_fsdp_layers.py (torchrun with accelerate's FSDP
variables and TRANSFORMER_BASED_WRAP: every decoder layer is a unit of its own).

In one launch:
  sft/       Coconut with every step latent on chains of 1-3 steps, two rows per process: the processes'
             longest thoughts differ, so latent passes pad (each pass's local and agreed longest thought is
             recorded); held-out evaluation at the end; a checkpoint every 2 steps
  resumed/   the same run resumed from sft/'s step-2 checkpoint
  rl/        GRPO on distributed_rl_worker.py's tiny ATP-Latent model (rollouts stop at different slots)
  atp/       ATP-Latent SFT on chains whose longest thoughts differ between the ranks (DDP's is in conftest's
             two_rl_ranks launch)
  lora/      CODI with LoRA adapters (the final model is saved merged, from the gathered shards)
Writes layers{r}.json: the FSDP units, how many of the model's values this rank holds, its latent
passes, and the held-out records.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from accelerate import PartialState
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from latentreason.processes import leave_process_group
from latentreason.training.run import run_training
from tests.distributed_latent import latent_config, latent_run, recorded_passes, train_recording_passes
from tests.distributed_rl_worker import run_rl_recording


def main(out: Path, runs: dict) -> None:
    rank = os.environ["RANK"]
    sft, lm = latent_run("coconut", out / "sft", {**runs["sft"], "save_steps": 2})
    result, passes = train_recording_passes("coconut", sft, lm)  # shards `lm` in place
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in lm.parameters())
    view = {
        "units": sum(isinstance(m, FSDPModule) for m in lm.modules()),
        "layers": len(lm.model.model.layers),
        "held": held,
        "total": sum(p.numel() for p in lm.parameters()),
        "passes": passes,
        "n": result.eval.n,
        "records": [{"question": r["question"], "generated": r["generated"]} for r in result.eval.records],
    }
    (out / f"layers{rank}.json").write_text(json.dumps(view))

    if PartialState().is_main_process:
        shutil.copytree(out / "sft" / "checkpoint-2", out / "resumed" / "checkpoint-2")
    PartialState().wait_for_everyone()
    resumed = latent_config("coconut", out / "resumed", {**runs["sft"], "resume_from_checkpoint": "auto"})
    assert run_training("coconut", resumed, progress=False).global_step == sft.max_steps

    with recorded_passes() as passes:
        run_rl_recording(out, runs["rl"])
    (out / f"rl_passes{rank}.json").write_text(json.dumps(passes))

    atp_passes = train_recording_passes("atp", *latent_run("atp", out / "atp", runs["atp"]))[1]
    (out / f"atp_passes{rank}.json").write_text(json.dumps(atp_passes))

    run_training("codi", latent_config("codi", out / "lora", runs["lora"]), progress=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
    leave_process_group(0)
