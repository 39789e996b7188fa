"""`LatentLM`: any Hugging Face causal LM plus its tokenizer, with the latent-reasoning special tokens.

It is the single object every method trains and every solver runs. It owns the base model, the
tokenizer and the ids of the special tokens, and it saves/loads as a directory of safetensors
weights + tokenizer files + `latentreason.json`. A pretrained model evaluated as it is
(`latent_tokens=False`) keeps its vocabulary untouched and has no latent ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from latentreason.errors import UserError
from latentreason.model.lora import merged_state_dict

# Coconut's names; a model that already has them (a resumed checkpoint) keeps its trained rows.
BOT, LATENT, EOT = "<|start-latent|>", "<|latent|>", "<|end-latent|>"
SPECIAL_TOKENS = (BOT, LATENT, EOT)
META_FILE = "latentreason.json"
HEADS_FILE = "heads.safetensors"
# The latentreason.json key of a SoftCoT checkpoint: frozen models found elsewhere plus trained soft-thought parts.
SOFT_THOUGHTS = "soft_thoughts"
# Checkpoints of models built around LatentLM that load their own way, as (is_kind(directory), load(directory,
# dtype)); a module registers its kind on import (model/__init__.py imports them): the soft-thought models.
CHECKPOINT_KINDS: list = []


class LatentLM(nn.Module):
    """A causal LM with latent-reasoning tokens.

    `init_from`: the existing token whose embedding (and untied LM-head row) initialises every new
    special token; the Coconut reference uses '<<'. Its first sub-token is used if it splits.
    `latent_tokens=False` wraps a pretrained model as it is (no tokens added, no resize): reading
    `bot_id`, `latent_id` or `eot_id` then raises a `UserError`.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, init_from: str = "<<", latent_tokens: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.meta: dict = {}  # saved in latentreason.json: which method trained it, ...
        self.heads = nn.ModuleDict()  # method-specific modules (latent head, stop head, step decoder)
        self.head_specs: dict[str, dict] = {}  # name -> {"kind": ..., **kwargs}, to rebuild on load
        if tokenizer.pad_token_id is None:
            # Pads are always masked, so reusing EOS is safe and avoids growing the vocabulary.
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.latent_tokens = latent_tokens
        self._latent_ids: tuple[int, int, int] | None = None
        if latent_tokens:
            self._add_special_tokens(init_from)

    def _add_special_tokens(self, init_from: str) -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_special_tokens({"additional_special_tokens": missing})
        vocab_size = len(self.tokenizer)
        old_rows = self.model.get_input_embeddings().weight.shape[0]
        if vocab_size > old_rows:
            self.model.resize_token_embeddings(vocab_size, mean_resizing=False)
        source_ids = self.tokenizer(init_from, add_special_tokens=False)["input_ids"]
        if not source_ids:
            raise UserError(f"init_from={init_from!r} does not tokenize to any token")
        src = source_ids[0]
        new_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in missing]
        with torch.no_grad():
            for matrix in {self.model.get_input_embeddings().weight, self.model.get_output_embeddings().weight}:
                if matrix.shape[0] >= vocab_size:
                    matrix[new_ids] = matrix[src].clone()
        self._latent_ids = tuple(self.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS)

    # --- latent special tokens -----------------------------------------------------------------
    def _latent(self, index: int) -> int:
        if self._latent_ids is None:
            raise UserError(
                f"this model was loaded without the latent special tokens {', '.join(SPECIAL_TOKENS)} "
                "(a pretrained model evaluated as it is); a latent method needs a model trained here "
                "or a LatentLM built with latent_tokens=True"
            )
        return self._latent_ids[index]

    @property
    def bot_id(self) -> int:
        return self._latent(0)

    @property
    def latent_id(self) -> int:
        return self._latent(1)

    @property
    def eot_id(self) -> int:
        return self._latent(2)

    # --- pieces every engine uses -------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The transformer body (final norm included), returning hidden states, without the LM head."""
        return self.model.base_model

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def embed(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def add_head(self, name: str, kind: str, **kwargs) -> nn.Module:
        """Create (or return the existing) head `name`; its spec is saved so loading can rebuild it."""
        if name not in self.heads:
            from latentreason.model.heads import build_head

            head = build_head(kind, self.model, **kwargs)
            self.heads[name] = head.to(device=self.device, dtype=next(self.model.parameters()).dtype)
            self.head_specs[name] = {"kind": kind, **kwargs}
        return self.heads[name]

    # --- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """`state_dict`: the whole weights under this module's names, when the live ones are shards (FSDP)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = self._tied(self.state_dict() if state_dict is None else state_dict)
        # With LoRA adapters, the checkpoint is the merged plain model (loads without peft). Transformers
        # drops the tied duplicates itself.
        model_weights = merged_state_dict(self.model, _under(weights, "model.")) or _under(weights, "model.")
        self.model.save_pretrained(directory, safe_serialization=True, state_dict=model_weights)
        self.tokenizer.save_pretrained(directory)
        tokens = list(SPECIAL_TOKENS) if self.latent_tokens else []  # a model kept as it is stays so on load
        meta = {"format": 1, "special_tokens": tokens, "heads": self.head_specs, **self.meta}
        if self.heads:
            heads, aliases = _one_name_per_tensor(_under(weights, "heads."))  # tied weights inside a decoder copy
            save_file(heads, str(directory / HEADS_FILE), metadata=aliases or None)
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))

    def _tied(self, weights: dict) -> dict:
        """`weights` with all names of one live parameter (tied weights) holding one tensor, which tells the
        writers what is tied: whole tensors gathered from shards are separate copies."""
        first: dict[int, str] = {}
        tied = dict(weights)
        for name, param in self.named_parameters(remove_duplicate=False):
            kept = first.setdefault(id(param), name)
            if kept != name:
                tied[name] = tied[kept]
        return tied

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        dtype: torch.dtype | None = None,
        latent_tokens: bool | None = None,
        **model_kwargs,
    ) -> LatentLM:
        """Load a directory written by `save_pretrained`, any local Hugging Face model directory, or a hub id.

        `latent_tokens`: None keeps what a directory written here was saved with and adds the latent
        special tokens to any other model (to train it); False loads a model as it is (to evaluate a
        pretrained model), though tokens a directory was saved with keep their ids; True adds them.
        Weights come only from safetensors (`use_safetensors=True`); remote code is never run.
        """
        directory = Path(name_or_path)
        for is_kind, load in CHECKPOINT_KINDS:
            if is_kind(directory):
                return load(directory, dtype)
        if directory.exists() and not (directory / "config.json").is_file():
            raise UserError(f"{directory}: not a model directory (no config.json)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path, dtype=dtype, use_safetensors=True, trust_remote_code=False, **model_kwargs
            )
        except OSError as err:  # not found locally and not reachable on the hub
            raise UserError(f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}") from err
        meta_path = directory / META_FILE
        saved = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        saved_tokens = bool(saved.get("special_tokens"))
        if latent_tokens is None:  # as saved here; a model from elsewhere is being set up for training
            latent_tokens = saved_tokens if saved else True
        lm = cls(model, tokenizer, latent_tokens=latent_tokens or saved_tokens)
        if saved:
            lm.meta = {k: v for k, v in saved.items() if k not in ("format", "special_tokens", "heads")}
            specs = saved.get("heads", {})
            for name, spec in specs.items():
                spec = dict(spec)
                # Weights come from heads.safetensors: build the decoder without copying the base.
                extra = {"copy_weights": False} if spec["kind"] == "step_decoder" else {}
                lm.add_head(name, spec.pop("kind"), **spec, **extra)
                lm.head_specs[name].pop("copy_weights", None)
            if specs:
                missing, unexpected = load_model(lm.heads, str(directory / HEADS_FILE), strict=False)
                if missing or unexpected:
                    raise UserError(
                        f"{directory / HEADS_FILE}: head weights do not match "
                        f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
                    )
        return lm


def soft_thoughts_dir(directory: Path) -> bool:
    """Whether `directory` holds a soft-thought model (model/soft_thoughts.py) rather than a whole model."""
    meta = directory / META_FILE
    return meta.is_file() and SOFT_THOUGHTS in json.loads(meta.read_text())


def _under(mapping: dict, prefix: str) -> dict:
    """The entries named `prefix...`, renamed without it (values renamed too when they are names)."""
    part = {}
    for key, value in mapping.items():
        if key.startswith(prefix):
            part[key.removeprefix(prefix)] = value.removeprefix(prefix) if isinstance(value, str) else value
    return part


def _one_name_per_tensor(weights: dict) -> tuple[dict, dict[str, str]]:
    """(weights with one name per tensor, {dropped name: kept name}): safetensors stores no shared tensors.
    Like its `save_model`, keep the first name in sorted order and record the others as metadata."""
    names: dict[int, str] = {}
    aliases = {}
    for name in sorted(weights):
        kept = names.setdefault(id(weights[name]), name)
        if kept != name:
            aliases[name] = kept
    return {k: v.contiguous() for k, v in weights.items() if k not in aliases}, aliases
