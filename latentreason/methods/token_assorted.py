"""Token Assorted (Su et al. 2025, arXiv 2502.03275): the CoT's first chunks written as discrete latent codes.

- Stage 1 (when a fresh run builds its model, `build_lm`): a VQ-VAE (model/vqvae.py) is fitted on the training
  CoTs cut into chunks of `chunk_length` tokens; its encoder reads prompt + CoT, its decoder rebuilds each
  chunk from the chunk's code. The K codes become tokens `<|code_k|>` of the LM (model/code_tokens.py), and
  the VQ-VAE is saved with the model as a frozen head, so a resumed run encodes exactly as the first did.
- Stage 2 (the training steps): each example's first m chunks are replaced by their codes, the rest of the
  CoT stays text: `question <|code_a|> <|code_b|> rest-of-CoT ### answer`; m is drawn uniformly from
  0..n (n = the example's chunks, capped by `max_latent_chunks`) per example and step, so m = 0 is
  plain CoT and the model learns every mix. CE on everything after the question, as CoT-SFT.
- Inference: ordinary token decoding (the model writes codes, then text, then the answer); counts split
  into code tokens (reported as latents) and text tokens.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.engine.batch import IGNORE, left_pad
from latentreason.errors import ConfigError, UserError
from latentreason.evaluation.solvers import Solution, TextSolver, count_reasoning_tokens
from latentreason.layout import encode_problem
from latentreason.methods.base import Method, register_method
from latentreason.methods.sft import teacher_forced_loss
from latentreason.model.code_tokens import add_code_tokens, first_code_id
from latentreason.model.device import default_device
from latentreason.model.vqvae import chunk_batch
from latentreason.model.vqvae_fit import VQFit, assign_codes, fit_vqvae
from latentreason.processes import say
from latentreason.train_config import SFTConfig

VQVAE = "vqvae"  # the head's name
STAGE1_KEY = "token_assorted_vqvae"  # in lm.meta: stage 1's last metrics and codebook use


@dataclass
class TokenAssortedConfig(SFTConfig):
    chunk_length: int = field(16, help="CoT tokens per latent code (the paper: 16)")
    codebook_size: int = field(1024, help="codes of the VQ-VAE = code tokens added to the vocabulary")
    max_latent_chunks: int = field(-1, help="most chunks replaced by codes in training (-1: up to all of them)")
    vq_hidden_size: int = field(64, help="width of the VQ-VAE's encoder, decoder and codes")
    vq_layers: int = field(2, help="transformer layers of the VQ-VAE's encoder and of its decoder")
    vq_heads: int = field(4, help="attention heads of the VQ-VAE's layers")
    vq_epochs: float = field(4.0, help="passes of stage 1 (the VQ-VAE fit) over the training CoTs")
    vq_batch_size: int = field(64, help="examples per VQ-VAE step")
    vq_learning_rate: float = field(1e-3, help="AdamW learning rate of the VQ-VAE")
    commitment_weight: float = field(0.25, help="beta, the commitment loss weight (the VQ-VAE standard: 0.25)")
    dead_code_restart_every: int = field(50, help="VQ-VAE steps between restarts of unused codes (0: never)")

    def __post_init__(self):
        super().__post_init__()
        for name in ("chunk_length", "codebook_size", "vq_hidden_size", "vq_layers", "vq_heads", "vq_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field '{name}': must be >= 1, got {getattr(self, name)}")
        if self.vq_hidden_size % self.vq_heads:
            raise ConfigError(
                f"field 'vq_hidden_size': must be a multiple of vq_heads={self.vq_heads}, got {self.vq_hidden_size}"
            )
        if self.max_latent_chunks < -1:
            raise ConfigError(f"field 'max_latent_chunks': expected -1 (no cap) or >= 0, got {self.max_latent_chunks}")
        if self.vq_epochs <= 0 or self.vq_learning_rate <= 0:
            raise ConfigError("fields 'vq_epochs' and 'vq_learning_rate' must be > 0")
        if self.commitment_weight < 0 or self.dead_code_restart_every < 0:
            raise ConfigError("fields 'commitment_weight' and 'dead_code_restart_every' must be >= 0")


def num_chunks(cot_length: int, chunk_length: int) -> int:
    return -(-cot_length // chunk_length)


def mixed_sequence(enc, code_ids: list[int], m: int, chunk_length: int) -> tuple[list[int], list[int]]:
    """(ids, labels) of `prompt, the first m chunks' code tokens, the CoT after m chunks, answer`; labels
    ignore the prompt. code_ids: the code token of every chunk of enc.cot, in order."""
    target = code_ids[:m] + enc.cot[m * chunk_length :] + enc.answer
    return enc.prompt + target, [IGNORE] * len(enc.prompt) + target


@register_method("token-assorted")
class TokenAssorted(Method):
    config_cls = TokenAssortedConfig

    def __init__(self, config: TokenAssortedConfig):
        super().__init__(config)
        self.step = 0

    # --- stage 1 -------------------------------------------------------------------------------
    def build_lm(self, config, train):
        lm = super().build_lm(config, train)
        encoded = [encode_problem(lm.tokenizer, p) for p in train]
        rows = [(enc.prompt, enc.cot) for enc in encoded if enc.cot]
        if not rows:
            raise UserError("token-assorted: no training example has CoT steps to compress into codes")
        vqvae = lm.add_head(
            VQVAE,
            "vqvae",
            vocab_size=len(lm.tokenizer),
            chunk_length=config.chunk_length,
            codebook_size=config.codebook_size,
            hidden_size=config.vq_hidden_size,
            num_layers=config.vq_layers,
            num_heads=config.vq_heads,
            max_positions=config.max_seq_length,
            pad_id=lm.pad_id,
        )
        device = default_device(None)
        vqvae.to(device=device, dtype=torch.float32)
        steps = max(1, round(config.vq_epochs * len(rows) / config.vq_batch_size))
        fit = VQFit(
            steps,
            config.vq_batch_size,
            config.vq_learning_rate,
            config.commitment_weight,
            config.dead_code_restart_every,
            config.seed,
        )
        metrics = fit_vqvae(vqvae, rows, fit, device)
        codes = assign_codes(vqvae, rows, device)
        metrics["codes_used"] = float(len({c for row in codes for c in row}))
        vqvae.to(device=lm.device, dtype=lm.embed.weight.dtype)
        add_code_tokens(lm, code_rows(lm, rows, codes, config.codebook_size, config.chunk_length))
        lm.meta[STAGE1_KEY] = {"steps": steps, **metrics}
        say(
            f"token-assorted stage 1: VQ-VAE fitted in {steps} steps, {metrics['exact_chunks']:.1%} of a batch's "
            f"chunks rebuilt exactly, {int(metrics['codes_used'])}/{config.codebook_size} codes in use"
        )
        return lm

    # --- stage 2 -------------------------------------------------------------------------------
    def prepare(self, lm) -> None:
        cfg = self.config
        if VQVAE not in lm.heads:
            raise UserError(
                "token-assorted: the model has no VQ-VAE head; train from a model without one (stage 1 runs "
                "when `latentreason train --method token-assorted` builds its model), not from a given LatentLM"
            )
        spec = lm.head_specs[VQVAE]
        if (spec["chunk_length"], spec["codebook_size"]) != (cfg.chunk_length, cfg.codebook_size):
            raise ConfigError(
                f"fields 'chunk_length'/'codebook_size': the model's VQ-VAE has {spec['chunk_length']}/"
                f"{spec['codebook_size']}, the config asks for {cfg.chunk_length}/{cfg.codebook_size}"
            )
        lm.heads[VQVAE].requires_grad_(False)  # fitted in stage 1; the LM's steps only read its codes
        self.first_code = first_code_id(lm.tokenizer, cfg.codebook_size)

    def start_step(self, step: int, steps_per_epoch: int) -> bool:
        self.step = step
        return False

    def draw_m(self, problem, chunks: int) -> int:
        """Chunks replaced by codes: uniform in 0..min(chunks, cap), deterministic per (seed, step, question),
        so a resumed run draws what the uninterrupted one did."""
        cap = chunks if self.config.max_latent_chunks < 0 else min(chunks, self.config.max_latent_chunks)
        key = f"{self.config.seed}|{self.step}|{problem.question}|chunks"
        return random.Random(zlib.crc32(key.encode())).randint(0, cap)

    def chunk_codes(self, lm, encoded) -> list[list[int]]:
        """The code token ids of every chunk of every row's CoT."""
        vqvae = lm.heads[VQVAE]
        batch = chunk_batch([e.prompt for e in encoded], [e.cot for e in encoded], self.config.chunk_length, lm.pad_id)
        device = next(vqvae.parameters()).device
        flat = (vqvae.encode(batch["ids"].to(device), batch["mask"].to(device), batch["chunk_of"].to(device))).tolist()
        out = []
        for enc in encoded:
            count = num_chunks(len(enc.cot), self.config.chunk_length)
            out.append([self.first_code + c for c in flat[:count]])
            flat = flat[count:]
        return out

    def collate(self, lm, problems):
        encoded = [encode_problem(lm.tokenizer, p) for p in problems]
        sequences, labels, replaced = [], [], []
        for problem, enc, codes in zip(problems, encoded, self.chunk_codes(lm, encoded)):
            m = self.draw_m(problem, len(codes))
            ids, target = mixed_sequence(enc, codes, m, self.config.chunk_length)
            sequences.append(ids)
            labels.append(target)
            replaced.append(m)
        batch = left_pad(sequences, lm.pad_id, labels)
        batch["codes"] = torch.tensor(replaced, dtype=torch.float)
        return batch

    def loss(self, lm, batch):
        loss, metrics = teacher_forced_loss(lm, batch)
        return loss, {**metrics, "latents": float(batch["codes"].mean())}

    def solver(self, lm):
        return CodeTokenSolver(lm, self.config.codebook_size, self.config.max_new_tokens, name=self.name)


def code_rows(lm, rows, codes: list[list[int]], count: int, chunk_length: int) -> torch.Tensor:
    """[count, d] initial embeddings of the code tokens: per code, the mean over the chunks that chose it of
    the mean input embedding of the chunk's tokens; codes no chunk chose get the mean over all chunks."""
    table = lm.embed.weight.detach().float()
    sums, uses = torch.zeros(count, table.shape[1]), torch.zeros(count)
    for (_, cot), row_codes in zip(rows, codes):
        for index, code in enumerate(row_codes):
            chunk = torch.tensor(cot[index * chunk_length : (index + 1) * chunk_length], device=table.device)
            sums[code] += table[chunk].mean(0).cpu()
            uses[code] += 1
    rows_out = sums / uses.clamp(min=1)[:, None]
    rows_out[uses == 0] = sums.sum(0) / uses.sum()
    return rows_out


class CodeTokenSolver(TextSolver):
    """Token decoding from the question; code tokens (special, so left out of the text) count as latents."""

    def __init__(self, lm, codebook_size: int, max_new_tokens: int, name: str):
        super().__init__(lm, max_new_tokens, name=name)
        self.first_code, self.codebook_size = first_code_id(lm.tokenizer, codebook_size), codebook_size

    def solution(self, text: str, ids: list[int]) -> Solution:
        codes = sum(1 for t in ids if self.first_code <= t < self.first_code + self.codebook_size)
        return Solution(text, count_reasoning_tokens(self.lm.tokenizer, text), latent_tokens=codes)
