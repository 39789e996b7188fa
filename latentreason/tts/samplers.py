"""Latent samplers (LatentTTS, arXiv 2510.07745): what makes N latent trajectories of one problem differ.

A sampler is chosen by name with its arguments checked like config fields (`latent_sampler_from_args`),
completed with the defaults of the method it samples (`for_method`), then bound to one batch's row seeds
(`bind`), which gives the `LatentPerturbation` the rollout applies to the latent steps only:

    noise    z + sigma x N(0, I) on each thought fed (tts/noise.py)
    dropout  Monte-Carlo dropout on chosen sublayers' outputs in the calls that feed thoughts (tts/dropout.py)

Every draw is keyed by (row seed, thought slot, stream), the row seed by (seed, question, sample): a
trajectory is the same whichever problems share its batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from latentreason.config import field, from_dict
from latentreason.engine.perturbation import LatentPerturbation
from latentreason.errors import ConfigError
from latentreason.named import Registry

LATENT_SAMPLERS = Registry("latent sampler")
register_latent_sampler = LATENT_SAMPLERS.register

# LatentTTS's sigma: 0.6 for Coconut, 1.4 for CODI. SIM-CoT feeds Coconut's kind of thought (the last hidden
# state as it is) and PCCoT CODI's (the projector's output), so they take those values. CoLaR and Pause feed
# embedding-sized thoughts, ATP-Latent a VAE latent pulled toward N(0, I): no value is published, give sigma.
NOISE_SIGMA = {"coconut": 0.6, "simcot": 0.6, "codi": 1.4, "pccot": 1.4}
DROPOUT_P = 0.2  # LatentTTS's value for Coconut; used for every method
SCALES = ("absolute", "rms")
SUBLAYERS = ("attention", "mlp")


@dataclass
class NoiseConfig:
    sigma: float | None = field(None, help="std of the noise (default: the method's, see NOISE_SIGMA)")
    scale: str = field("absolute", help="absolute: sigma as is (LatentTTS); rms: sigma x the thought's own RMS")

    def __post_init__(self):
        if self.sigma is not None and not self.sigma >= 0:
            raise ConfigError(f"sigma: expected >= 0, got {self.sigma}")
        if self.scale not in SCALES:
            raise ConfigError(f"scale: expected one of {', '.join(SCALES)}, got {self.scale!r}")

    def for_method(self, method: str) -> NoiseConfig:
        if self.sigma is not None:
            return self
        if method not in NOISE_SIGMA:
            known = ", ".join(f"{name} {sigma}" for name, sigma in NOISE_SIGMA.items())
            raise ConfigError(
                f"sigma: no default for {method} (LatentTTS's values fit the thoughts of {known}); give one, "
                "e.g. '{sigma: 0.5, scale: rms}'"
            )
        return dataclasses.replace(self, sigma=NOISE_SIGMA[method])


@dataclass
class DropoutConfig:
    p: float | None = field(None, help=f"probability of dropping each activation (default {DROPOUT_P})")
    sublayers: list = field(list(SUBLAYERS), help=f"whose outputs are dropped in every layer: {', '.join(SUBLAYERS)}")

    def __post_init__(self):
        if self.p is not None and not 0 <= self.p < 1:
            raise ConfigError(f"p: expected a probability in [0, 1), got {self.p}")
        unknown = [name for name in self.sublayers if name not in SUBLAYERS]
        if unknown or not self.sublayers or len(set(self.sublayers)) != len(self.sublayers):
            raise ConfigError(
                f"sublayers: expected a non-empty list of distinct names among {', '.join(SUBLAYERS)}, "
                f"got {self.sublayers!r}"
            )

    def for_method(self, method: str) -> DropoutConfig:
        return self if self.p is not None else dataclasses.replace(self, p=DROPOUT_P)


@dataclass(frozen=True)
class LatentSampler:
    """A sampler's name and settings; `bind` makes the perturbation of one batch."""

    name: str
    config: NoiseConfig | DropoutConfig

    def for_method(self, method: str) -> LatentSampler:
        """The settings left unset filled with the method's defaults (ConfigError when it has none)."""
        return LatentSampler(self.name, self.config.for_method(method))

    def bind(self, seeds: torch.Tensor, sampled: torch.Tensor | None = None) -> LatentPerturbation:
        """The perturbation of a batch whose rows have these seeds [B]; only rows with `sampled` [B] bool (default
        all) are perturbed, the others run exactly as without a sampler."""
        sampled = torch.ones_like(seeds, dtype=torch.bool) if sampled is None else sampled
        return LATENT_SAMPLERS.get_class(self.name)(self.config, seeds, sampled)

    def settings(self) -> dict:
        return dataclasses.asdict(self.config)


def latent_sampler_from_args(name: str, args: dict | None = None) -> LatentSampler:
    """The sampler `name` with its arguments checked against its config (unknown keys, bad types and values named)."""
    cls = LATENT_SAMPLERS.get_class(name)
    source = f"--latent-sampler-args for {name}"
    try:
        config = from_dict(cls.config_cls, args or {}, source)
    except ConfigError as err:
        raise ConfigError(str(err) if str(err).startswith(source) else f"{source}: {err}") from None
    return LatentSampler(name, config)
