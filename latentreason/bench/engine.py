"""`latentreason bench engine`: the latent engines against their floors and the reference path.

Figures, each measured side by side in one run on the same model and batch:
  train_ratio_K      latent training step (forward + backward, K latents) / plain teacher-forced step over
                     the same number of positions (the floor: what the positions cost without latents)
  rollout_ratio_floor  latent rollout (prefill, latents, answer) / one no-grad forward over as many tokens
  rollout_speedup_oracle  rollout throughput / the per-problem recompute-everything reference path
  oracle_speedup_at_floor  the same for an engine that cost exactly the floor: the most a rollout can reach
                     where the hardware is compute-bound (on a CPU the one-problem reference path uses the
                     matrix units about as well as a batch does, so this is near the token-count ratio)
Peak memory: on CUDA the allocator's peak; on CPU the bytes autograd saves for backward (training) and
the KV-cache bytes (rollout), which is what grows with latents. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch.autograd.graph import saved_tensors_hooks
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from latentreason.bench.timing import paired
from latentreason.engine.batch import IGNORE
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.reference import reference_rollout
from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.methods.base import next_token_loss
from latentreason.model.latent_lm import LatentLM
from latentreason.model.tokenizer import train_tokenizer


@dataclass
class EngineBenchConfig:
    hidden_size: int = 512
    num_hidden_layers: int = 6
    train_batch: int = 32
    train_length: int = 100  # positions per sequence, latents included
    train_latents: tuple[int, ...] = (6, 20)
    rollout_batch: int = 64
    prompt_length: int = 60
    rollout_latents: int = 20
    answer_tokens: int = 10
    oracle_problems: int = 8  # the reference path is slow: time a few problems, report per problem
    repeats: int = 5
    oracle_repeats: int = 3  # 8 reference problems take ~6 s on 2 CPU cores
    seed: int = 0


def bench_model(cfg: EngineBenchConfig, device: str) -> LatentLM:
    tokenizer: PreTrainedTokenizerFast = train_tokenizer(["0 1 2 3 4 5 6 7 8 9 + - * = << >> ###"] * 4, 300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(cfg.seed)
    return LatentLM(LlamaForCausalLM(config), tokenizer).to(device)


def identity(hidden, slot):
    return hidden, None


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward while `fn` runs its forward (activation memory).

    Counted per storage, so views of one buffer (the training cache's saved keys) count once.
    """
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def peak_cuda(fn) -> int:
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated()


def train_figures(lm: LatentLM, cfg: EngineBenchConfig, k: int) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    vocab = len(lm.tokenizer) - 3
    b, prefix_len = cfg.train_batch, cfg.train_length // 2
    suffix_len = cfg.train_length - prefix_len - k
    prefixes = torch.randint(3, vocab, (b, prefix_len), generator=gen).tolist()
    suffixes = torch.randint(3, vocab, (b, suffix_len), generator=gen).tolist()
    batch = build_latent_batch(prefixes, [k] * b, suffixes, [[IGNORE] + s[1:] for s in suffixes], lm.pad_id)
    batch = batch.to(lm.device)
    # The floor: one teacher-forced pass over the same B x L positions, loss on the same suffix tokens.
    plain_ids = torch.randint(3, vocab, (b, cfg.train_length), generator=gen).to(lm.device)
    plain_labels = torch.full_like(plain_ids, IGNORE)
    plain_labels[:, -suffix_len + 1 :] = plain_ids[:, -suffix_len + 1 :]

    def latent_step():
        out = latent_forward(lm, batch, identity)
        next_token_loss(lm, out.suffix_hidden, batch.suffix_labels)[0].backward()

    def plain_step():
        hidden = lm.backbone(input_ids=plain_ids).last_hidden_state
        next_token_loss(lm, hidden, plain_labels)[0].backward()

    ratio, latent_s, plain_s = paired(latent_step, plain_step, cfg.repeats)
    lm.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        mem_latent, mem_plain = peak_cuda(latent_step), peak_cuda(plain_step)
    else:
        mem_latent = saved_bytes(lambda: latent_forward(lm, batch, identity))
        mem_plain = saved_bytes(lambda: lm.backbone(input_ids=plain_ids).last_hidden_state)
    lm.zero_grad(set_to_none=True)
    return {
        f"train_ratio_{k}": ratio,
        f"train_latent_{k}_s": latent_s,
        f"train_plain_{k}_s": plain_s,
        f"train_latent_{k}_mem_mb": mem_latent / 2**20,
        f"train_plain_{k}_mem_mb": mem_plain / 2**20,
    }


@torch.no_grad()
def rollout_figures(lm: LatentLM, cfg: EngineBenchConfig) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    vocab = len(lm.tokenizer) - 3
    prompts = [
        p + [lm.bot_id]
        for p in torch.randint(3, vocab, (cfg.rollout_batch, cfg.prompt_length - 1), generator=gen).tolist()
    ]
    k = cfg.rollout_latents
    no_stop = [-1]  # decode every answer token so each path does the same work

    def rollout():
        return latent_rollout(lm, prompts, identity, fixed_latents(k), k, cfg.answer_tokens, stop_ids=no_stop)

    total = cfg.prompt_length + k + 1 + cfg.answer_tokens
    floor_ids = torch.randint(3, vocab, (cfg.rollout_batch, total), generator=gen).to(lm.device)
    floor_ratio, rollout_s, floor_s = paired(rollout, lambda: lm.backbone(input_ids=floor_ids), cfg.repeats)
    n = cfg.oracle_problems

    def oracle():
        return [reference_rollout(lm, p, k, identity, cfg.answer_tokens, no_stop) for p in prompts[:n]]

    # Throughput is a steady-state figure, so each side's median time (timed alternately, so a slow spell
    # of the machine hits both) rather than the median of per-pair ratios.
    _, oracle_n_s, rollout_pair_s = paired(oracle, rollout, cfg.oracle_repeats)
    oracle_s = oracle_n_s / n
    cache_bytes = 2 * cfg.num_hidden_layers * cfg.rollout_batch * total * cfg.hidden_size * 4
    return {
        "rollout_ratio_floor": floor_ratio,
        "rollout_speedup_oracle": oracle_s * cfg.rollout_batch / rollout_pair_s,
        # What an engine costing exactly the floor would reach: the ceiling on compute-bound hardware.
        "oracle_speedup_at_floor": oracle_s * cfg.rollout_batch / floor_s,
        "rollout_s": rollout_s,
        "rollout_floor_s": floor_s,
        "oracle_per_problem_s": oracle_s,
        "rollout_mem_mb": (peak_cuda(rollout) if torch.cuda.is_available() else cache_bytes) / 2**20,
    }


def run_engine_bench(cfg: EngineBenchConfig | None = None, device: str | None = None) -> dict:
    cfg = cfg or EngineBenchConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = bench_model(cfg, device)
    figures = {"device": device, "threads": torch.get_num_threads()}
    for k in cfg.train_latents:
        figures.update(train_figures(lm, cfg, k))
    lm.eval()
    figures.update(rollout_figures(lm, cfg))
    rows = [
        (
            f"train step, {k} latents / plain step",
            f"{figures[f'train_ratio_{k}']:.2f}x",
            f"{figures[f'train_latent_{k}_s'] * 1000:.0f} ms vs {figures[f'train_plain_{k}_s'] * 1000:.0f} ms",
            f"{figures[f'train_latent_{k}_mem_mb']:.0f} MB vs {figures[f'train_plain_{k}_mem_mb']:.0f} MB",
        )
        for k in cfg.train_latents
    ]
    rows.append(
        (
            "rollout / no-grad forward (floor)",
            f"{figures['rollout_ratio_floor']:.2f}x",
            f"{figures['rollout_s'] * 1000:.0f} ms vs {figures['rollout_floor_s'] * 1000:.0f} ms",
            f"{figures['rollout_mem_mb']:.0f} MB KV cache",
        )
    )
    rows.append(
        (
            "rollout speed-up over reference path",
            f"{figures['rollout_speedup_oracle']:.1f}x",
            f"{figures['oracle_per_problem_s'] * 1000:.0f} ms per problem (reference)",
            "",
        )
    )
    rows.append(("  at the floor (ceiling)", f"{figures['oracle_speedup_at_floor']:.1f}x", "", ""))
    print(
        f"engine benchmark on {device} ({figures['threads']} threads), Llama d={cfg.hidden_size} "
        f"L={cfg.num_hidden_layers}; train batch {cfg.train_batch} x {cfg.train_length}; rollout batch "
        f"{cfg.rollout_batch}, {cfg.prompt_length}-token prompts, {cfg.rollout_latents} latents, "
        f"{cfg.answer_tokens} answer tokens"
    )
    print(f"| {'figure':40s} | {'ratio':>8s} | {'time':32s} | {'memory':24s} |")
    for row in rows:
        print(f"| {row[0]:40s} | {row[1]:>8s} | {row[2]:32s} | {row[3]:24s} |")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return figures
