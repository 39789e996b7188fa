"""System-1.5's solver: the latent rollout with its two shortcuts, and what they saved per problem.

Every problem gets `num_steps` latent steps. Before a thought is fed, the step router reads it (the state the
previous step ended in): while s > lambda_step, the step is skipped, its output is step_adapter(thought) and that
becomes the thought (no model call, no cache position), as long as a fed step remains. The thoughts that are fed
go through the depth shortcut in `exit` mode (engine/depth_shortcut.py): each leaves the layer stack at the first
layer whose router w > lambda_depth. Both thresholds at 1 give exactly the plain latent rollout.

Per problem (Solution.metrics, averaged in results.json):
    layers_skipped_fraction  (layers skipped by depth exits + L x skipped steps) / (L x num_steps)
    depth_skipped_fraction   layers skipped by depth exits / (L x fed thoughts)
    steps_skipped            latent steps the step shortcut skipped (latent_tokens counts the fed ones)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from latentreason.config import field, from_dict
from latentreason.engine.depth_shortcut import DepthShortcut
from latentreason.engine.perturbation import LatentPerturbation
from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.errors import ConfigError
from latentreason.evaluation.latent_solver import LatentSolver


@dataclass
class ShortcutSettings:
    """The solver's thresholds (`latentreason eval --decoder-args '{lambda_depth: 0.8}'` on a System-1.5 model)."""

    lambda_depth: float = field(0.5, help="a thought exits at the first layer whose router w > lambda_depth (1: never)")
    lambda_step: float = field(0.5, help="a latent step is skipped when its step router's s > lambda_step (1: never)")

    def __post_init__(self):
        for name in ("lambda_depth", "lambda_step"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must lie in [0, 1] (1 = never), got {getattr(self, name)}")


class ShortcutSteps(LatentPerturbation):
    """The shortcuts of one rollout of `batch` rows, with per-row counts of what they skipped."""

    def __init__(self, lm, heads, num_steps: int, settings: ShortcutSettings, batch: int):
        self.heads, self.num_steps, self.lambda_step = heads, num_steps, settings.lambda_step
        self.depth = DepthShortcut(lm, heads, "exit", settings.lambda_depth)
        self.num_layers = len(heads.routers)
        self.skipped = torch.zeros(batch, dtype=torch.long, device=lm.device)  # [B] steps skipped
        self.fed_rows: list[torch.Tensor] = []  # per armed call: the original rows whose thought it fed

    def thought(self, z: torch.Tensor, rows: torch.Tensor, slot: int) -> torch.Tensor:
        """Skip steps while the step router says so and a fed step remains after them. z: [n, d], rows: [n]."""
        remaining = self.num_steps - slot - self.skipped[rows]  # [n] steps left, this one included
        for _ in range(self.num_steps - 1):
            skip = (remaining > 1) & (self.heads.step_router(z) > self.lambda_step)  # [n]
            if not bool(skip.any()):
                break
            z = torch.where(skip[:, None], self.heads.step_adapter(z), z)
            self.skipped[rows] += skip.long()
            remaining = remaining - skip.long()
        return z

    def stop(self, slot, hidden, z, extra, rows) -> torch.Tensor:
        """The controller: a row stops once its fed and skipped steps make num_steps."""
        return slot + self.skipped[rows] >= self.num_steps

    def before_forward(self, rows: torch.Tensor, latent: torch.Tensor, slot: int) -> None:
        if bool(latent.any()):
            self.depth.arm(latent[:, None])  # [b, 1]: the rows feeding a thought in this one-position call
            self.fed_rows.append(rows[latent])

    @contextmanager
    def attached(self, lm) -> Iterator[None]:
        with self.depth.attached():
            yield

    def metrics(self, fed: torch.Tensor) -> list[dict[str, float]]:
        """Each row's compute figures; fed: [B] thoughts each row fed."""
        depth = torch.zeros_like(self.skipped)  # [B] layers skipped by depth exits
        for rows, call in zip(self.fed_rows, self.depth.calls):
            depth.index_add_(0, rows, self.num_layers - call.exit_layer)
        layers = self.num_layers
        return [
            {
                "layers_skipped_fraction": (d + layers * s) / (layers * self.num_steps),
                "depth_skipped_fraction": d / (layers * f) if f else 0.0,
                "steps_skipped": float(s),
            }
            for d, s, f in zip(depth.tolist(), self.skipped.tolist(), fed.tolist())
        ]


class ShortcutSolver(LatentSolver):
    """question <bot> [num_steps latent steps, with shortcuts] <eot> answer."""

    latent_samplers = ()  # the rollout's perturbation slot holds the shortcuts

    def __init__(
        self,
        lm,
        thought_map,
        heads,
        num_steps: int,
        lambda_depth: float,
        lambda_step: float,
        max_new_tokens=64,
        name="system15",
    ):
        super().__init__(lm, thought_map, fixed_latents(num_steps), num_steps, max_new_tokens, name)
        self.heads, self.settings = heads, ShortcutSettings(lambda_depth, lambda_step)
        self.shortcuts: ShortcutSteps | None = None  # the last rollout's

    def set_args(self, args: dict) -> None:
        """Thresholds from `--decoder-args` (unknown keys and bad values named)."""
        self.settings = from_dict(
            ShortcutSettings, {**self.settings.__dict__, **args}, f"--decoder-args for {self.name}"
        )

    def rollout(self, prompts: list[list[int]], seeds=None, samples: int | None = None):
        samples = samples or self.samples
        self.shortcuts = ShortcutSteps(self.lm, self.heads, self.max_latents, self.settings, len(prompts) * samples)
        return latent_rollout(
            self.lm,
            prompts,
            self.thought_map,
            self.shortcuts.stop,
            self.max_latents,
            self.max_new_tokens,
            sampling=self.sampling,
            seeds=seeds,
            samples=samples,
            perturbation=self.shortcuts,
        )

    @torch.no_grad()
    def solve(self, problems):
        solutions = super().solve(problems)
        rows = [sample for solution in solutions for sample in (solution.samples or [solution])]
        fed = torch.tensor([row.latent_tokens for row in rows])
        for row, metrics in zip(rows, self.shortcuts.metrics(fed)):
            row.metrics = metrics
        return solutions
