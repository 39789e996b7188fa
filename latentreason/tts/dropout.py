"""Monte-Carlo dropout during the latent steps (LatentTTS), through forward hooks on chosen sublayers.

LatentTTS switches on GPT-2's own dropout modules while a trajectory thinks. Here the masks are drawn per
row, so a batch can mix dropped and untouched rows, and from the row's counter-based generator (row seed,
thought slot, one stream per sublayer) instead of torch's global one, so a trajectory does not depend on
its batch. Any model gets them, with or without dropout modules of its own (Llama has none): the outputs
of each layer's attention and/or MLP (the places of GPT-2's residual dropout) are multiplied by
keep / (1 - p) in the calls that feed a thought. The prompt's prefill, shared by the N samples, and the
calls that feed <eot> and the answer run without dropout. Hooks live only inside `attached`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from latentreason.engine.decoder_layers import decoder_layers
from latentreason.engine.perturbation import LatentPerturbation
from latentreason.engine.sampling import row_uniform
from latentreason.errors import UserError
from latentreason.tts.samplers import SUBLAYERS, DropoutConfig, register_latent_sampler

DROPOUT_STREAM = 1 << 16  # + the sublayer's index: layer i's attention is 2i, its MLP 2i + 1
MODULE_NAMES = {"attention": ("self_attn", "attn"), "mlp": ("mlp",)}  # Llama/Qwen2 and GPT-2 spellings


def sublayer_modules(lm, sublayers: list[str]) -> list[tuple[int, nn.Module]]:
    """(stream, module) of each chosen sublayer of every decoder layer."""
    found = []
    for i, layer in enumerate(decoder_layers(lm)):
        for j, name in enumerate(SUBLAYERS):
            if name not in sublayers:
                continue
            module = next((getattr(layer, attr) for attr in MODULE_NAMES[name] if hasattr(layer, attr)), None)
            if not isinstance(module, nn.Module):
                raise UserError(
                    f"dropout sublayer '{name}': {type(layer).__name__} has no module named "
                    f"{' or '.join(MODULE_NAMES[name])}"
                )
            found.append((DROPOUT_STREAM + len(SUBLAYERS) * i + j, module))
    return found


@register_latent_sampler("dropout")
class LatentDropout(LatentPerturbation):
    config_cls = DropoutConfig

    def __init__(self, config: DropoutConfig, seeds: torch.Tensor, sampled: torch.Tensor):
        self.config, self.seeds, self.sampled = config, seeds, sampled
        self.armed = None  # for the next call: (seeds [n], positions [n] in its batch, slot, batch size)

    def before_forward(self, rows: torch.Tensor, latent: torch.Tensor, slot: int) -> None:
        on = (latent & self.sampled.to(rows.device)[rows]).nonzero().squeeze(1)  # [n]
        self.armed = (self.seeds.to(rows.device)[rows[on]], on, slot, rows.shape[0]) if on.numel() else None

    @contextmanager
    def attached(self, lm) -> Iterator[None]:
        handles = []
        try:
            for stream, module in sublayer_modules(lm, self.config.sublayers):
                handles.append(module.register_forward_hook(self.hook(stream)))
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.armed = None

    def hook(self, stream: int):
        def drop(module, args, output):
            if self.armed is None:
                return None  # no row of this call feeds a sampled thought: the output stays as it is
            seeds, on, slot, batch = self.armed
            hidden = output[0] if isinstance(output, tuple) else output  # [b, L, d]
            if hidden.shape[0] != batch:
                raise RuntimeError(f"dropout armed for a batch of {batch} rows, called on {list(hidden.shape)}")
            n, length, width = on.shape[0], hidden.shape[1], hidden.shape[2]
            u = row_uniform(seeds, torch.full_like(seeds, slot), stream, length * width).view(n, length, width)
            keep = (u >= self.config.p).to(hidden.dtype) / (1 - self.config.p)
            dropped = hidden.index_copy(0, on, hidden[on] * keep)
            return (dropped, *output[1:]) if isinstance(output, tuple) else dropped

        return drop
