"""Latent-SFT (Deng et al. 2025, arXiv 2510.15522): latent tokens as superpositions of vocabulary embeddings.

Every latent token is sum_i w_i x embed(id_i) over the top-k ids of a next-token distribution
(engine/mixture.py). One run trains both stages; the first `encoder_steps` optimizer steps are stage 1.

- Stage 1: a latent-token encoder (a full copy of the model, the `latent_encoder` head) reads the question
  and the CoT with one slot after every `chunk_size` CoT tokens under the induction mask; its LM head at each
  slot gives that latent's distribution. The model reads `prompt <bot> L1 c2 L2 ... Ln <eot> answer` under the
  supervision mask (methods/latent_sft_layout.py), its slots holding the encoder's superpositions: CE on
  <eot> + answer, plus `chunk_weight` x CE on the chunk each latent is followed by. Both models train.
- Stage 2: the encoder is frozen (run without gradients) and only gives targets. The model reads
  `prompt <bot> L1..Ln <eot> answer`; its own next-token distribution before each slot is pulled to the
  encoder's (KL(encoder || model) x tau^2, `kl_weight`), and CE on <eot> + answer. The slots hold the
  encoder's superpositions (`teacher_forcing`, the reference: one call) or the model's own (a latent pass).
- Inference: the step engine feeds the superposition of the model's own distribution at each slot until the
  model's argmax is <eot> (or `max_latents`), then decodes the answer: latent counts vary per problem.
The optimizer state is reset when stage 2 starts (the reference trains the stages as separate runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.engine.batch import IGNORE
from latentreason.engine.latent_pass import build_latent_batch, known_latent_forward, latent_forward
from latentreason.engine.loss import next_token_loss
from latentreason.engine.mixture import superposition
from latentreason.errors import ConfigError
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.layout import encode_problem
from latentreason.methods.base import Method, register_method
from latentreason.methods.latent_sft_layout import Packed, decoder_batch, encoder_batch
from latentreason.train_config import SFTConfig

ENCODER = "latent_encoder"  # the head holding the stage-1 encoder (saved with the model)


@dataclass
class LatentSFTConfig(SFTConfig):
    chunk_size: int = field(4, help="CoT tokens summarised by one latent token (the reference's compression_rate: 4)")
    latent_top_k: int = field(10, help="vocabulary tokens mixed into each latent token (the reference: all)")
    latent_temperature: float = field(1.0, help="temperature of the latent distributions and of the KL (ref: 1)")
    encoder_steps: int = field(
        200,
        help="optimizer steps of stage 1 (encoder + model), the rest are stage 2; >= max_steps trains stage 1 only, "
        "0 only stage 2 (from a model whose encoder stage 1 trained)",
    )
    chunk_weight: float = field(1.0, help="stage 1: weight of the CE on the CoT chunk each latent is followed by")
    kl_weight: float = field(1.0, help="stage 2: weight of KL(encoder || model) at the latent slots (ref: 1)")
    teacher_forcing: bool = field(
        True, help="stage 2: slots hold the encoder's superpositions (the reference); false: the model's own"
    )
    gumbel_tau: float = field(0.0, help="Gumbel-softmax temperature of the superposition weights in training (0: off)")
    max_latents: int = field(64, help="most latents per problem at evaluation (rows stop at <eot> before)")

    def __post_init__(self):
        super().__post_init__()
        if self.chunk_size < 1 or self.latent_top_k < 1 or self.max_latents < 1:
            raise ConfigError("field 'chunk_size', 'latent_top_k' and 'max_latents': must be >= 1")
        if self.latent_temperature <= 0:
            raise ConfigError(f"field 'latent_temperature': must be > 0, got {self.latent_temperature}")
        if self.encoder_steps < 0:
            raise ConfigError(f"field 'encoder_steps': must be >= 0, got {self.encoder_steps}")
        for name in ("chunk_weight", "kl_weight", "gumbel_tau"):
            if getattr(self, name) < 0:
                raise ConfigError(f"field '{name}': must be >= 0, got {getattr(self, name)}")


def masked_hidden(model, embeds: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Last hidden states [B, T, d] of one call under the packed sequence's own [B, T, T] mask and positions."""
    return model.base_model(
        inputs_embeds=embeds, attention_mask=packed.mask[:, None], position_ids=packed.positions, use_cache=False
    ).last_hidden_state


def kl_to_targets(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over the masked slots of KL(softmax(teacher / tau) || softmax(student / tau)) x tau^2.
    student, teacher: [B, N, V] logits; mask: [B, N] bool."""
    q = (teacher[mask].float() / tau).log_softmax(-1)  # [K, V]
    p = (student[mask].float() / tau).log_softmax(-1)
    if q.shape[0] == 0:
        return student.sum() * 0.0
    return (q.exp() * (q - p)).sum(-1).mean() * tau**2


@register_method("latent-sft")
class LatentSFT(Method):
    config_cls = LatentSFTConfig

    def __init__(self, config: LatentSFTConfig):
        super().__init__(config)
        self.stage = 2  # a fresh method is in its inference state; training starts with stage 1

    def prepare(self, lm) -> None:
        # A full second copy of the model: the head kind the step decoder's copy mode builds.
        lm.add_head(ENCODER, "step_decoder")

    def start_step(self, step: int, steps_per_epoch: int) -> bool:
        self.stage = 1 if step < self.config.encoder_steps else 2
        return step == self.config.encoder_steps > 0  # fresh AdamW moments for stage 2 (also when resumed there)

    def collate(self, lm, problems):
        cfg = self.config
        encs = [encode_problem(lm.tokenizer, p) for p in problems]
        prompts, cots, answers = [e.prompt for e in encs], [e.cot for e in encs], [e.answer for e in encs]
        batch = {"encoder": encoder_batch(prompts, cots, cfg.chunk_size, lm.latent_id, lm.pad_id)}
        if self.stage == 1:
            batch["decoder"] = decoder_batch(lm, prompts, cots, answers, cfg.chunk_size)
        else:
            counts = [math.ceil(len(c) / cfg.chunk_size) for c in cots]
            suffixes = [[lm.eot_id] + a for a in answers]
            labels = [[IGNORE] + a for a in answers]  # <eot> is scored from the last latent's state (loss)
            batch["latent_batch"] = build_latent_batch(
                [p + [lm.bot_id] for p in prompts], counts, suffixes, labels, lm.pad_id
            )
        return batch

    def batch_tokens(self, batch) -> int:
        other = batch["decoder"].num_tokens if "decoder" in batch else batch["latent_batch"].num_tokens
        return batch["encoder"].num_tokens + other

    def mix(self, lm, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        gumbel = cfg.gumbel_tau if torch.is_grad_enabled() else 0.0  # noise in training only
        return superposition(lm.embed, logits, cfg.latent_top_k, cfg.latent_temperature, gumbel)

    def encoder_logits(self, lm, packed: Packed) -> torch.Tensor:
        """The encoder's latent distributions (logits) [K, V] at every slot of the batch, in row order."""
        encoder = lm.heads[ENCODER]
        hidden = masked_hidden(encoder, encoder.get_input_embeddings()(packed.ids), packed)  # [B, T, d]
        return encoder.get_output_embeddings()(hidden[packed.is_slot])  # [K, V]

    def loss(self, lm, batch):
        return self.stage1_loss(lm, batch) if self.stage == 1 else self.stage2_loss(lm, batch)

    def stage1_loss(self, lm, batch):
        decoder: Packed = batch["decoder"]
        latents = self.mix(lm, self.encoder_logits(lm, batch["encoder"]))  # [K, d]
        embeds = lm.embed(decoder.ids)  # [B, T, d]
        embeds = embeds.masked_scatter(decoder.is_slot[..., None], latents.to(embeds.dtype))
        hidden = masked_hidden(lm.model, embeds, decoder)  # [B, T, d]
        ce, _ = next_token_loss(lm, hidden, decoder.labels)
        chunk_ce, _ = next_token_loss(lm, hidden, decoder.chunk_labels)
        total = ce + self.config.chunk_weight * chunk_ce
        return total, {"ce": float(ce.detach()), "chunk_ce": float(chunk_ce.detach()), "stage": 1.0}

    def stage2_loss(self, lm, batch):
        cfg, latent_batch = self.config, batch["latent_batch"]
        slot_mask = latent_batch.slot_mask()  # [B, N]
        with torch.no_grad():
            flat = self.encoder_logits(lm, batch["encoder"])  # [K, V]
        targets = flat.new_zeros((*slot_mask.shape, flat.shape[-1])).masked_scatter(slot_mask[..., None], flat)
        if cfg.teacher_forcing:
            out = known_latent_forward(lm, latent_batch, self.mix(lm, targets))
        else:
            out = latent_forward(lm, latent_batch, self.thought_map(lm))
        before = torch.cat([out.bot_hidden[:, None], out.latent_hidden], 1)  # [B, N+1, d] state before slot j
        kl = kl_to_targets(lm.lm_head(before[:, :-1]), targets, slot_mask, cfg.latent_temperature)
        rows = torch.arange(before.shape[0], device=before.device)
        eot_logits = lm.lm_head(before[rows, latent_batch.num_latents]).float()  # [B, V] after the last latent
        eot_target = torch.full_like(rows, lm.eot_id)
        ce, _ = next_token_loss(lm, out.suffix_hidden, latent_batch.suffix_labels)
        eot_ce = torch.nn.functional.cross_entropy(eot_logits, eot_target)
        total = ce + eot_ce + cfg.kl_weight * kl
        metrics = {"ce": ce, "eot_ce": eot_ce, "kl": kl}
        metrics = {k: float(v.detach()) for k, v in metrics.items()}
        return total, {**metrics, "latents": float(latent_batch.num_latents.float().mean()), "stage": 2.0}

    def thought_map(self, lm):
        def mixture(hidden, slot):
            return self.mix(lm, lm.lm_head(hidden)), None  # [B, d]

        return mixture

    def solver(self, lm):
        eot = lm.eot_id

        def stop_at_eot(j, hidden, z, extra, rows):
            return lm.lm_head(hidden).argmax(-1) == eot  # [b] the model would write <eot> here

        cfg = self.config
        return LatentSolver(lm, self.thought_map(lm), stop_at_eot, cfg.max_latents, cfg.max_new_tokens, name=self.name)
