"""LatentRM (LatentTTS): a score for every step of a latent trajectory, read off the latent model itself.

The backbone reads question + <bot> + the trajectory's thoughts in one call; the `step_score` head turns the
hidden state at thought slot t into the score of the prefix after step t + 1 (its first t + 1 thoughts).
The RM is a `LatentLM` carrying that head, so it saves and loads like every model here (safetensors, the
head's spec in latentreason.json); its backbone may be the policy's frozen or fine-tuned copy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentreason.engine.batch import left_pad, positions_from_mask
from latentreason.errors import UserError
from latentreason.model.latent_lm import LatentLM

SCORE_HEAD = "step_score"
METHOD = "latent-rm"


class LatentRM:
    """Per-step scores of latent trajectories; `lm` gets the score head if it has none."""

    def __init__(self, lm: LatentLM):
        self.lm = lm
        self.head = lm.add_head(SCORE_HEAD, SCORE_HEAD)
        lm.meta["reward_model"] = METHOD

    def step_scores(self, prompts: list[list[int]], latents: torch.Tensor, num_latents: torch.Tensor) -> torch.Tensor:
        """[B, N] scores: entry t rates the first t + 1 thoughts of row b; zero at t >= num_latents[b].

        prompts: B token lists each ending with <bot>; latents [B, N, d] the thoughts fed; num_latents [B]."""
        if len(prompts) != latents.shape[0] or num_latents.shape != (latents.shape[0],):
            raise ValueError(
                f"step_scores: {len(prompts)} prompts, latents {list(latents.shape)}, num_latents "
                f"{list(num_latents.shape)}; expected one prompt and one count per trajectory"
            )
        lm, device = self.lm, self.lm.device
        batch = left_pad(prompts, lm.pad_id)
        width = latents.shape[1]
        used = torch.arange(width, device=device)[None] < num_latents.to(device)[:, None]  # [B, N]
        mask = torch.cat([batch["attention_mask"].to(device), used.long()], 1)  # [B, P + N]
        embeds = torch.cat([lm.embed(batch["input_ids"].to(device)), latents.to(device, lm.embed.weight.dtype)], 1)
        hidden = lm.backbone(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
        ).last_hidden_state[:, -width:]  # [B, N, d]
        return self.head(hidden).float() * used

    def final_scores(self, prompts: list[list[int]], latents: torch.Tensor, num_latents: torch.Tensor) -> torch.Tensor:
        """[B] each trajectory's score after its last thought (best-of-N ranks by it); a row with no thought
        has nothing to rate and gets the score of its empty prefix: 0."""
        scores = self.step_scores(prompts, latents, num_latents)  # [B, N]
        last = (num_latents.to(scores.device) - 1).clamp(min=0)
        return scores.gather(1, last[:, None]).squeeze(1) * (num_latents.to(scores.device) > 0)

    def check_fits(self, policy: LatentLM, directory: str | Path) -> None:
        """The RM at `directory` reads `policy`'s prompts and thoughts: same vocabulary, same thought width."""
        if self.lm.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
            raise UserError(f"{directory}: the reward model's tokenizer differs from the evaluated model's")
        width, thought = self.lm.embed.weight.shape[1], policy.embed.weight.shape[1]
        if width != thought:
            raise UserError(f"{directory}: the reward model reads thoughts of width {width}, the model feeds {thought}")

    def save_pretrained(self, directory: str | Path) -> None:
        self.lm.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | None = None) -> LatentRM:
        """A reward model written by `save_pretrained` (a model without the score head is refused)."""
        lm = LatentLM.from_pretrained(directory, dtype=dtype)
        if SCORE_HEAD not in lm.heads:
            raise UserError(f"{directory}: not a latent reward model (no '{SCORE_HEAD}' head in latentreason.json)")
        return cls(lm)
