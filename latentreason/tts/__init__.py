"""Latent test-time scaling: samplers of N diverse latent trajectories per problem (`latent_sampler_from_args`)."""

from latentreason.tts import dropout as _dropout  # noqa: F401  (registers dropout)
from latentreason.tts import noise as _noise  # noqa: F401  (registers noise)
from latentreason.tts.samplers import LATENT_SAMPLERS, LatentSampler, latent_sampler_from_args

__all__ = ["LATENT_SAMPLERS", "LatentSampler", "latent_sampler_from_args"]
