"""Atomic checkpoints: write into a temporary directory, then rename; only complete ones are resumed.

A checkpoint directory holds the model (safetensors + tokenizer), optimizer.pt, scheduler.pt,
rng.pt and trainer_state.json, which is written last and marks the checkpoint complete. A run
killed while saving leaves `.tmp-checkpoint-N` behind; resuming names it and skips it, and the next
save of step N replaces it. Every file, then the directory, reaches the disk before the rename
(outputs.publish), so not even a power loss leaves a complete-looking checkpoint with data missing.
Weights and optimizer moments are whole tensors under DDP and FSDP (FSDP gathers them first, see
backends/fsdp.py): such a checkpoint resumes under DDP, FSDP or one process. Under DeepSpeed the optimizer
is per-rank partitions in `deepspeed/` instead of optimizer.pt (written by every rank into the temporary
directory before the rename, see backends/deepspeed.py); it resumes under DeepSpeed with as many processes.
The launch's backend saves and loads the optimizer state (`Backend.save_optimizer`, `load_optimizer`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from latentreason.errors import UserError
from latentreason.training.outputs import publish

STATE_FILE = "trainer_state.json"
PREFIX = "checkpoint-"
TMP_PREFIX = f".tmp-{PREFIX}"


def temp_dir(output_dir: Path, step: int) -> Path:
    """The temporary directory a checkpoint of `step` is written into, emptied of a killed save's leftovers."""
    tmp = output_dir / f"{TMP_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(
    output_dir: Path, step: int, lm, optimizer_state: dict | None, scheduler, state: dict, keep: int, weights=None
) -> Path:
    """Complete the checkpoint in `temp_dir(output_dir, step)` (made here unless `optimizer_state` is None:
    DeepSpeed's partitions are already in it) and rename it. `weights`: the model's whole weights when the
    live ones are sharded (see `LatentLM.save_pretrained`)."""
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f"{TMP_PREFIX}{step}"
    if optimizer_state is not None:
        temp_dir(output_dir, step)
    lm.save_pretrained(tmp, state_dict=weights)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    publish(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a directory without trainer_state.json is incomplete)."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX}*"):
        suffix = path.name[len(PREFIX) :]
        if suffix.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def incomplete_checkpoints(output_dir: Path) -> list[tuple[Path, str]]:
    """(path, why) for every half-written checkpoint in output_dir."""
    found = [(p, "a save that never finished") for p in Path(output_dir).glob(f"{TMP_PREFIX}*") if p.is_dir()]
    for path in Path(output_dir).glob(f"{PREFIX}*"):
        if path.is_dir() and not (path / STATE_FILE).is_file():
            found.append((path, f"no {STATE_FILE}"))
    return sorted(found)


def resolve_resume(output_dir: Path, resume: str | None, report: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to continue from: None, the latest complete one ('auto') or the path given."""
    if resume is None:
        return None
    if resume == "auto":
        for path, why in incomplete_checkpoints(output_dir):
            report(f"skipping incomplete checkpoint {path} ({why})")
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"resume_from_checkpoint: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def clear_run(output_dir: Path) -> None:
    """Delete what a previous run wrote (checkpoints, final model, log) before overwriting it."""
    output_dir = Path(output_dir)
    for path in [*output_dir.glob(f"{PREFIX}*"), *output_dir.glob(".tmp-*"), output_dir / "final"]:
        shutil.rmtree(path, ignore_errors=True)
    (output_dir / "log.jsonl").unlink(missing_ok=True)


def read_optimizer_state(path: Path) -> dict:
    """The whole optimizer state a DDP or FSDP run saved in checkpoint `path`."""
    if not (path / "optimizer.pt").is_file():
        raise UserError(
            f"{path} was written under DeepSpeed (no optimizer.pt); resume it under DeepSpeed with the same "
            "number of processes"
        )
    # weights_only=True: a checkpoint can never run code while loading.
    return torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")


def load_training_state(path: Path, scheduler) -> dict:
    """Scheduler, RNG and loop state (the backend resumes the optimizer: `Backend.load_optimizer`)."""
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / STATE_FILE).read_text())


def rng_state() -> dict:
    """Torch RNG states (dropout, sampling). Data order never uses a global RNG: it is seeded per epoch."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
