"""`latentreason` command line: train, eval, demo, data.

User mistakes (bad files, bad configs, missing data) end with one line on stderr and exit status 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from latentreason.errors import UserError
from latentreason.recipes import RL_METHODS, recipe_method, resolve_config_path


# --- train -------------------------------------------------------------------------------------
def cmd_train(argv: list[str]) -> int:
    from latentreason.config import add_config_flags, load_config
    from latentreason.methods import METHODS, get_method
    from latentreason.processes import say
    from latentreason.training.run import run_training

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--method")
    known, _ = pre.parse_known_args(argv)
    config_path = resolve_config_path(known.config)
    method_name = known.method or recipe_method(config_path) or "cot"
    if method_name in RL_METHODS:
        raise UserError(f"{known.config or '--method'} is a reinforcement-learning recipe: run `latentreason rl`")
    method_cls = get_method(method_name)
    parser = argparse.ArgumentParser(
        prog="latentreason train", description="Train a model with one method.", allow_abbrev=False
    )
    parser.add_argument("--config", help="YAML recipe (a path or a shipped recipe name)")
    parser.add_argument("--method", help=f"one of {', '.join(sorted(METHODS))} (default: the config's, else cot)")
    add_config_flags(parser, method_cls.config_cls)
    args = vars(parser.parse_args(argv))
    args.pop("config", None)
    args.pop("method", None)
    config = load_config(method_cls.config_cls, config_path, args)
    result = run_training(method_name, config)
    say(f"final model: {result.final_dir}")  # once, not once per process
    if result.eval is not None:
        say(f"held-out accuracy: {result.eval.accuracy:.1%} on {result.eval.n} problems")
    return 0


# --- train-rm ----------------------------------------------------------------------------------
def cmd_train_rm(argv: list[str]) -> int:
    from latentreason.config import add_config_flags, load_config
    from latentreason.processes import say
    from latentreason.tts.rm_config import RMConfig
    from latentreason.tts.rm_run import run_train_rm

    parser = argparse.ArgumentParser(
        prog="latentreason train-rm",
        description="Train LatentRM, a step-level reward model over a latent model's sampled trajectories.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML recipe (a path or a shipped recipe name)")
    add_config_flags(parser, RMConfig)
    args = vars(parser.parse_args(argv))
    config = load_config(RMConfig, resolve_config_path(args.pop("config", None)), args)
    result = run_train_rm(config)
    say(f"final reward model: {result.final_dir}; best by held-out recall@1: {result.final_dir.parent / 'best'}")
    if result.eval is not None:
        say(f"held-out recall@1: {result.eval.recall_at_1:.1%} on {result.eval.n} questions")
    return 0


# --- rl ----------------------------------------------------------------------------------------
def cmd_rl(argv: list[str]) -> int:
    from latentreason.config import add_config_flags, load_config
    from latentreason.processes import say
    from latentreason.rl.config import RLConfig
    from latentreason.rl.run import run_rl

    parser = argparse.ArgumentParser(
        prog="latentreason rl",
        description="GRPO over latent plans, starting from an ATP-Latent or CoLaR SFT model, or over tokens (text, "
        "Multiplex, soft, hybrid), starting from a model trained here with cot, icot or no-cot (in its training "
        "layout) or from a pretrained chat model (in its chat template); see docs/rl.md.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        help="YAML recipe (a path or a shipped recipe name, e.g. atp-rl-tiny, colar-rl-tiny, cot-rl-tiny)",
    )
    add_config_flags(parser, RLConfig)
    args = vars(parser.parse_args(argv))
    config_path = resolve_config_path(args.pop("config", None))
    config = load_config(RLConfig, config_path, args)
    result = run_rl(config, expected_method=RL_METHODS.get(recipe_method(config_path)))
    say(f"final model: {result.final_dir}")
    if result.eval is not None:
        say(
            f"held-out accuracy: {result.eval.accuracy:.1%} on {result.eval.n} problems, "
            f"{result.eval.latent_tokens:.1f} latents per problem"
        )
    return 0


# --- eval --------------------------------------------------------------------------------------
def add_source_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--benchmark", help="benchmark name (see `latentreason data list`)")
    src.add_argument("--file", help="a data file in any supported format")
    parser.add_argument("--data-dir", help="benchmark data directory (default: $LATENTREASON_DATA_DIR)")
    parser.add_argument("--split", help="benchmark split (default: the benchmark's evaluation split)")
    parser.add_argument("--format", help="file format when --file cannot be recognised")
    add_on_invalid_arg(parser)


def add_on_invalid_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on-invalid",
        choices=("error", "skip"),
        default="error",
        help="a malformed record: stop naming file, record and field (error), or leave it out and count it (skip)",
    )


def load_source(args) -> tuple[str, list]:
    from latentreason.data.formats import load_file
    from latentreason.data.registry import load_benchmark

    if args.file:
        return Path(args.file).stem, load_file(args.file, args.format, args.on_invalid)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir}: no such directory")
    problems = load_benchmark(args.benchmark, split=args.split, data_dir=args.data_dir, on_invalid=args.on_invalid)
    return args.benchmark, problems


# Flags that shape a pretrained model's prompt or decoding; a model trained here has its own prompt layout and solver
# (whose settings, for the solvers that have any, --decoder-args also sets). A model trained with a text method (cot,
# icot, no-cot) also takes --decoder, which then decodes its training layout's prompt.
CHAT_FLAGS = ("system_prompt", "few_shot", "few_shot_file", "prompt_template", "decoder", "decoder_args")
TRAINED_SOLVER_FLAGS = ("decoder_args",)
TEXT_METHOD_FLAGS = ("decoder", "decoder_args")
# Flags of a model trained here with latent thoughts.
LATENT_FLAGS = ("latent_sampler", "latent_sampler_args", "reward_model", "beam_width", "beam_expansions")


def cmd_eval(argv: list[str]) -> int:
    from latentreason.decoding import DECODERS
    from latentreason.evaluation.report import markdown_report, write_report
    from latentreason.model.pretrained import EXPECTED
    from latentreason.tts import LATENT_SAMPLERS

    parser = argparse.ArgumentParser(
        prog="latentreason eval",
        description="Evaluate a model trained here (with its method's solver) or a pretrained chat model as it is "
        "(through its chat template, see docs/pretrained.md). Launched as several processes (torchrun, accelerate "
        "launch), each solves a contiguous shard of the problems on its own device and the main process writes "
        "the report.",
    )
    parser.add_argument("--model", required=True, help=EXPECTED)
    parser.add_argument("--method", help="solver for a model trained here (default: the method it was trained with)")
    add_source_args(parser)
    parser.add_argument("--output-dir", required=True, help="where results.json and results.md are written")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N problems")
    parser.add_argument("--batch-size", type=int, default=64, help="problems per batch (per process)")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="solve every problem again; by default an interrupted evaluation into --output-dir resumes where it "
        "stopped (its finished batches are kept in progress.jsonl until the report is written)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, help="generated tokens per problem (default: 128 trained here, 256 pretrained)"
    )
    parser.add_argument(
        "--answer-mode",
        choices=("strict", "flexible", "boxed", "auto"),
        help="how the answer is read: strict '#### 18', flexible the last number, boxed the last \\boxed{}, auto "
        "the box when there is one else the last number (default: strict trained here, auto pretrained; "
        "sentence answers are always read as sentences)",
    )
    chat = parser.add_argument_group("pretrained models")
    chat.add_argument("--system-prompt", help="system message (default: the chat template's own, if any)")
    chat.add_argument(
        "--prompt-template",
        help="the user turn, with {question} where the question goes (default for boxed/auto: the question then "
        "'Please reason step by step, and put your final answer within \\boxed{}.'; else the question alone)",
    )
    chat.add_argument(
        "--few-shot", type=int, default=0, help="show the first N solved problems of --few-shot-file as earlier turns"
    )
    chat.add_argument(
        "--few-shot-file", help="where --few-shot examples come from (default with --benchmark: its train split)"
    )
    chat.add_argument(
        "--decoder",
        help="a latent decoder: " + ", ".join(sorted(DECODERS)) + " (default: hrpo for a model trained with HRPO, "
        "else text); also for a model trained here with cot, icot or no-cot, decoding its training layout's prompt "
        "(default: its method's solver)",
    )
    chat.add_argument(
        "--decoder-args",
        help="the decoder's arguments as a YAML mapping, e.g. '{top_k: 1}' (see docs/decoding.md); for a model "
        "trained here, its solver's settings where it has any (System-1.5: '{lambda_depth: 0.8}')",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, help="text tokens: 0 is greedy (the default); above 0 samples")
    sampling.add_argument("--top-k", type=int, help="sample among the k most probable tokens (default: all)")
    sampling.add_argument(
        "--top-p", type=float, help="sample within the smallest set reaching this probability (default 1)"
    )
    sampling.add_argument("--min-p", type=float, help="drop tokens below min-p x the most probable one (default 0)")
    sampling.add_argument(
        "--num-samples",
        type=int,
        help="replies per problem from one shared prefill; accuracy is their mean, and results.json adds pass@k, "
        "coverage and majority-vote accuracy (docs/decoding.md)",
    )
    sampling.add_argument("--seed", type=int, help="seed of the samples, keyed per problem and sample (default 0)")
    sampling.add_argument(
        "--latent-sampler",
        help="a model trained here with latent thoughts: what makes its samples' thoughts differ, "
        + " or ".join(sorted(LATENT_SAMPLERS))
        + " (see docs/test-time-scaling.md)",
    )
    sampling.add_argument(
        "--latent-sampler-args",
        help="the latent sampler's arguments as a YAML mapping, e.g. '{sigma: 0.6}' or '{p: 0.2}' (default: the "
        "method's values)",
    )
    sampling.add_argument(
        "--reward-model",
        help="a LatentRM directory (latentreason train-rm): it scores every sample, and results.json adds best-of-N "
        "accuracy (docs/test-time-scaling.md)",
    )
    sampling.add_argument(
        "--beam-width",
        help="beam search over latent steps guided by --reward-model, keeping this many beams per problem "
        "(needs --latent-sampler, which draws the candidates); several, comma-separated (1,2,4,8), search each "
        "problem at each width and add accuracy against the width to results.json and the scaling plot",
    )
    sampling.add_argument("--beam-expansions", type=int, help="candidates drawn from each beam per step (default 4)")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available; one process only)"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="the weights' dtype (default auto: bfloat16 on a GPU that supports it, else float32)",
    )
    args = parser.parse_args(argv)
    from latentreason.processes import launched_processes

    if launched_processes() > 1 and args.device is not None:
        raise UserError("--device: launched as several processes, each uses its own device; leave it out")
    plan = eval_plan(args)
    name, problems = load_source(args)
    if args.limit > 0:
        problems = problems[: args.limit]
    result = _evaluate_launch(args, plan, name, problems)
    if result is not None:
        write_report([result], args.output_dir, {"model": str(args.model), **plan.record()})
        for finished in Path(args.output_dir).glob("progress*.jsonl"):  # predictions.jsonl now holds every record
            finished.unlink()
        print(markdown_report([result]))
        print(f"wrote {Path(args.output_dir) / 'results.json'}")
    return 0


@dataclass
class EvalPlan:
    """What to evaluate and how, settled from the flags before any model is loaded."""

    kind: str  # TRAINED or PRETRAINED (latentreason.model.pretrained)
    answer_mode: str
    max_new_tokens: int
    sampling: object = None  # the text Sampling (engine.sampling, imported with torch when the plan is made)
    samples: int = 1
    seed: int = 0
    latent_sampler: object = None  # a tts.LatentSampler; its unset values are the method's once the model loads
    reward_model: str | None = None  # a LatentRM directory that scores the samples
    beam: tuple[list[int], int] | None = None  # (widths, expansions) of RM-guided beam search
    decoder: str | None = None  # a pretrained model's; a text method's model's with --decoder (else its solver)
    decoder_args: dict = field(default_factory=dict)
    template: str = "{question}"  # the user turn of a pretrained model's prompt
    few_shot: list[tuple[str, str]] = field(default_factory=list)
    few_shot_source: str | None = None
    prompt: dict | None = None  # the PromptBuilder's settings, once the model's tokenizer is loaded
    dtype: str | None = None  # the weights' dtype, once the device is known

    def record(self) -> dict:
        """The settings results.json keeps beside the results."""
        out = {"model_kind": self.kind, "answer_mode": self.answer_mode, "max_new_tokens": self.max_new_tokens}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        from latentreason.model.pretrained import TRAINED

        if self.kind == TRAINED:
            out.update(sampling=asdict(self.sampling), num_samples=self.samples, seed=self.seed)
            sampler = self.latent_sampler
            out.update(latent_sampler=sampler and sampler.name, latent_sampler_args=sampler and sampler.settings())
            out.update(reward_model=self.reward_model)
            if self.beam is not None:
                widths = self.beam[0]
                out.update(beam_width=widths[0] if len(widths) == 1 else widths, beam_expansions=self.beam[1])
            if self.decoder_args:
                out.update(decoder_args=self.decoder_args)
        if self.prompt is not None:
            out.update(
                sampling=asdict(self.sampling),
                num_samples=self.samples,
                seed=self.seed,
                decoder=self.decoder,
                decoder_args=self.decoder_args,
                few_shot_source=self.few_shot_source,
                prompt=self.prompt,
            )
        return out


def eval_plan(args) -> EvalPlan:
    """The plan for `args`; flags that do not fit the model's kind are refused here, before it loads."""
    from latentreason.config import yaml_mapping
    from latentreason.decoding import decoder_from_args
    from latentreason.evaluation.prompting import BOXED_TEMPLATE, PLACEHOLDER
    from latentreason.model.pretrained import TRAINED, model_kind

    kind = model_kind(args.model)
    layout = kind == TRAINED and args.decoder is not None and text_method(trained_method(args))
    allowed = TEXT_METHOD_FLAGS if layout else TRAINED_SOLVER_FLAGS
    refused = [f for f in CHAT_FLAGS if f not in allowed] if kind == TRAINED else LATENT_FLAGS
    other = [f"--{flag.replace('_', '-')}" for flag in refused]
    given = [flag for flag in other if getattr(args, flag[2:].replace("-", "_")) not in (None, 0)]
    if kind == TRAINED and given:
        text_only = " (--decoder also for models trained with cot, icot or no-cot)" if "--decoder" in given else ""
        raise UserError(
            f"{', '.join(given)}: for pretrained models{text_only}; {args.model} was trained here and is evaluated "
            f"with its method's own prompt and solver"
        )
    if kind != TRAINED and given:
        raise UserError(
            f"{', '.join(given)}: for models trained here with latent thoughts; {args.model} is pretrained (its "
            "training-free latent decoders take --decoder, see docs/decoding.md)"
        )
    if kind != TRAINED and args.method:
        raise UserError(f"--method: for models trained here; {args.model} is pretrained (no latentreason.json)")
    if args.few_shot < 0:
        raise UserError(f"--few-shot: expected a number of examples >= 0, got {args.few_shot}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: expected at least 1, got {args.max_new_tokens}")
    answer_mode = args.answer_mode or ("strict" if kind == TRAINED else "auto")
    max_new_tokens = args.max_new_tokens or (128 if kind == TRAINED else 256)
    plan = EvalPlan(kind, answer_mode, max_new_tokens)
    plan.sampling = sampling_from_flags(args)
    if args.num_samples is not None and args.num_samples < 1:
        raise UserError(f"--num-samples: expected at least 1, got {args.num_samples}")
    plan.samples, plan.seed = args.num_samples or 1, args.seed or 0
    if kind == TRAINED:
        plan.latent_sampler = latent_sampler_from_flags(args, plan)
        if args.reward_model and not (Path(args.reward_model) / "config.json").is_file():
            raise UserError(f"--reward-model: {args.reward_model} is not a model directory (no config.json)")
        plan.reward_model = args.reward_model
        plan.beam = beam_from_flags(args, plan)
        plan.decoder_args = yaml_mapping(args.decoder_args, "--decoder-args")
        if layout:  # the decoder's arguments, not the solver's, checked before loading
            plan.decoder = args.decoder
            decoder_from_args(plan.decoder, plan.decoder_args)
        return plan
    plan.template = args.prompt_template or (BOXED_TEMPLATE if answer_mode in ("boxed", "auto") else PLACEHOLDER)
    if PLACEHOLDER not in plan.template:
        raise UserError(f"--prompt-template: {plan.template!r} has no {PLACEHOLDER} for the question")
    from latentreason.decoding.hybrid import default_decoder

    plan.decoder = args.decoder or default_decoder(args.model)  # an HRPO model reads its thoughts through its gates
    plan.decoder_args = yaml_mapping(args.decoder_args, "--decoder-args")

    decoder_from_args(plan.decoder, plan.decoder_args)  # unknown names and bad arguments fail before loading
    plan.few_shot = few_shot_examples(args, answer_mode)
    if plan.few_shot:
        plan.few_shot_source = args.few_shot_file or f"{args.benchmark}:train"
    return plan


def sampling_from_flags(args):
    """The text Sampling from --temperature/--top-k/--top-p/--min-p (unset: greedy, no filter)."""
    from latentreason.engine.sampling import Sampling
    from latentreason.errors import ConfigError

    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p}
    try:
        return Sampling(**{k: v for k, v in given.items() if v is not None})
    except ConfigError as err:
        raise UserError(f"--{str(err).replace('_', '-')}") from None


def beam_from_flags(args, plan: EvalPlan) -> tuple[list[int], int] | None:
    """(widths, expansions) of --beam-width/--beam-expansions, checked against the flags beam search needs."""
    if args.beam_width is None:
        if args.beam_expansions is not None:
            raise UserError("--beam-expansions: give --beam-width, the search it is for")
        return None
    expansions = 4 if args.beam_expansions is None else args.beam_expansions
    try:
        widths = sorted({int(width) for width in args.beam_width.split(",")})
    except ValueError:
        raise UserError(f"--beam-width: expected whole numbers such as 4 or 1,2,4,8, got {args.beam_width!r}") from None
    if widths[0] < 1 or expansions < 1:
        raise UserError(f"--beam-width/--beam-expansions: expected at least 1, got {args.beam_width} and {expansions}")
    missing = [
        flag
        for flag, given in (("--reward-model", plan.reward_model), ("--latent-sampler", plan.latent_sampler))
        if not given
    ]
    if missing:
        raise UserError(f"--beam-width: needs {' and '.join(missing)} (the RM ranks the candidates the sampler draws)")
    if plan.samples > 1:
        raise UserError("--beam-width: returns one answer per problem; leave out --num-samples")
    return widths, expansions


def latent_sampler_from_flags(args, plan: EvalPlan):
    """The tts.LatentSampler of --latent-sampler/--latent-sampler-args (None without one), completed with the
    defaults of the method the model is evaluated with; N samples that could only be identical are refused."""
    from latentreason.config import yaml_mapping
    from latentreason.errors import ConfigError
    from latentreason.tts import LATENT_SAMPLERS, latent_sampler_from_args

    if args.latent_sampler_args and not args.latent_sampler:
        raise UserError("--latent-sampler-args: give --latent-sampler, the sampler they are for")
    if plan.samples > 1 and not args.latent_sampler and plan.sampling.temperature == 0:
        raise UserError(
            f"--num-samples {plan.samples}: every sample would be the same (greedy answers, no --latent-sampler); "
            "add --latent-sampler or --temperature"
        )
    if not args.latent_sampler:
        return None
    if args.latent_sampler not in LATENT_SAMPLERS:
        known = ", ".join(sorted(LATENT_SAMPLERS))
        raise UserError(f"--latent-sampler: unknown sampler {args.latent_sampler!r}; expected one of {known}")
    settings = yaml_mapping(args.latent_sampler_args, "--latent-sampler-args")
    sampler = latent_sampler_from_args(args.latent_sampler, settings)
    method = trained_method(args)
    if text_method(method):
        raise UserError(f"--latent-sampler: {args.model} is evaluated with '{method}', which has no latent thoughts")
    try:
        return sampler.for_method(method)
    except ConfigError as err:
        raise UserError(f"--latent-sampler-args: {err}") from None


def text_method(name: str) -> bool:
    """Whether the method `name` is a text method (cot, icot, no-cot): its model reads and writes plain text."""
    from latentreason.methods.base import get_method
    from latentreason.methods.sft import TextSFT

    return issubclass(get_method(name), TextSFT)


def trained_method(args) -> str:
    """The method a model trained here is evaluated with: --method, else the one it was trained with."""
    from latentreason.model.latent_lm import META_FILE

    saved = json.loads((Path(args.model) / META_FILE).read_text())
    return args.method or saved.get("method") or "cot"


def few_shot_examples(args, answer_mode: str) -> list[tuple[str, str]]:
    """The first --few-shot solved problems of --few-shot-file (or the benchmark's train split) as
    (question, reply) pairs whose replies end in the form `answer_mode` reads."""
    from latentreason.data.formats import load_file
    from latentreason.data.registry import get_benchmark, load_benchmark
    from latentreason.evaluation.prompting import few_shot_pairs

    if not args.few_shot:
        if args.few_shot_file:
            raise UserError("--few-shot-file: give --few-shot N, the number of examples to take from it")
        return []
    if args.few_shot_file:
        problems = load_file(args.few_shot_file, None, args.on_invalid)
        source = args.few_shot_file
    elif args.benchmark:
        spec = get_benchmark(args.benchmark)
        evaluated = args.split or spec.default_split
        if "train" not in spec.splits or evaluated == "train":
            raise UserError(
                f"--few-shot: {args.benchmark} has no train split apart from the evaluated one "
                f"({evaluated}) to take examples from; give --few-shot-file"
            )
        problems = load_benchmark(
            args.benchmark, "train", args.data_dir, limit=args.few_shot, on_invalid=args.on_invalid
        )
        source = f"{args.benchmark} train split"
    else:
        raise UserError("--few-shot with --file: give --few-shot-file, the file to take the examples from")
    if len(problems) < args.few_shot:
        raise UserError(f"--few-shot {args.few_shot}: {source} has only {len(problems)} problems")
    return few_shot_pairs(problems[: args.few_shot], answer_mode)


def _solver(args, plan: EvalPlan, device: str | None):
    """The solver for the plan's model on `device`; for a pretrained model the plan gains its prompt settings."""
    from latentreason.evaluation.chat_solver import ChatSolver
    from latentreason.evaluation.layout_prompt import LayoutPrompt
    from latentreason.evaluation.prompting import PLAIN_NOTE, PromptBuilder
    from latentreason.methods.saved import load_trained
    from latentreason.model.device import default_device, eval_dtype
    from latentreason.model.pretrained import TRAINED, generation_stop_ids, load_pretrained
    from latentreason.processes import say

    device = default_device(device)
    dtype = eval_dtype(args.dtype, device)
    plan.dtype = str(dtype).removeprefix("torch.")
    if plan.kind == TRAINED:
        lm, method = load_trained(args.model, args.method, plan.max_new_tokens, device, dtype)
        if plan.decoder is None:
            return trained_solver(args.model, lm, method, plan)
        prompt = LayoutPrompt(lm.tokenizer)  # a text method's model: its own prompt, any decoder
    else:
        lm = load_pretrained(args.model, dtype).to(device)
        prompt = PromptBuilder(
            lm.tokenizer,
            system_prompt=args.system_prompt,
            few_shot=plan.few_shot,
            template=plan.template,
            extra_stop_ids=generation_stop_ids(lm),
        )
        if not prompt.uses_chat_template:
            say(f"note: {PLAIN_NOTE}")
    plan.prompt = prompt.settings()
    from latentreason.decoding import decoder_from_args

    decoder = decoder_from_args(plan.decoder, plan.decoder_args)
    return ChatSolver(lm, prompt, plan.max_new_tokens, plan.sampling, decoder, plan.samples, plan.seed)


def trained_solver(model: str, lm, method, plan: EvalPlan):
    """The method's solver with the plan's sampling and latent sampler."""
    from latentreason.errors import ConfigError
    from latentreason.evaluation.latent_solver import LatentSolver

    solver = method.solver(lm)
    flag = "--latent-sampler" if plan.latent_sampler is not None else "--reward-model" if plan.reward_model else None
    if flag and not isinstance(solver, LatentSolver):
        raise UserError(f"{flag}: {model} is evaluated with '{method.name}', which has no latent thoughts")
    if plan.latent_sampler is None:
        solver.configure(plan.sampling, plan.seed, plan.samples)
    else:
        try:
            solver.configure(plan.sampling, plan.seed, plan.samples, plan.latent_sampler)
        except ConfigError as err:  # a sampler this solver's rollout cannot apply
            raise UserError(f"--latent-sampler: {err}") from None
    if plan.decoder_args:
        if not hasattr(solver, "set_args"):
            raise UserError(
                f"--decoder-args: {model} is evaluated with '{method.name}', whose solver takes no settings (for a "
                "pretrained model they are its decoder's)"
            )
        try:
            solver.set_args(plan.decoder_args)
        except ConfigError as err:  # unknown keys and bad types already name --decoder-args, bad values not yet
            raise UserError(str(err) if str(err).startswith("--decoder-args") else f"--decoder-args: {err}") from None
    if plan.reward_model:
        from latentreason.tts.reward_model import LatentRM

        rm = LatentRM.from_pretrained(plan.reward_model, dtype=next(lm.parameters()).dtype)
        rm.check_fits(lm, plan.reward_model)
        rm.lm.to(lm.device).eval()
        solver.reward_model = rm
        if plan.beam is not None:
            from latentreason.tts.beam import BeamSolver

            return BeamSolver(solver, rm, solver.latent_sampler, *plan.beam, plan.seed)
    return solver


def _evaluate_launch(args, plan: EvalPlan, name: str, problems: list):
    """The evaluation result, on the main process (None on the others when launched as several)."""
    from latentreason.evaluation.harness import evaluate, evaluate_sharded
    from latentreason.processes import launched_processes, multi_process_cpu

    if launched_processes() == 1:
        solver = _solver(args, plan, args.device)
        journal = _journal(args, plan, name, problems, solver.name)
        return evaluate(solver, problems, name, args.batch_size, plan.answer_mode, journal=journal)
    from accelerate import PartialState

    state = PartialState(cpu=multi_process_cpu())
    solver = _solver(args, plan, str(state.device))
    journal = _journal(args, plan, name, problems, solver.name)
    result = evaluate_sharded(
        solver, problems, state, name, args.batch_size, plan.answer_mode, state.is_main_process, journal
    )
    return result if state.is_main_process else None


JOURNAL = "progress.jsonl"


def _journal(args, plan: EvalPlan, name: str, problems: list, solver_name: str):
    """The journal in --output-dir that lets an interrupted evaluation resume (evaluation/journal.py);
    --restart discards it. Every setting that can change an answer is part of its key."""
    from latentreason.evaluation.journal import Journal, journal_key, model_fingerprint
    from latentreason.processes import launched_processes, say

    path = Path(args.output_dir) / JOURNAL
    if args.restart:
        for old in path.parent.glob("progress*.jsonl"):
            old.unlink()
    settings = {**model_fingerprint(str(args.model)), "solver": solver_name, "benchmark": name, **plan.record()}
    journal = Journal(path, journal_key(settings, problems))
    if launched_processes() > 1:
        return journal  # each process resumes from its own shard's file (the progress bar shows how far)
    solved, _ = journal.solved()
    if solved:
        say(f"resuming: {len(solved)} of {len(problems)} problems solved earlier ({path}; --restart discards them)")
    elif journal.stale:
        say(f"note: {path} held an unfinished evaluation with other settings; starting afresh")
    return journal


# --- data --------------------------------------------------------------------------------------
def cmd_data(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="latentreason data", description="Inspect and generate data.")
    sub = parser.add_subparsers(dest="action", required=True)
    stats = sub.add_parser("stats", help="record count, steps per problem, question/CoT lengths")
    add_source_args(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("list", help="the benchmark registry")
    gen = sub.add_parser("generate", help="write generated problems as Coconut JSON")
    gen.add_argument("--task", required=True, help="chain, arithmetic, multiplication, prosqa or prontoqa")
    gen.add_argument("-n", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--params", default="{}", help="generator parameters as YAML/JSON, e.g. '{num_steps: 4}'")
    gen.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.action == "stats":
        from latentreason.data.stats import dataset_stats, format_stats

        name, problems = load_source(args)
        stats_ = dataset_stats(problems)
        print(json.dumps({"benchmark": name, **stats_}, indent=2) if args.json else format_stats(stats_))
    elif args.action == "list":
        from latentreason.data.registry import list_benchmarks

        for spec in list_benchmarks():
            print(f"{spec.name:12s} splits: {', '.join(spec.splits):24s} {spec.description}")
    else:
        import yaml

        from latentreason.data.formats import write_coconut
        from latentreason.data.generators import generate

        try:
            params = yaml.safe_load(args.params) or {}
        except yaml.YAMLError as err:
            raise UserError(f"--params: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(params, dict):
            raise UserError(f"--params: expected a mapping such as '{{num_steps: 4}}', got {args.params!r}")
        problems = generate(args.task, args.n, args.seed, **params)
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_coconut(problems, out)
        except OSError as err:
            raise UserError(f"--out {args.out}: cannot write ({err.strerror or err})") from None
        print(f"wrote {len(problems)} problems to {args.out}")
    return 0


# --- demo --------------------------------------------------------------------------------------
def cmd_demo(argv: list[str]) -> int:
    from latentreason.demo.plan import DEFAULT_ROWS
    from latentreason.demo.run import run_demo

    parser = argparse.ArgumentParser(prog="latentreason demo", description=run_demo.__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="demo_output", help="where models, results and the plot go")
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute (tiny budget)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the demo in --output-dir (run with the same rows, seeds and --quick): rows whose model "
        "is saved are reused, the others train again",
    )
    parser.add_argument(
        "--rows",
        help="comma-separated rows to run (the rows they start from are added), e.g. cot,no-cot,atp-rl, or 'all'; "
        f"default {','.join(DEFAULT_ROWS)}",
    )
    parser.add_argument(
        "--seed",
        help="replace every recipe's seed (problems, initialisation, data order): a replicate; several, "
        "comma-separated (42,1,2), give each row's mean, std and range over them in summary.md",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="rows trained at the same time, each with cores/jobs threads (default 2)"
    )
    args = parser.parse_args(argv)
    from latentreason.config import seed_list

    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    seeds = seed_list(args.seed) if args.seed else None
    run_demo(
        args.output_dir,
        quick=args.quick,
        overwrite=args.overwrite,
        rows=rows,
        seeds=seeds,
        jobs=args.jobs,
        resume=args.resume,
    )
    return 0


def cmd_study(argv: list[str]) -> int:
    from latentreason.study.command import cmd_study as run_study_command

    return run_study_command(argv)


USAGE = (
    "usage: latentreason {train,rl,train-rm,eval,demo,study,data,inspect,serve,bench,rec} [--debug] ...\n"
    "  train  train a model with one method (--config recipe.yaml, --field value overrides)\n"
    "  rl     GRPO over latent plans from an ATP-Latent or CoLaR SFT model (--config atp-rl-tiny, ...)\n"
    "  train-rm  train LatentRM, a step-level reward model over a latent model's trajectories (best-of-N)\n"
    "  eval   evaluate a trained or pretrained model (smollm2, a directory, a hub id) on a benchmark or file\n"
    "  demo   the embedded default job: train and compare methods on a generated task\n"
    "  study  a grid of tasks x methods x seeds, resumable, with a report (--config coconut-tasks)\n"
    "  data   stats / list / generate\n"
    "  inspect  show what a latent model thought (decoded steps, stop decisions, nearest tokens)\n"
    "  serve  an OpenAI-compatible server with continuous batching, for latent and soft-thinking models\n"
    "  bench  speed and memory benchmarks (bench engine, bench rl, bench decode, bench tts, bench serve)\n"
    "  rec    sequential recommendation: rec train|eval|bench (SASRec, ReaRec, PLR on MovieLens-100K)"
)


# --- inspect -----------------------------------------------------------------------------------
def cmd_inspect(argv: list[str]) -> int:
    from latentreason.data.problems import Problem
    from latentreason.evaluation.inspect import format_report, inspect_problems
    from latentreason.methods.saved import load_trained

    parser = argparse.ArgumentParser(
        prog="latentreason inspect",
        description="Show what a latent model thought: decoded steps, stop decisions, nearest tokens of each latent.",
    )
    parser.add_argument("--model", required=True, help="a trained latent model (e.g. runs/atp/final)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--question", help="one question, typed in")
    group.add_argument("--file", help="a data file; its first --limit problems are shown")
    parser.add_argument("--format", help="file format when --file cannot be recognised")
    add_on_invalid_arg(parser)
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    from latentreason.model.pretrained import TRAINED, model_kind

    if model_kind(args.model) != TRAINED:
        raise UserError(
            f"--model {args.model}: inspect shows what a latent model trained here thought; this is a pretrained "
            "model (no latentreason.json). Its training-free latent decoders run through `latentreason eval "
            "--decoder ...` (docs/decoding.md)"
        )
    lm, method = load_trained(args.model, None, 32)
    if args.question:
        problems = [Problem(args.question, [], "")]
    else:
        from latentreason.data.formats import load_file

        problems = load_file(args.file, args.format, args.on_invalid)[: args.limit]
    if not hasattr(method.solver(lm), "controller"):
        raise UserError(f"{args.model} was trained with '{method.name}', which has no latents to inspect")
    reports = inspect_problems(lm, method, problems)
    print(json.dumps(reports, indent=2) if args.json else "\n\n".join(format_report(r) for r in reports))
    return 0


# --- serve -------------------------------------------------------------------------------------
def cmd_serve(argv: list[str]) -> int:
    from latentreason.serve.run import add_serve_flags, serve, settings_from_args

    parser = argparse.ArgumentParser(
        prog="latentreason serve",
        description="An OpenAI-compatible server (chat completions, completions, streaming) for a model trained "
        "here or a pretrained one with a latent decoder, batching requests continuously (docs/serving.md).",
    )
    add_serve_flags(parser)
    serve(settings_from_args(parser.parse_args(argv)))
    return 0


# --- bench -------------------------------------------------------------------------------------
def cmd_bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="latentreason bench", description="Speed and memory benchmarks.")
    parser.add_argument(
        "suite",
        choices=("engine", "rl", "decode", "tts", "serve"),
        help="engine: the latent training pass and rollout; rl: one GRPO step; decode: the step engine's "
        "decoding against generate and each decoder against greedy decoding (SmolLM2); tts: 16 latent "
        "trajectories of one problem from one shared prefill against 16 separate solves; serve: 64 concurrent "
        "requests against the same one at a time through a live server (Soft Thinking and a latent model), and "
        "a 1000-request soak",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and batch: checks the benchmark runs")
    args = parser.parse_args(argv)
    if args.suite == "tts":
        from latentreason.bench.tts import TTSBenchConfig, run_tts_bench
        from latentreason.model.tiny import TinyModelSpec

        tiny = TinyModelSpec(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        run_tts_bench(
            TTSBenchConfig(samples=4, model=tiny, latents=2, answer_tokens=3, repeats=1) if args.quick else None,
            args.device,
        )
        return 0
    if args.suite == "serve":
        from latentreason.bench.serve import ServeBenchConfig, run_serve_bench

        quick = ServeBenchConfig(
            requests=8, min_tokens=2, max_tokens=6, soak=40, soak_tokens=2, concurrency=8, tiny=True
        )
        run_serve_bench(quick if args.quick else ServeBenchConfig(), args.device)
        return 0
    if args.suite == "decode":
        from latentreason.bench.decode import DecodeBenchConfig, run_decode_bench

        quick = DecodeBenchConfig(batch=4, new_tokens=8, repeats=1, tiny=True)
        run_decode_bench(quick if args.quick else DecodeBenchConfig(), args.device)
        return 0
    if args.suite == "rl":
        from latentreason.bench.rl import RLBenchConfig, run_rl_bench

        quick = dict(hidden_size=32, num_hidden_layers=1, questions=2, generations=2, minibatch=2, max_latent_stage=2)
        run_rl_bench(RLBenchConfig(**quick) if args.quick else RLBenchConfig(), args.device)
        return 0
    from latentreason.bench.engine import EngineBenchConfig, run_engine_bench

    cfg = EngineBenchConfig()
    if args.quick:
        cfg = EngineBenchConfig(
            hidden_size=64,
            num_hidden_layers=2,
            train_batch=4,
            train_length=40,
            train_latents=(2, 4),
            rollout_batch=4,
            prompt_length=12,
            rollout_latents=4,
            answer_tokens=3,
            oracle_problems=2,
            repeats=1,
            oracle_repeats=1,
        )
    run_engine_bench(cfg, args.device)
    return 0


# --- rec ---------------------------------------------------------------------------------------
def cmd_rec(argv: list[str]) -> int:
    actions = {"train": rec_train, "eval": rec_eval, "bench": rec_bench}
    if not argv or argv[0] not in actions:
        raise UserError(f"latentreason rec: expected one of {', '.join(actions)} (docs/recommendation.md)")
    return actions[argv[0]](argv[1:])


def rec_train(argv: list[str]) -> int:
    from latentreason.config import add_config_flags, load_config
    from latentreason.rec.bench import rec_recipe
    from latentreason.rec.config import RecConfig
    from latentreason.rec.run import run_rec_training

    parser = argparse.ArgumentParser(
        prog="latentreason rec train", description="Train a sequential recommender (sasrec, rearec, plr).",
        allow_abbrev=False,
    )  # fmt: skip
    parser.add_argument("--config", help="YAML recipe: a path or sasrec-ml100k, rearec-ml100k, plr-ml100k")
    parser.add_argument("--data", dest="dataset", default=argparse.SUPPRESS, help="an atomic .inter file (= --dataset)")
    add_config_flags(parser, RecConfig)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    config = load_config(RecConfig, rec_recipe(config_path) if config_path else None, args)
    result = run_rec_training(config)
    print(f"best model (by validation NDCG@10): {result.best_dir}")
    print(json.dumps({"valid": result.valid, "test": result.test}))
    return 0


def rec_eval(argv: list[str]) -> int:
    from latentreason.rec.evaluate import latency_per_user, rank_split
    from latentreason.rec.model import Recommender
    from latentreason.rec.run import split_for

    parser = argparse.ArgumentParser(prog="latentreason rec eval", description="Full-ranking metrics of a recommender.")
    parser.add_argument("--model", required=True, help="a saved recommender (a run's best/, final/ or a checkpoint)")
    parser.add_argument("--data", help="an atomic .inter file (default: the data set the model was trained on)")
    parser.add_argument("--split", choices=("valid", "test"), default="test")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    model = Recommender.from_pretrained(args.model)
    split = split_for(model, args.data)
    metrics = rank_split(model, split, args.split, args.batch_size)
    metrics["latency_ms_per_user"] = latency_per_user(model, split)
    print(json.dumps({"model": args.model, "split": args.split, **metrics}))
    return 0


def rec_bench(argv: list[str]) -> int:
    from latentreason.config import seed_list
    from latentreason.rec.bench import BENCH_MODELS, run_rec_bench

    parser = argparse.ArgumentParser(
        prog="latentreason rec bench",
        description="SASRec, ReaRec and PLR over seeds on one split: test metrics and latency per user; the last "
        "line is one JSON object.",
    )
    parser.add_argument("--models", default=",".join(BENCH_MODELS), help="comma-separated models to run")
    parser.add_argument("--seeds", default="42,1,2", help="comma-separated seeds")
    parser.add_argument("--output-dir", default="runs/rec-bench", help="one run per model and seed under it")
    parser.add_argument("--quick", action="store_true", help="a few steps of a tiny model: checks the bench runs")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    unknown = [m for m in models if m not in BENCH_MODELS]
    if unknown:
        raise UserError(f"--models: unknown {unknown}; expected some of {BENCH_MODELS}")
    overrides = {}
    if args.quick:
        overrides = dict(max_steps=2, eval_steps=1, hidden_size=16, inner_size=32, per_device_train_batch_size=64)
    result = run_rec_bench(models, seed_list(args.seeds, "--seeds"), Path(args.output_dir), overrides)
    print(json.dumps(result))
    return 0


COMMANDS = {
    "train": cmd_train,
    "rl": cmd_rl,
    "train-rm": cmd_train_rm,
    "eval": cmd_eval,
    "data": cmd_data,
    "demo": cmd_demo,
    "inspect": cmd_inspect,
    "bench": cmd_bench,
    "study": cmd_study,
    "serve": cmd_serve,
    "rec": cmd_rec,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(
            f"latentreason: error: unknown command {argv[0]!r}; expected one of: {', '.join(COMMANDS)} "
            "(see latentreason --help)",
            file=sys.stderr,
        )
        return 2
    try:
        code = COMMANDS[argv[0]](argv[1:])
    except UserError as err:
        if debug:
            raise
        print(f"latentreason: error: {err}", file=sys.stderr)
        return 2
    from latentreason.processes import leave_process_group

    return leave_process_group(code)


if __name__ == "__main__":
    sys.exit(main())
