"""The step decoder: turns one group of latents back into the text of its reasoning step.

Input: the c latents of one step only (no question); target: the step's text + eos, teacher-forced.
Where its weights live (`mode`):
  shared  the base model itself decodes (no extra memory; the decoding loss also trains the base model)
  copy    a full second copy of the base model, as the ATP-Latent reference (doubles weights, gradients
          and optimizer state: ~+100% memory)
  small   a copy with `num_layers` layers, initialised from the base model's embeddings and first layers
          (about num_layers / L of a copy)
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from latentreason.engine.batch import IGNORE
from latentreason.engine.decode import decode_from
from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.loss import shifted_ce
from latentreason.engine.steps import Prefix
from latentreason.errors import ConfigError

MODES = ("shared", "copy", "small")


class StepDecoder:
    def __init__(self, lm, mode: str = "copy", num_layers: int = 2):
        if mode not in MODES:
            raise ConfigError(f"step_decoder: expected one of {MODES}, got {mode!r}")
        self.lm, self.mode = lm, mode
        if mode != "shared":
            lm.add_head("step_decoder", "step_decoder", num_hidden_layers=None if mode == "copy" else num_layers)

    @property
    def model(self):
        return self.lm.model if self.mode == "shared" else self.lm.heads["step_decoder"]

    def loss(self, latents: torch.Tensor, targets: list[list[int]]) -> tuple[torch.Tensor, int]:
        """Teacher-forced CE of each target given its latents. latents: [G, c, d]; targets: G id lists."""
        model = self.model
        groups, c, _ = latents.shape
        length = max(len(t) for t in targets)
        ids = torch.full((groups, length), self.lm.pad_id, dtype=torch.long, device=latents.device)  # [G, T]
        labels = torch.full((groups, c + length), IGNORE, dtype=torch.long, device=latents.device)  # [G, c+T]
        mask = torch.zeros((groups, c + length), dtype=torch.long, device=latents.device)  # [G, c+T]
        for g, target in enumerate(targets):
            ids[g, : len(target)] = torch.tensor(target)
            labels[g, c : c + len(target)] = torch.tensor(target)
            mask[g, : c + len(target)] = 1
        embeds = model.get_input_embeddings()(ids)  # [G, T, d]
        inputs = torch.cat([latents.to(embeds.dtype), embeds], dim=1)  # [G, c+T, d]
        positions = torch.arange(c + length, device=latents.device)[None].expand(groups, -1)
        hidden = model.base_model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions).last_hidden_state
        return shifted_ce(model.get_output_embeddings(), hidden, labels)

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy decoding of each group's text, batched on one KV cache. latents: [G, c, d]."""
        model = self.model
        view = SimpleNamespace(
            model=model, backbone=model.base_model, lm_head=model.get_output_embeddings(), pad_id=self.lm.pad_id
        )
        groups, c, _ = latents.shape
        mask = torch.ones((groups, c), dtype=torch.long, device=latents.device)
        cache = new_cache(view)
        last = forward_step(view, cache, mask, inputs_embeds=latents.to(model.dtype))[:, -1]  # [G, d]
        out = decode_from(view, Prefix(cache, mask, last), max_new_tokens, [self.lm.eos_id])
        return [row[:n].tolist() for row, n in zip(out.tokens, out.lengths.tolist())]
