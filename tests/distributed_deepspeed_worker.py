"""One rank of the two-process DeepSpeed ZeRO-2 runs in test_distributed.py (torchrun with the variables
`accelerate launch --config_file latentreason/configs/accelerate/deepspeed-zero2.yaml` sets).

In one launch:
  sft/       the DDP test's CoT run, checkpointing at step 2 (ranks' parameters in rank{r}.safetensors,
             the records of the final sharded evaluation in eval{r}.json);
  accum/     the same global batch as 2 micro-batches of 4 per process (gradient accumulation);
  resumed/   sft/ resumed from its step-2 checkpoint;
  bf16/      two steps of sft/ in bf16 (the engine's bf16 model in bf16_rank{r}.safetensors);
  nan/       sft/ with rank 1's step-2 loss NaN (the skip must reach both ranks);
  rl/        GRPO on distributed_rl_worker.py's tiny ATP-Latent model;
  stop/      sft/ with rank 1's loss NaN from step 2 on and max_nonfinite_steps=2 (the error goes to
             stop{r}.txt).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

from latentreason.data.sources import load_train_and_held_out
from latentreason.errors import UserError
from latentreason.methods import get_method
from latentreason.model.build import build_latent_lm
from latentreason.processes import leave_process_group
from latentreason.train_config import SFTConfig
from latentreason.training.run import run_training
from tests.distributed_rl_worker import run_rl_recording
from tests.helpers import tiny_train_config

COT_LOSS = get_method("cot").loss


def nan_loss_on_rank_1(bad_calls: set[int]) -> None:
    """Rank 1's cot loss is NaN on the given calls (1-based; one micro-batch per step) while its gradients
    stay finite, the case DeepSpeed alone would apply; rank 0's loss stays finite."""
    calls = {"n": 0}

    def loss(self, lm, batch):
        calls["n"] += 1
        value, metrics = COT_LOSS(self, lm, batch)
        if calls["n"] in bad_calls and int(os.environ["RANK"]) == 1:
            value = value + value.detach() * math.nan  # NaN, with the gradient of `value`
        return value, metrics

    get_method("cot").loss = loss


def main(out: Path, runs: dict) -> None:
    run, rank = runs["sft"], int(os.environ["RANK"])
    sft = tiny_train_config(SFTConfig, out / "sft", **run, save_steps=2)
    lm = build_latent_lm(sft, load_train_and_held_out(sft)[0])
    result = run_training("cot", sft, progress=False, lm=lm)  # trains `lm` in place
    save_file({k: v.detach().clone().contiguous() for k, v in lm.state_dict().items()}, out / f"rank{rank}.safetensors")
    records = [{"question": r["question"], "generated": r["generated"]} for r in result.eval.records]
    (out / f"eval{rank}.json").write_text(json.dumps({"n": result.eval.n, "records": records}))

    accum = {**run, "per_device_train_batch_size": run["per_device_train_batch_size"] // 2}
    run_training(
        "cot", tiny_train_config(SFTConfig, out / "accum", **accum, gradient_accumulation_steps=2), progress=False
    )

    if PartialState().is_main_process:
        shutil.copytree(out / "sft" / "checkpoint-2", out / "resumed" / "checkpoint-2")
    PartialState().wait_for_everyone()
    resumed = tiny_train_config(SFTConfig, out / "resumed", **run, resume_from_checkpoint="auto")
    assert run_training("cot", resumed, progress=False).global_step == sft.max_steps

    bf16 = tiny_train_config(SFTConfig, out / "bf16", **{**run, "max_steps": 2, "num_eval_examples": 0}, bf16="true")
    lm = build_latent_lm(bf16, load_train_and_held_out(bf16)[0])
    run_training("cot", bf16, progress=False, lm=lm)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in lm.state_dict().items()}, out / f"bf16_rank{rank}.safetensors"
    )

    nan_loss_on_rank_1({2})
    run_training(
        "cot", tiny_train_config(SFTConfig, out / "nan", **run, save_steps=1, save_total_limit=0), progress=False
    )

    run_rl_recording(out, runs["rl"])

    nan_loss_on_rank_1({2, 3, 4})
    stop = tiny_train_config(SFTConfig, out / "stop", **run, save_steps=1, save_total_limit=0, max_nonfinite_steps=2)
    try:
        run_training("cot", stop, progress=False)
    except UserError as error:
        (out / f"stop{rank}.txt").write_text(str(error))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
    leave_process_group(0)
