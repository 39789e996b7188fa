"""Tiny randomly initialised causal LMs for tests and the CPU demo (Llama, GPT-2, Qwen2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel, Qwen2Config

from latentreason.errors import ConfigError


@dataclass
class TinyModelSpec:
    """Architecture of a from-scratch model (fields named as in transformers configs)."""

    model_type: str = "llama"
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 512

    def __post_init__(self):
        if self.model_type not in ("llama", "gpt2", "qwen2"):
            raise ConfigError(f"tiny_model.model_type: expected 'llama', 'gpt2' or 'qwen2', got {self.model_type!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"tiny_model.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )


def build_tiny_model(spec: TinyModelSpec, tokenizer, seed: int = 0) -> PreTrainedModel:
    """A fresh model sized by `spec` whose vocabulary and special ids match `tokenizer`."""
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.model_type == "gpt2":
        config = GPT2Config(
            n_embd=spec.hidden_size,
            n_layer=spec.num_hidden_layers,
            n_head=spec.num_attention_heads,
            n_inner=spec.intermediate_size,
            n_positions=spec.max_position_embeddings,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    else:
        config_cls = LlamaConfig if spec.model_type == "llama" else Qwen2Config
        config = config_cls(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_attention_heads,
            intermediate_size=spec.intermediate_size,
            max_position_embeddings=spec.max_position_embeddings,
            tie_word_embeddings=True,
            **ids,
        )
    config.latentreason_tiny = asdict(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)
