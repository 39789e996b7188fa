"""One rank of the two-process FSDP runs in test_distributed.py (torchrun with accelerate's FSDP variables).

In one launch, each run writing its final model through the FSDP gather:
  sft/       the DDP test's CoT run, evaluating the held-out problems at step 2 and at the end (the final
             records go to fsdp{r}.json, with how many of the model's values this rank holds) and
             checkpointing every step, the last 3 kept;
  resumed/   the same run resumed from sft/'s step-2 checkpoint;
  rl/        GRPO on distributed_rl_worker.py's tiny ATP-Latent model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from accelerate import PartialState
from torch.distributed.tensor import DTensor

from latentreason.data.sources import load_train_and_held_out
from latentreason.model.build import build_latent_lm
from latentreason.processes import leave_process_group
from latentreason.train_config import SFTConfig
from latentreason.training.run import run_training
from tests.distributed_rl_worker import run_rl_recording
from tests.helpers import tiny_train_config


def main(out: Path, runs: dict) -> None:
    sft = tiny_train_config(SFTConfig, out / "sft", **runs["sft"], eval_steps=2, save_steps=1, save_total_limit=3)
    lm = build_latent_lm(sft, load_train_and_held_out(sft)[0])
    result = run_training("cot", sft, progress=False, lm=lm)  # shards `lm` in place
    records = [{"question": r["question"], "generated": r["generated"]} for r in result.eval.records]
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in lm.parameters())
    view = {"n": result.eval.n, "records": records, "held": held, "total": sum(p.numel() for p in lm.parameters())}
    (out / f"fsdp{os.environ['RANK']}.json").write_text(json.dumps(view))

    if PartialState().is_main_process:
        shutil.copytree(out / "sft" / "checkpoint-2", out / "resumed" / "checkpoint-2")
    PartialState().wait_for_everyone()
    resumed = tiny_train_config(SFTConfig, out / "resumed", **runs["sft"], resume_from_checkpoint="auto")
    assert run_training("cot", resumed, progress=False).global_step == sft.max_steps

    run_rl_recording(out, runs["rl"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
    leave_process_group(0)
