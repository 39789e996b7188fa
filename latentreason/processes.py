"""What a process knows about its launch before accelerate starts (torchrun and `accelerate launch`
set RANK and WORLD_SIZE); creating accelerate's state early would fix its settings too soon."""

from __future__ import annotations

import logging
import os
import sys

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


def leave_process_group(code: int) -> int:
    """End a process launched as one of several, once every process is done: flush and exit at once, with
    `code`. Interpreter exit would tear gloo down in C++ destructors, which, racing a process that already
    left, aborted ("terminate called without an active exception") or hung a finished run now and then;
    destroying the process group first hung too. Everything the run writes is already on disk (fsynced).
    Returns `code` when there is no process group to leave."""
    if launched_processes() == 1 or not torch.distributed.is_initialized():
        return code
    torch.distributed.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
