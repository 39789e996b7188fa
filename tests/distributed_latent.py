"""Latent-method SFT runs that the two-process tests compare across launches (imported by the workers).

`train_recording_passes` trains and records, for every teacher-forced latent pass, this rank's longest
thought and the one every rank agreed to run (larger when this rank padded its pass).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from latentreason.data.sources import load_train_and_held_out
from latentreason.engine import latent_pass
from latentreason.methods import get_method
from latentreason.model.build import build_latent_lm
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config


def latent_config(method: str, output_dir: Path, run: dict):
    return tiny_train_config(get_method(method).config_cls, output_dir, **run)


def latent_run(method: str, output_dir: Path, run: dict) -> tuple[object, object]:
    """(config, the fresh tiny model it trains)."""
    config = latent_config(method, output_dir, run)
    return config, build_latent_lm(config, load_train_and_held_out(config)[0])


@contextlib.contextmanager
def recorded_passes():
    """Within: every teacher-forced latent pass appends [local longest thought, agreed longest thought] to
    the yielded list."""
    passes: list[list[int]] = []
    agreed = latent_pass.agreed_max

    def recording(n: int) -> int:
        passes.append([n, agreed(n)])
        return passes[-1][1]

    latent_pass.agreed_max = recording
    try:
        yield passes
    finally:
        latent_pass.agreed_max = agreed


def train_recording_passes(method: str, config, lm) -> tuple[object, list[list[int]]]:
    """Train `lm` in place: (the run's result, [local longest thought, agreed longest thought] per pass)."""
    with recorded_passes() as passes:
        return run_training(method, config, progress=False, lm=lm), passes
