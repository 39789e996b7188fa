"""`latentreason bench decode`: the step engine's decoding against transformers' `generate` and each decoder
against greedy decoding, on one model and batch (SmolLM2-135M-Instruct, batch 16, chat prompts).

Figures, each measured side by side in one run:
  greedy_vs_generate   `generate`'s time / ours for the same greedy tokens (checked equal): >= 1 means ours
                       is at least as fast
  <decoder>_ratio      a decoder's time per generated position / greedy decoding's (every row runs all
                       `new_tokens` steps: no stop token; Soft Thinking never stops thinking)
  leave_speedup        rows of mixed lengths (spread evenly over 1/8..1 of `new_tokens`): the time when every
                       row runs to the longest (what a row riding along masked costs) / the time when
                       finished rows leave the batch
The last line printed is one JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from latentreason.bench.timing import paired
from latentreason.data.generators import generate
from latentreason.decoding import DecodeContext, decoder_from_args
from latentreason.engine.batch import left_pad
from latentreason.engine.decode import decode_from
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import StepChoice, prefill, run_steps
from latentreason.evaluation.prompting import PromptBuilder

# decoder name -> its arguments here: Soft Thinking never stops thinking (every step soft); SwiReasoning
# switches as its entropy rule says (a mix of soft and text steps)
DECODERS = {"soft-thinking": {"cold_stop_steps": 0}, "swireasoning": {}}


@dataclass
class DecodeBenchConfig:
    batch: int = 16
    new_tokens: int = 64
    repeats: int = 5
    tiny: bool = False  # a tiny random Llama instead of SmolLM2 (--quick)


class MixedLengths:
    """Greedy decoding where row r ends after lengths[r] tokens (or, with leave=False, runs to the longest)."""

    def __init__(self, lengths: torch.Tensor, leave: bool):
        self.lengths, self.leave = lengths, leave

    def step(self, view) -> StepChoice:
        ids = view.logits.argmax(-1)  # [b]
        finished = view.t + 1 >= self.lengths[view.rows] if self.leave else None
        return StepChoice(ids, finished=finished)


def load_model(cfg: DecodeBenchConfig, device: str):
    """SmolLM2-135M-Instruct as it is, or (tiny) a small random Llama on a tokenizer of the prompts."""
    from latentreason.model.latent_lm import LatentLM

    if cfg.tiny:
        from latentreason.model.tiny import TinyModelSpec, build_tiny_model
        from latentreason.model.tokenizer import train_tokenizer

        tokenizer = train_tokenizer([p.question for p in generate("arithmetic", 64, seed=0)], 400)
        model = build_tiny_model(TinyModelSpec(hidden_size=64, num_hidden_layers=2, intermediate_size=128), tokenizer)
        return LatentLM(model, tokenizer, latent_tokens=False).to(device).eval()
    from latentreason.model.smollm import load_smollm2

    model, tokenizer = load_smollm2()
    return LatentLM(model, tokenizer, latent_tokens=False).to(device).eval()


def chat_prompts(lm, n: int) -> list[list[int]]:
    builder = PromptBuilder(lm.tokenizer)
    return [builder.ids(p.question) for p in generate("arithmetic", n, seed=0)]


def run_decode_bench(cfg: DecodeBenchConfig | None = None, device: str | None = None) -> dict:
    cfg = cfg or DecodeBenchConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = load_model(cfg, device)
    prompts = chat_prompts(lm, cfg.batch)
    never = [len(lm.tokenizer) + 1]  # a stop id no row produces: every row runs all steps
    figures: dict = {"device": device, "threads": torch.get_num_threads(), "batch": cfg.batch}

    def ours():
        return decode_from(lm, prefill(lm, prompts), cfg.new_tokens, never)

    batch = left_pad(prompts, lm.pad_id)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def theirs():
        return lm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=cfg.new_tokens,
            do_sample=False,
            pad_token_id=lm.pad_id,
            eos_token_id=never,  # like ours: no row stops (min_new_tokens would instead forbid eos, changing tokens)
        )[:, ids.shape[1] :]

    with torch.no_grad():
        same = torch.equal(ours().tokens, theirs())
        ratio, generate_s, ours_s = paired(theirs, ours, cfg.repeats)
    figures.update(greedy_vs_generate=ratio, generate_s=generate_s, greedy_s=ours_s, same_tokens=same)

    think_start, think_end = PromptBuilder(lm.tokenizer).think_ids()  # `<think>`, `</think>` (as text pieces)
    context = DecodeContext(
        prompts=prompts,
        stop_ids=never,
        max_new_tokens=cfg.new_tokens,
        sampling=Sampling().rows(cfg.batch, device),
        seeds=torch.arange(cfg.batch),
        think_start=think_start,
        think_end=think_end,
    )
    greedy = decoder_from_args("text")
    for name, args in DECODERS.items():
        decoder = decoder_from_args(name, args)
        ratio, decoder_s, _ = paired(
            lambda d=decoder: d.generate(lm, context), lambda: greedy.generate(lm, context), cfg.repeats
        )
        figures[f"{name.replace('-', '_')}_ratio"] = ratio
        figures[f"{name.replace('-', '_')}_s"] = decoder_s

    lengths = torch.linspace(cfg.new_tokens / 8, cfg.new_tokens, cfg.batch).round().long().to(device)  # [B]

    def with_leave(leave: bool):
        return lambda: run_steps(lm, prefill(lm, prompts), MixedLengths(lengths, leave), cfg.new_tokens)

    ratio, ride_s, leave_s = paired(with_leave(False), with_leave(True), cfg.repeats)
    figures.update(leave_speedup=ratio, ride_along_s=ride_s, leave_s=leave_s)
    print_figures(figures, cfg)
    return figures


def print_figures(figures: dict, cfg: DecodeBenchConfig) -> None:
    print(
        f"decode benchmark on {figures['device']} ({figures['threads']} threads), batch {cfg.batch}, "
        f"{cfg.new_tokens} new tokens per row"
    )
    print(f"| {'figure':44s} | {'ratio':>7s} | {'time':30s} |")
    rows = [
        (
            f"generate / ours, greedy (same tokens: {figures['same_tokens']})",
            figures["greedy_vs_generate"],
            f"{figures['generate_s'] * 1000:.0f} ms vs {figures['greedy_s'] * 1000:.0f} ms",
        ),
    ]
    for name in DECODERS:
        key = name.replace("-", "_")
        rows.append((f"{name} / greedy, per position", figures[f"{key}_ratio"], f"{figures[f'{key}_s'] * 1000:.0f} ms"))
    rows.append(
        (
            "mixed lengths: ride along / leave the batch",
            figures["leave_speedup"],
            f"{figures['ride_along_s'] * 1000:.0f} ms vs {figures['leave_s'] * 1000:.0f} ms",
        )
    )
    for label, ratio, time in rows:
        print(f"| {label:44s} | {ratio:6.2f}x | {time:30s} |")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
