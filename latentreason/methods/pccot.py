"""PCCoT (Wu et al. 2025): CODI's objective with the thoughts found by Jacobi iteration.

All num_latents thoughts are updated in parallel `jacobi_iterations` times (engine/jacobi.py), in
training and at inference. T = num_latents gives CODI's sequential thoughts exactly; T < num_latents is
T + 1 model calls instead of num_latents + 1, each over all slots (benchmarks/jacobi.py shows what that
buys: on a CPU only T <= 2 is faster, on a GPU a call costs its launch latency). Defaults follow the
reference code: no projector (the thought is the last hidden state), distillation weight 1 with the
layer-wise std, 24 latents and 3 iterations (its GPT-2 run).
Changed from the reference: its Jacobi calls take no attention mask (pads are attended); ours do.
"""

from __future__ import annotations

from dataclasses import dataclass

from latentreason.config import field
from latentreason.engine.jacobi import jacobi_latent_forward
from latentreason.errors import ConfigError
from latentreason.evaluation.latent_solver import JacobiSolver
from latentreason.methods.base import register_method
from latentreason.methods.codi import CODI, CODIConfig


@dataclass
class PCCoTConfig(CODIConfig):
    num_latents: int = field(24, help="continuous thoughts, all updated in parallel (the reference's GPT-2 run: 24)")
    jacobi_iterations: int = field(
        3, help="Jacobi updates T of all thoughts (the reference: 3); T = num_latents is exactly CODI's sequential pass"
    )
    use_projector: bool = field(False, help="map hidden states through CODI's MLP projector (the reference: no)")
    distill_weight: float = field(1.0, help="weight of the hidden-state distillation (the reference: 1)")

    def __post_init__(self):
        super().__post_init__()
        if self.jacobi_iterations < 1:
            raise ConfigError(f"field 'jacobi_iterations': must be >= 1, got {self.jacobi_iterations}")


@register_method("pccot")
class PCCoT(CODI):
    config_cls = PCCoTConfig

    def student_pass(self, lm, latent_batch):
        iterations = self.config.jacobi_iterations
        return jacobi_latent_forward(lm, latent_batch, self.thought_map(lm), iterations, all_layers=True)

    def solver(self, lm):
        cfg = self.config
        return JacobiSolver(
            lm, self.thought_map(lm), cfg.num_latents, cfg.jacobi_iterations, cfg.max_new_tokens, name=self.name
        )
