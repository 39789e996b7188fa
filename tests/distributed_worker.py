"""One rank of the two-process runs in test_distributed.py (started by torchrun or accelerate launch).

Trains a tiny CoT model with the shared trainer, then writes what this rank holds: its parameters
(rank{r}.safetensors) and the held-out records its sharded evaluation gathered (eval{r}.json).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

from latentreason.data.sources import load_train_and_held_out
from latentreason.evaluation.harness import evaluate_sharded
from latentreason.methods import get_method
from latentreason.model.build import build_latent_lm
from latentreason.processes import leave_process_group
from latentreason.train_config import SFTConfig
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config


def main(out: Path, overrides: dict) -> None:
    config = tiny_train_config(SFTConfig, out / "run", **overrides)
    train, held_out = load_train_and_held_out(config)
    lm = build_latent_lm(config, train)
    # One problem over two processes: one shard is empty.
    one = evaluate_sharded(get_method("cot")(config).solver(lm.eval()), held_out[:1], PartialState(cpu=True))
    result = run_training("cot", config, progress=False, lm=lm)  # trains `lm` in place
    rank = int(os.environ["RANK"])
    # Copies: tied embeddings share storage, which safetensors refuses.
    save_file({k: v.detach().clone().contiguous() for k, v in lm.state_dict().items()}, out / f"rank{rank}.safetensors")
    records = [{"question": r["question"], "generated": r["generated"]} for r in result.eval.records]
    (out / f"eval{rank}.json").write_text(json.dumps({"n": result.eval.n, "records": records, "one": one.n}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
    leave_process_group(0)
