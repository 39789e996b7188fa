"""Tiny offline models shared by the tests (importable as `from tests.helpers import tiny_lm`)."""

from __future__ import annotations

import dataclasses
import math

import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.data.problems import Problem
from latentreason.model.build import problem_texts
from latentreason.model.latent_lm import LatentLM
from latentreason.model.tiny import TinyModelSpec, build_tiny_model
from latentreason.model.tokenizer import train_tokenizer

MODEL_TYPES = ("llama", "gpt2", "qwen2")
TOKENIZER_VOCAB = 320
# Weight scale of `_diversify`: at the default init (std 0.02, tied head) a 2-layer model just repeats
# its last input token, which would let masking or position bugs go unnoticed in decoding tests.
GAIN = 3.0

_CACHE: dict[tuple, LatentLM] = {}

# Equality up to float64 rounding, for engine paths compared on float64 models: the paths agree to about
# 1e-14 there, and a masking or position bug moves values by more than 1e-2.
EXACT = {"atol": 1e-10, "rtol": 1e-10}

# Models this small are dominated by thread hand-off: one thread makes a decoding step ~10x faster.
torch.set_num_threads(1)


def chain_problems(n: int = 64, seed: int = 0) -> list[Problem]:
    return generate_chain(n, seed=seed)


def tiny_spec(model_type: str = "llama") -> TinyModelSpec:
    return TinyModelSpec(
        model_type=model_type,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )


def build_tiny_lm(
    model_type: str = "llama", seed: int = 0, problems: list[Problem] | None = None, dtype: torch.dtype = torch.float32
) -> LatentLM:
    """A new (uncached) LatentLM: tokenizer trained on chain problems, a 2-layer width-32 model."""
    problems = chain_problems() if problems is None else problems
    tokenizer = train_tokenizer(problem_texts(problems), vocab_size=TOKENIZER_VOCAB)
    model = build_tiny_model(tiny_spec(model_type), tokenizer, seed=seed)
    _diversify(model, seed)
    model.to(dtype).eval()
    return LatentLM(model, tokenizer)


def tiny_lm(model_type: str = "llama", seed: int = 0, problems: list[Problem] | None = None) -> LatentLM:
    """Like `build_tiny_lm` but cached per arguments: callers must not modify the returned model."""
    key_problems = None if problems is None else tuple((p.question, tuple(p.steps), p.answer) for p in problems)
    key = (model_type, seed, key_problems)
    if key not in _CACHE:
        _CACHE[key] = build_tiny_lm(model_type, seed, problems)
    return _CACHE[key]


@torch.no_grad()
def _diversify(model, seed: int) -> None:
    """Re-draw every matrix at `GAIN / sqrt(fan_in)` (embeddings at std 1) and every bias at std 0.1.

    Runs before `LatentLM` adds its special tokens, so their rows still copy the `init_from` row.
    Norm weights stay at 1. Seeded: the same arguments give the same model.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            if name.endswith(("embed_tokens.weight", "wte.weight", "wpe.weight")):
                std = 1.0
            else:  # Linear weights are [out, in]; GPT-2's Conv1D weights are [in, out]
                fan_in = param.shape[0] if ".c_" in name else param.shape[1]
                std = GAIN / math.sqrt(fan_in)
            param.copy_(torch.randn(param.shape, generator=generator) * std)
        elif name.endswith(".bias"):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@torch.no_grad()
def eot_at_varied_steps(lm, gain: float = 3.0) -> None:
    """Point the (tied) LM head's <eot> row along a random direction: an untrained model almost never predicts
    <eot>, this one does at varied steps, so CoLaR's rows stop thinking at different points."""
    row = torch.randn(lm.embed.weight.shape[1], generator=torch.Generator().manual_seed(3))
    lm.model.get_output_embeddings().weight[lm.eot_id] = gain * row.to(lm.embed.weight.dtype)


@torch.no_grad()
def untie_latent_tokens(lm) -> None:
    """Nudge the LM head's rows of <bot>, <latent> and <eot> off '<<', the row they start as copies of: an untrained
    model's logits for them and '<<' are then equal but for rounding, and greedy decoding picks whichever the
    matmul's summation order favours, so a batch of three and one row alone can write different replies."""
    head = lm.model.get_output_embeddings().weight  # [V, d]
    ids = [lm.bot_id, lm.latent_id, lm.eot_id]
    noise = torch.randn(len(ids), head.shape[1], generator=torch.Generator().manual_seed(5))  # [3, d]
    head[ids] += 0.05 * head[ids].norm(dim=-1, keepdim=True) / head.shape[1] ** 0.5 * noise.to(head.dtype)


# A ChatML template like SmolLM2's and Qwen's (without a default system message).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_chat_tokenizer(chat_template: str | None = CHATML):
    """The tiny tokenizer plus ChatML's turn tokens as special tokens, with `chat_template` set."""
    tokenizer = train_tokenizer(problem_texts(chain_problems()), vocab_size=TOKENIZER_VOCAB)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = chat_template
    return tokenizer


def save_tiny_chat_model(directory, chat_template: str | None = CHATML, seed: int = 0, positions: int = 128):
    """A plain Hugging Face model directory (no latentreason.json): a tiny Llama and the chat tokenizer."""
    tokenizer = tiny_chat_tokenizer(chat_template)
    spec = dataclasses.replace(tiny_spec("llama"), max_position_embeddings=positions)
    model = build_tiny_model(spec, tokenizer, seed=seed)
    _diversify(model, seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


TINY_TRAIN_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_train_config(config_cls, output_dir, **overrides):
    """A config of `config_cls` that trains a from-scratch tiny model on 2-step chains in about a second."""
    values = dict(
        model_name_or_path="tiny",
        tiny_model=TINY_TRAIN_MODEL,
        dataset="synthetic:chain",
        dataset_params={"num_steps": 2},
        num_train_examples=32,
        num_eval_examples=0,
        output_dir=str(output_dir),
        per_device_train_batch_size=16,
        max_steps=3,
        max_new_tokens=8,
        logging_steps=1,
    )
    values.update(overrides)
    return config_cls(**values)


def kill_cli_run_after_checkpoint(cli_args: list[str], run_dir, max_step: int) -> int:
    """Start `latentreason <cli_args>`, SIGKILL it once a checkpoint of a random step in [1, max_step]
    exists (mid-step or mid-save), check it died unfinished; returns the chosen step."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from latentreason.training.checkpoint import list_checkpoints

    # SystemRandom: training seeds the `random` module, which would pick the same step every time.
    kill_after = random.SystemRandom().randint(1, max_step)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentreason.cli", *cli_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if run_dir.is_dir() and any(int(p.name.split("-")[1]) >= kill_after for p in list_checkpoints(run_dir)):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (kill_after, err.decode()[-2000:])
    assert not (run_dir / "final").exists(), f"the run finished before the kill after step {kill_after}"
    assert int(list_checkpoints(run_dir)[-1].name.split("-")[1]) >= kill_after
    return kill_after
