"""Where a loaded model runs and in which dtype, as `eval` and `serve` choose them from their flags."""

from __future__ import annotations

import torch


def default_device(device: str | None) -> str:
    """`device` as given, else the GPU when there is one."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def eval_dtype(name: str, device: str) -> torch.dtype:
    """The weights' dtype for --dtype: 'auto' is bfloat16 on a GPU that supports it, else float32."""
    if name == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)
