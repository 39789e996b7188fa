"""What a process knows about its launch before accelerate starts (torchrun and `accelerate launch`
set RANK and WORLD_SIZE); creating accelerate's state early would fix its settings too soon."""

from __future__ import annotations

import os

import torch


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    """print, on the main process only."""
    if is_main_process():
        print(message)


def launched_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def multi_process_cpu() -> bool:
    """Launched as several processes on a machine without GPUs. accelerate then needs cpu=True, or it
    silently runs every process as its own single-process run (gloo is the CPU backend)."""
    return launched_processes() > 1 and not torch.cuda.is_available()
