"""Gaussian noise on latent inputs (LatentTTS): the thought fed at slot j is z + sigma x N(0, I) instead of z.

The draw is keyed by (row seed, slot j, STREAM_LATENT_NOISE). With `scale: absolute` sigma is added as it
is, like LatentTTS, so its values mean what they meant on its models (GPT-2's last hidden states); with
`scale: rms` sigma is relative to each thought's own root mean square, a choice that carries over between
models whose thoughts live at different scales. The controller, the recorded latents and the model all see
the noisy thought.
"""

from __future__ import annotations

import torch

from latentreason.engine.noise import row_normal
from latentreason.engine.perturbation import LatentPerturbation
from latentreason.tts.samplers import NoiseConfig, register_latent_sampler

STREAM_LATENT_NOISE = 2  # row_uniform streams: 0 token sampling, 1 Soft Thinking's concept noise


@register_latent_sampler("noise")
class ThoughtNoise(LatentPerturbation):
    config_cls = NoiseConfig

    def __init__(self, config: NoiseConfig, seeds: torch.Tensor, sampled: torch.Tensor):
        self.config, self.seeds, self.sampled = config, seeds, sampled

    def thought(self, z: torch.Tensor, rows: torch.Tensor, slot: int) -> torch.Tensor:
        on = self.sampled.to(rows.device)[rows].nonzero().squeeze(1)  # [n] positions of the sampled rows
        if on.numel() == 0 or self.config.sigma == 0:
            return z
        seeds = self.seeds.to(rows.device)[rows[on]]
        noise = row_normal(seeds, torch.full_like(seeds, slot), STREAM_LATENT_NOISE, z.shape[-1])  # [n, d] float64
        picked = z[on]
        scale = self.config.sigma
        if self.config.scale == "rms":
            scale = scale * picked.double().pow(2).mean(-1, keepdim=True).sqrt()  # [n, 1]
        return z.index_copy(0, on, picked + (scale * noise).to(z.dtype))
