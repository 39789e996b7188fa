"""What `latentreason demo` runs: its rows, the recipe each one trains with, and the command for it.

Every row is a shipped recipe (`latentreason/configs/<row>-tiny.yaml`, the file `latentreason train
--config <row>-tiny` uses), run as that command in its own process, so the demo is the CLI and nothing
else. CoT-SFT and No-CoT start from the same from-scratch initialisation; every latent method starts
from the CoT-SFT model, as the papers do; the `-rl` rows are GRPO on their SFT row's model.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from latentreason.config import load_config
from latentreason.errors import UserError
from latentreason.methods import get_method
from latentreason.recipes import RL_METHODS, SHIPPED_CONFIGS
from latentreason.rl.config import RLConfig


@dataclass(frozen=True)
class Row:
    start: str | None  # the row whose final model it starts from (None: a fresh tiny model)
    seconds: float  # training time on 2 CPU cores, one thread (for the time-left estimate and scheduling)


# In the table's order. `seconds`: training times of `latentreason demo --rows all --seed 2` on this
# repository's 2-core machine (docs/results.md), two rows at a time with one thread each (the curriculum
# family's: of the default demo on a quiet machine after its budget went to 500 steps; KaVa, Latent-SFT,
# Token Assorted and LTA-Thinker: seed 1 of `demo --rows kava,latent-sft,token-assorted,lta-thinker`, a busy machine;
# System-1.5: seed 42 of `demo --rows system15` on a busy machine, where CoT took 357 s; CoT-SFT and No-CoT: their
# 650-step times scaled to today's 450 steps).
ROWS = {
    "cot": Row(None, 130),
    "no-cot": Row(None, 65),
    "icot": Row("cot", 75),
    "coconut": Row("cot", 120),
    "pause": Row("cot", 80),
    "codi": Row("cot", 190),
    "pccot": Row("cot", 225),
    "kava": Row("cot", 340),
    "colar": Row("cot", 150),
    "simcot": Row("cot", 185),
    "atp": Row("cot", 185),
    "latent-sft": Row("cot", 270),
    "token-assorted": Row("cot", 150),
    "lta-thinker": Row("cot", 150),
    "system15": Row("cot", 355),
    "atp-rl": Row("atp", 50),
    "colar-rl": Row("colar", 180),
}
# The default: the flagship (ATP-Latent, SFT and SFT+RL), its main baseline (SIM-CoT) and both ends
# (CoT, No-CoT). `--rows all` runs the whole table.
DEFAULT_ROWS = ("cot", "no-cot", "simcot", "atp", "atp-rl")
TEST_TASK = {"num_steps": 3, "ops": "+-*", "modulus": 10}
NUM_TEST = 500
# --quick: the same pipeline with a model and budget small enough for a smoke test.
QUICK = {
    "tiny_model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "num_train_examples": 1024,
    "per_device_train_batch_size": 32,
    "max_steps": 12,
    "warmup_steps": 1,
}
QUICK_NUM_TEST = 64
QUICK_RL = {"max_steps": 2, "questions_per_step": 4, "num_generations": 4, "per_device_train_batch_size": 16}


def select_rows(names: list[str] | None) -> list[str]:
    """The rows asked for plus the rows they start from, in the table's order (None: the default rows;
    ['all']: every row)."""
    if not names:
        names = list(DEFAULT_ROWS)
    elif names == ["all"]:
        names = list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UserError(f"--rows: unknown {', '.join(unknown)}; the rows are all, {', '.join(ROWS)}")
    wanted = set()
    for name in names:
        while name is not None and name not in wanted:
            wanted.add(name)
            name = ROWS[name].start
    return [name for name in ROWS if name in wanted]


def row_overrides(row: str, output_dir: Path, quick: bool, seed: int | None) -> dict:
    """The fields the demo sets on top of the row's recipe."""
    overrides = {"output_dir": str(output_dir / "runs" / row), "num_eval_examples": 0}
    if seed is not None:
        overrides["seed"] = seed
    start = ROWS[row].start
    if start is not None:
        overrides["model_name_or_path"] = str(output_dir / "runs" / start / "final")
    if quick and row in RL_METHODS:
        overrides.update(QUICK_RL)
    elif quick:
        overrides.update({k: v for k, v in QUICK.items() if k != "tiny_model" or start is None})
    return overrides


def row_config(row: str, output_dir: Path, quick: bool, seed: int | None = None):
    """The row's recipe with the demo's fields, checked as `latentreason train/rl` would check it."""
    config_cls = RLConfig if row in RL_METHODS else get_method(row).config_cls
    return load_config(config_cls, SHIPPED_CONFIGS / f"{row}-tiny.yaml", row_overrides(row, output_dir, quick, seed))


def row_command(row: str, output_dir: Path, quick: bool, seed: int | None) -> list[str]:
    """`latentreason train|rl --config <row>-tiny --field value ...` for the row, as an argv."""
    command = [sys.executable, "-m", "latentreason.cli", "rl" if row in RL_METHODS else "train"]
    command += ["--config", f"{row}-tiny"]
    for name, value in row_overrides(row, output_dir, quick, seed).items():
        command += [f"--{name}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return command
