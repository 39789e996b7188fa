"""One rank of the two-process per-layer FSDP runs in test_fsdp_layers.py (torchrun with accelerate's FSDP
variables and TRANSFORMER_BASED_WRAP: every decoder layer is a unit of its own).

In one launch:
  sft/       Coconut with every step latent on chains of 1-3 steps, two rows per process: the processes'
             longest thoughts differ, so the latent pass pads (the padded slots are counted); held-out
             evaluation at the end; a checkpoint every 2 steps
  resumed/   the same run resumed from sft/'s step-2 checkpoint
  rl/        GRPO on distributed_rl_worker.py's tiny ATP-Latent model (rollouts stop at different slots)
Writes layers{r}.json: the FSDP units, how many of the model's values this rank holds, the slots it
padded, and the held-out records.
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

from latentreason.data.sources import load_train_and_held_out
from latentreason.engine import latent_pass
from latentreason.methods.coconut import CoconutConfig
from latentreason.model.build import build_latent_lm
from latentreason.training.run import run_training
from tests.distributed_rl_worker import run_rl_recording
from tests.helpers import tiny_train_config


def count_padding() -> list[int]:
    """Record, for every latent pass, how many slots it ran beyond its own batch's longest thought."""
    counts, agree = [], latent_pass.agreed_max

    def counting(n: int) -> int:
        agreed = agree(n)
        counts.append(agreed - n)
        return agreed

    latent_pass.agreed_max = counting
    return counts


def main(out: Path, runs: dict) -> None:
    padding = count_padding()
    sft = tiny_train_config(CoconutConfig, out / "sft", **runs["sft"], save_steps=2)
    lm = build_latent_lm(sft, load_train_and_held_out(sft)[0])
    result = run_training("coconut", sft, progress=False, lm=lm)  # shards `lm` in place
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in lm.parameters())
    view = {
        "units": sum(isinstance(m, FSDPModule) for m in lm.modules()),
        "layers": len(lm.model.model.layers),
        "held": held,
        "total": sum(p.numel() for p in lm.parameters()),
        "padding": padding[:],
        "n": result.eval.n,
        "records": [{"question": r["question"], "generated": r["generated"]} for r in result.eval.records],
    }
    (out / f"layers{os.environ['RANK']}.json").write_text(json.dumps(view))

    if PartialState().is_main_process:
        shutil.copytree(out / "sft" / "checkpoint-2", out / "resumed" / "checkpoint-2")
    PartialState().wait_for_everyone()
    resumed = tiny_train_config(CoconutConfig, out / "resumed", **runs["sft"], resume_from_checkpoint="auto")
    assert run_training("coconut", resumed, progress=False).global_step == sft.max_steps

    padding.clear()
    run_rl_recording(out, runs["rl"])
    (out / f"rl_padding{os.environ['RANK']}.json").write_text(json.dumps(padding))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
