"""Where a backbone keeps its stack of decoder layers, for the code that hooks them (steering, dropout,
depth shortcuts)."""

from __future__ import annotations

from torch import nn

from latentreason.errors import UserError


def decoder_layers(lm) -> nn.ModuleList:
    """The backbone's stack of decoder layers (`layers` in Llama/Qwen/Mistral, `h` in GPT-2)."""
    for name in ("layers", "h"):
        layers = getattr(lm.backbone, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise UserError(f"{type(lm.backbone).__name__}: no decoder layers found (a ModuleList named 'layers' or 'h')")
