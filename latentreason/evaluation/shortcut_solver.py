"""System-1.5's solver: the latent rollout with its two shortcuts, and what they saved per problem.

Every problem feeds `num_steps` thoughts. The step router reads each thought before it is fed: where its s >
lambda_step the step is skipped, its position goes through every layer unchanged (its keys and values are the
thought's, carried up as a depth exit's are: engine/depth_shortcut.py) and its output, the next thought, is
the step adapter's cheap update of the thought it was fed, not the model's state. The other thoughts take the
depth shortcut in `exit` mode: each leaves the layer stack at the first layer whose router w > lambda_depth.
Both thresholds at 1 give exactly the plain latent rollout.

Per problem (Solution.metrics, averaged in results.json):
    layers_skipped_fraction  (layers skipped by depth exits + L x skipped steps) / (L x num_steps)
    depth_skipped_fraction   layers skipped by depth exits / (L x steps not skipped)
    steps_skipped            latent steps the step shortcut skipped
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from latentreason.config import field, from_dict
from latentreason.engine.depth_shortcut import DepthShortcut
from latentreason.engine.perturbation import LatentPerturbation
from latentreason.engine.rollout import fixed_latents
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

    def __init__(self, lm, heads, settings: ShortcutSettings, batch: int):
        self.heads, self.lambda_step = heads, settings.lambda_step
        self.depth = DepthShortcut(lm, heads, "exit", settings.lambda_depth)
        self.num_layers = len(heads.routers)
        width = lm.embed.weight.shape[1]
        self.fed = lm.embed.weight.new_zeros((batch, width))  # [B, d] each row's last thought
        self.skipping = torch.zeros(batch, dtype=torch.bool, device=lm.device)  # [B] its step is skipped
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # per armed call: (rows fed, which skipped)

    def thought(self, z: torch.Tensor, rows: torch.Tensor, slot: int) -> torch.Tensor:
        """Thought `slot` of the rows [n]: after a skipped step, the step adapter's update of the thought that
        step was fed (in place of the model's state z [n, d]); then whether this step is skipped."""
        previous = self.heads.step_adapter(self.fed[rows].to(z.dtype))  # [n, d]
        z = torch.where(self.skipping[rows][:, None], previous, z)
        self.skipping[rows] = self.heads.step_router(z) > self.lambda_step
        self.fed[rows] = z.to(self.fed.dtype)
        return z

    def before_forward(self, rows: torch.Tensor, latent: torch.Tensor, slot: int) -> None:
        if bool(latent.any()):
            skipped = latent & self.skipping[rows]  # [b]
            self.depth.arm(latent[:, None], skipped[:, None])  # this one-position call's thoughts
            self.steps.append((rows[latent], skipped[latent]))

    @contextmanager
    def attached(self, lm) -> Iterator[None]:
        with self.depth.attached():
            yield

    def metrics(self, num_steps: int) -> list[dict[str, float]]:
        """Each row's compute figures (every row feeds num_steps thoughts)."""
        rows = self.skipping.shape[0]
        depth = torch.zeros(rows, dtype=torch.long, device=self.skipping.device)  # [B] layers skipped by exits
        steps = torch.zeros_like(depth)  # [B] steps skipped
        for (fed, skipped), call in zip(self.steps, self.depth.calls):
            depth.index_add_(0, fed, torch.where(skipped, 0, self.num_layers - call.exit_layer))
            steps.index_add_(0, fed, skipped.long())
        layers = self.num_layers
        return [
            {
                "layers_skipped_fraction": (d + layers * s) / (layers * num_steps),
                "depth_skipped_fraction": d / (layers * (num_steps - s)) if s < num_steps else 0.0,
                "steps_skipped": float(s),
            }
            for d, s in zip(depth.tolist(), steps.tolist())
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
        self.shortcuts = ShortcutSteps(self.lm, self.heads, self.settings, len(prompts) * samples)
        return super().rollout(prompts, seeds, samples, perturbation=self.shortcuts)

    @torch.no_grad()
    def solve(self, problems):
        solutions = super().solve(problems)
        rows = [sample for solution in solutions for sample in (solution.samples or [solution])]
        for row, metrics in zip(rows, self.shortcuts.metrics(self.max_latents)):
            row.metrics = metrics
        return solutions
