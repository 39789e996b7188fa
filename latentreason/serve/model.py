"""The model a server serves: its prompts, and for each request the recipe its rows run with.

A pretrained model (`smollm2`, a Hugging Face directory or hub id) answers through its chat template with a
training-free decoder (text, Soft Thinking, ...); a model trained here answers with its method's latent rollout
(or plain decoding for text methods) from its training layout. A recipe builds the step policy of a lane
(capacity rows, engine.continuous) and of a request's own rows, or, for a decoder of several phases, generates
a group of requests as a batch of their own.
"""

from __future__ import annotations

import abc
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentreason.decoding import DECODERS, DecodeContext, Generation, decoder_from_args
from latentreason.decoding.base import PolicyDecoder
from latentreason.engine.decode import TokenPolicy
from latentreason.engine.jacobi import jacobi_rollout
from latentreason.engine.rollout import LatentThenAnswer
from latentreason.engine.sampling import RowSampling, Sampling, row_seeds
from latentreason.engine.slots import serves_continuously
from latentreason.engine.steps import EMBED, FORCED, TOKEN, Trace
from latentreason.errors import ConfigError, UserError
from latentreason.serve.protocol import Ask, LatentOptions, Limits, RequestError

# Decoders a request may choose besides the server's own (latentseek optimises for many steps per reply and
# may want reference answers: only when the server is started with it).
REQUEST_DECODERS = ("text", "soft-thinking", "swireasoning", "fractional", "latentmas")
MAX_RECIPES = 32  # distinct decoder settings kept ready; older ones are rebuilt when asked for again


@dataclass
class Job:
    """A request the model accepted: its prompt ids and settings, its rows' seeds, and its recipe."""

    ask: Ask
    prompt: list[int]
    recipe: Recipe
    seeds: torch.Tensor  # [n]
    max_latents: int = 0
    # Set by the server: how the engine's events reach the request's handler (thread-safe), when the request
    # arrived and must be done by (time.monotonic()), and whether its client has gone.
    post: Callable[[tuple], None] = field(default=lambda event: None, repr=False)
    received: float = field(default_factory=time.monotonic)
    deadline: float = math.inf
    cancelled: bool = False

    @property
    def rows(self) -> int:
        return self.ask.n

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.ask.temperature, top_p=self.ask.top_p)


class Recipe(abc.ABC):
    """How the rows of one kind of request are generated. `key` names the lane they share. A recipe whose
    `lane_policy` can be None (a decoder of several phases) also has `generate`, as DecoderRecipe does."""

    key: str
    stop_ids: list[int]
    answer_only = False  # True: only TOKEN steps are text (latent models); else every step (soft ones: top-1)

    def __init__(self, served: ServedModel):
        self.served, self.lm = served, served.lm

    @abc.abstractmethod
    def lane_policy(self, capacity: int):
        """The policy of a lane of `capacity` slots, or None when these rows run as batches of their own."""

    @abc.abstractmethod
    def row_policy(self, job: Job):
        """The policy of the job's rows alone (its state is what they start with in a lane)."""

    def step_limit(self, job: Job) -> int:
        return job.ask.max_tokens

    def visible(self, kind: int) -> bool:
        return kind == TOKEN or not self.answer_only


class DecoderRecipe(Recipe):
    """A pretrained model with a training-free decoder."""

    def __init__(self, served: ServedModel, name: str, args: dict):
        super().__init__(served)
        self.decoder = decoder_from_args(name, args)
        self.stop_ids = served.stop_ids

    def context(self, prompts: list[list[int]], samples: int, sampling: RowSampling, seeds, max_tokens: int):
        think_start, think_end = self.served.think_ids
        return DecodeContext(prompts, self.stop_ids, max_tokens, sampling, seeds, think_start, think_end, samples)

    def lane_policy(self, capacity: int):
        if not isinstance(self.decoder, PolicyDecoder):
            return None
        cap = self.served.max_positions
        seeds = torch.zeros(capacity, dtype=torch.long)
        context = self.context([[]], capacity, Sampling().rows(capacity, self.lm.device), seeds, cap)
        policy = self.decoder.policy(self.lm, context)
        return policy if serves_continuously(policy) else None

    def row_policy(self, job: Job):
        return self.decoder.policy(self.lm, self.job_context([job]))

    def job_context(self, jobs: list[Job]) -> DecodeContext:
        """The jobs' rows (each job's n rows in a row) as one context of prompts x 1 sample."""
        prompts = [job.prompt for job in jobs for _ in range(job.rows)]
        sampling = RowSampling.stack([job.sampling for job in jobs for _ in range(job.rows)], self.lm.device)
        seeds = torch.cat([job.seeds for job in jobs])
        return self.context(prompts, 1, sampling, seeds, max(job.ask.max_tokens for job in jobs))

    @torch.no_grad()
    def generate(self, jobs: list[Job]) -> list[Generation]:
        out = []
        for job in jobs:  # its own max_tokens: one generate call per request
            generation = self.decoder.generate(self.lm, self.job_context([job]))
            out.append(generation)
        return out


class LatentRecipe(Recipe):
    """A model trained here with latent thoughts: latent rollout, <eot>, then the answer."""

    answer_only = True

    def __init__(self, served: ServedModel, solver):
        super().__init__(served)
        self.solver = solver
        self.stop_ids = [self.lm.eos_id]

    def policy(self, rows: int, max_tokens: int, sampling=None, seeds=None) -> LatentThenAnswer:
        answer = TokenPolicy(rows, self.lm.device, self.stop_ids, max_tokens, sampling, seeds)
        solver = self.solver
        return LatentThenAnswer(self.lm, solver.thought_map, solver.controller, solver.max_latents, answer, rows)

    def lane_policy(self, capacity: int):
        return self.policy(capacity, self.served.max_positions)

    def row_policy(self, job: Job):
        policy = self.policy(job.rows, job.ask.max_tokens, job.sampling, job.seeds)
        policy.limits[:] = job.max_latents
        return policy

    def step_limit(self, job: Job) -> int:
        return job.max_latents + 1 + job.ask.max_tokens


class JacobiRecipe(Recipe):
    """A PCCoT model: all its thoughts are found at once by Jacobi iteration, so they are not steps a lane
    could interleave; the requests that arrive together run as a batch of their own (engine._generate)."""

    answer_only = True

    def __init__(self, served: ServedModel, solver):
        super().__init__(served)
        self.solver = solver
        self.stop_ids = [self.lm.eos_id]

    def lane_policy(self, capacity: int):
        return None

    def row_policy(self, job: Job):
        raise TypeError("a Jacobi rollout has no step policy: its requests are generated as batches of their own")

    def step_limit(self, job: Job) -> int:
        return job.max_latents + 1 + job.ask.max_tokens

    @torch.no_grad()
    def generate(self, jobs: list[Job]) -> list[Generation]:
        out = []
        for job in jobs:  # its own thoughts count, sampling and max_tokens: one rollout per request
            solver = self.solver
            rollout = jacobi_rollout(
                self.lm,
                [job.prompt] * job.rows,
                solver.thought_map,
                job.max_latents,
                solver.iterations,
                job.ask.max_tokens,
                sampling=job.sampling,
                seeds=job.seeds,
                stop_ids=self.stop_ids,
            )
            out.append(Generation(with_thoughts(rollout.trace, job.max_latents, self.lm.pad_id)))
        return out


def with_thoughts(answer: Trace, thoughts: int, pad_id: int) -> Trace:
    """The answer's trace preceded by the rollout's thoughts (EMBED) and <eot> (FORCED), as a latent rollout's."""
    rows = answer.kind.shape[0]
    kind = answer.kind.new_full((rows, thoughts + 1), EMBED)  # [B, N + 1]
    kind[:, -1] = FORCED
    tokens = answer.tokens.new_full((rows, thoughts + 1), pad_id)  # [B, N + 1]
    logprobs = answer.logprobs.new_zeros(rows, thoughts + 1)  # [B, N + 1]
    return Trace(
        torch.cat([kind, answer.kind], 1),
        torch.cat([tokens, answer.tokens], 1),
        torch.cat([logprobs, answer.logprobs], 1),
    )


class TrainedTextRecipe(Recipe):
    """A model trained here with a text method: plain decoding from its training layout."""

    def __init__(self, served: ServedModel):
        super().__init__(served)
        self.stop_ids = [self.lm.eos_id]

    def lane_policy(self, capacity: int):
        return TokenPolicy(capacity, self.lm.device, self.stop_ids, self.served.max_positions)

    def row_policy(self, job: Job):
        return TokenPolicy(job.rows, self.lm.device, self.stop_ids, job.ask.max_tokens, job.sampling, job.seeds)


class ServedModel:
    def __init__(self, lm, name: str, prompt=None, solver=None, decoder: str = "text", decoder_args=None):
        """prompt: a PromptBuilder (pretrained models); solver: the method's solver (models trained here)."""
        self.lm, self.name, self.prompt, self.solver = lm, name, prompt, solver
        self.decoder, self.decoder_args = decoder, decoder_args or {}
        config = lm.model.config
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 4096)
        if prompt is not None:
            self.stop_ids = prompt.stop_ids()
            self.think_ids = prompt.think_ids()
        self.limits = Limits()  # set by the server from its flags
        self.recipes: dict[str, Recipe] = {}  # by choice of decoder and arguments, at most MAX_RECIPES
        self.default = self.recipe(LatentOptions(), "--decoder")

    @property
    def trained(self) -> bool:
        return self.solver is not None

    def job(self, ask: Ask) -> Job:
        """The job for a checked request; a RequestError when it does not fit this model."""
        if ask.model != self.name:
            raise RequestError(f"model '{ask.model}' does not exist; this server serves '{self.name}'", "model", 404)
        prompt = self.prompt_ids(ask)
        recipe = self.recipe(ask.latent, "latent")
        max_latents = self.max_latents(ask.latent)
        seed = ask.seed if ask.seed is not None else secrets.randbits(62)
        job = Job(ask, prompt, recipe, row_seeds(seed, ["serve"], ask.n), max_latents)
        most = self.limits.max_prompt_tokens
        if len(prompt) > most:
            where = "messages" if ask.chat else "prompt"
            raise RequestError(f"the prompt has {len(prompt)} tokens; this server takes at most {most}", where)
        total = len(prompt) + recipe.step_limit(job)
        if total > self.max_positions:
            raise RequestError(
                f"the prompt ({len(prompt)} tokens) and up to {recipe.step_limit(job)} generated steps exceed the "
                f"model's {self.max_positions} positions; ask for fewer max_tokens",
                "max_tokens",
            )
        return job

    def prompt_ids(self, ask: Ask) -> list[int]:
        if not self.trained:
            if ask.chat:
                return self.prompt.conversation_ids(ask.messages)
            ids = self.lm.tokenizer(ask.prompt, add_special_tokens=False)["input_ids"]
            bos = self.lm.tokenizer.bos_token_id
            return ids if bos is None else [bos, *ids]
        if ask.chat and (len(ask.messages) != 1 or ask.messages[0]["role"] != "user"):
            raise RequestError("a model trained here reads one question: send one user message", "messages")
        from latentreason.data.problems import Problem
        from latentreason.layout import encode_problem

        problem = Problem(ask.messages[0]["content"] if ask.chat else ask.prompt, [], "")
        if hasattr(self.solver, "prompts"):  # a latent solver's layout (CoLaR adds its compression factor)
            return self.solver.prompts([problem])[0]
        return encode_problem(self.lm.tokenizer, problem).prompt

    def recipe(self, options: LatentOptions, where: str) -> Recipe:
        """The recipe for these latent options (one object per distinct choice, shared by its requests)."""
        name, args = None, {}
        if self.trained:
            if options.decoder is not None or options.decoder_args:
                raise RequestError(f"{where}.decoder: a model trained here answers with its own method", where)
            key = "trained"
        else:
            # The server's decoder keeps its --decoder-args under a request's; another decoder starts from its defaults.
            name = options.decoder or self.decoder
            args = {**(self.decoder_args if name == self.decoder else {}), **options.decoder_args}
            if name not in (*REQUEST_DECODERS, self.decoder):
                allowed = ", ".join(sorted({*REQUEST_DECODERS, self.decoder}))
                raise RequestError(f"{where}.decoder: '{name}' is not served here (choose from {allowed})", where)
            key = f"{name} {sorted(args.items())!r}"
        if key not in self.recipes:
            if len(self.recipes) >= MAX_RECIPES:
                self.recipes.pop(next(iter(self.recipes)))  # the oldest; lanes keep their own reference
            self.recipes[key] = self._new_recipe(name, args, where)
            self.recipes[key].key = key
        return self.recipes[key]

    def _new_recipe(self, name: str | None, args: dict, where: str) -> Recipe:
        from latentreason.evaluation.latent_solver import JacobiSolver, LatentSolver

        if not self.trained:
            try:
                return DecoderRecipe(self, name, args)
            except ConfigError as err:
                raise RequestError(f"{where}.decoder_args: {err}", where) from None
        if isinstance(self.solver, JacobiSolver):
            return JacobiRecipe(self, self.solver)
        if isinstance(self.solver, LatentSolver):
            return LatentRecipe(self, self.solver)
        return TrainedTextRecipe(self)

    def max_latents(self, options: LatentOptions) -> int:
        most = getattr(self.solver, "max_latents", 0)
        if options.max_latents is None:
            return most
        if not self.trained or not most:
            raise RequestError("latent.max_latents: for models trained here with latent thoughts", "latent")
        if options.max_latents > most:
            raise RequestError(f"latent.max_latents: this model thinks at most {most} latents", "latent")
        return options.max_latents


def model_id(model: str) -> str:
    """The id /v1/models lists for --model: a directory's name, else the alias or hub id as given."""
    path = Path(model).expanduser()
    return path.name if path.is_dir() else model


def load_served(model: str, decoder: str | None, decoder_args: dict, device: str, dtype, name: str | None = None):
    """The ServedModel for --model (what `latentreason eval --model` takes), on `device`; `decoder` None: the one
    `eval` picks (hrpo for a model saved with HRPO's gates, else text)."""
    from latentreason.decoding.hybrid import default_decoder
    from latentreason.evaluation.prompting import PromptBuilder
    from latentreason.methods.saved import load_trained
    from latentreason.model.pretrained import TRAINED, generation_stop_ids, load_pretrained, model_kind

    explicit, decoder = decoder is not None, decoder or default_decoder(model)
    if decoder not in DECODERS:
        raise UserError(f"--decoder: unknown decoder {decoder!r}; expected one of {', '.join(sorted(DECODERS))}")
    try:
        decoder_from_args(decoder, decoder_args)  # bad arguments fail before the model loads
    except ConfigError as err:
        raise UserError(f"--decoder-args: {err}") from None
    if model_kind(model) == TRAINED:
        if (explicit and decoder != "text") or decoder_args:
            raise UserError("--decoder/--decoder-args: for pretrained models; a model trained here uses its method")
        lm, method = load_trained(model, None, 1, device, dtype)
        return ServedModel(lm, name or model_id(model), solver=method.solver(lm))
    lm = load_pretrained(model, dtype).to(device)
    prompt = PromptBuilder(lm.tokenizer, extra_stop_ids=generation_stop_ids(lm))
    return ServedModel(lm, name or model_id(model), prompt, decoder=decoder, decoder_args=decoder_args)
