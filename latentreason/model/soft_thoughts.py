"""`SoftThoughtLM`: a frozen main model that reads soft thoughts written by a frozen assistant model.

SoftCoT (arXiv 2502.12134): the assistant reads the question followed by N placeholder slots; its last hidden
states there, mapped by a trained Linear into the main model's input space, fill N slots of the main model's
prompt. SoftCoT++ (arXiv 2505.11484): K trained initial tokens, one per thinking path, fill the assistant's
slots instead of the placeholder, so one question gets K different thought sets (path k of row i is row
i x K + k). The two models may differ in tokenizer and width; only the projection and the initial tokens train.

Changed from the reference code: the assistant runs with gradients whenever initial tokens train (the
reference runs it under no_grad, so its initial tokens never receive a gradient), and the frozen models stay
in eval mode while training.

Saved as `latentreason.json` (where the frozen models are: a name `load_pretrained` resolves, or a directory
inside the checkpoint for a model built from scratch, with their widths and vocabularies, checked on load)
plus `soft_thoughts.safetensors`, the trained tensors. The frozen weights are not copied.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from latentreason.engine.batch import positions_from_mask
from latentreason.errors import UserError
from latentreason.model.latent_lm import CHECKPOINT_KINDS, META_FILE, SOFT_THOUGHTS, LatentLM, soft_thoughts_dir

WEIGHTS_FILE = "soft_thoughts.safetensors"
ROLES = ("main", "assistant")
# The source of a model built from scratch for the run: saved inside the checkpoint, in a directory named by role.
BUILT = "built"


def hidden_size(model) -> int:
    return model.get_input_embeddings().weight.shape[1]


class SoftThoughtLM(LatentLM):
    """The main model (`model`, `tokenizer`: what the engines run) plus the assistant, the projection and,
    for SoftCoT++, `num_initial_tokens` trained initial tokens (K; 0 for SoftCoT).

    main, assistant: LatentLMs without latent tokens (they may be one object: one model in both roles);
    sources: {"main": ..., "assistant": ...}, a name `load_pretrained` resolves or BUILT.
    """

    def __init__(self, main: LatentLM, assistant: LatentLM, sources: dict[str, str], num_initial_tokens: int = 0):
        super().__init__(main.model, main.tokenizer, latent_tokens=False)
        self.assistant = assistant.model
        self.assistant_tokenizer = assistant.tokenizer
        self.sources = dict(sources)
        for param in [*self.model.parameters(), *self.assistant.parameters()]:
            param.requires_grad_(False)
        d_assistant, d_main = hidden_size(self.assistant), hidden_size(self.model)
        dtype = self.model.get_input_embeddings().weight.dtype
        self.projection = nn.Linear(d_assistant, d_main, dtype=dtype, device=self.device)
        with torch.no_grad():
            # Thoughts start at the size of the main model's token embeddings (for unit-RMS hidden states).
            scale = self.embed.weight.float().pow(2).mean().sqrt() / d_assistant**0.5
            self.projection.weight.normal_(0.0, float(scale))
            self.projection.bias.zero_()
        self.initial_tokens = None
        if num_initial_tokens:
            # Distinct starting points: K vocabulary rows spread over the assistant's embedding matrix.
            rows = self.assistant.get_input_embeddings().weight
            picked = torch.linspace(0, rows.shape[0] - 1, num_initial_tokens).long()
            self.initial_tokens = nn.Parameter(rows[picked].detach().clone())  # [K, d_assistant]

    @property
    def num_paths(self) -> int:
        """Thought sets per question: 1 for SoftCoT, K for SoftCoT++."""
        return 1 if self.initial_tokens is None else self.initial_tokens.shape[0]

    @property
    def assistant_pad_id(self) -> int:
        return self.assistant_tokenizer.pad_token_id

    def train(self, mode: bool = True):
        """The frozen models stay in eval mode (no dropout in them): only the trained parts change mode."""
        super().train(mode)
        self.model.eval()
        self.assistant.eval()
        return self

    # --- the thoughts ---------------------------------------------------------------------------
    def thoughts(self, assistant_ids: torch.Tensor, assistant_mask: torch.Tensor, num_thoughts: int, paths: int = 1):
        """Projected soft thoughts [R x paths, N, d_main] (row i x paths + k: path k of prompt i).

        assistant_ids, assistant_mask: [R, La] left-padded assistant prompts whose last `num_thoughts` positions
        are the slots. With initial tokens, path k's slots hold initial token k; without, the placeholder ids.
        """
        if paths > self.num_paths:
            raise UserError(f"{paths} thinking paths asked for; this model was trained with {self.num_paths}")
        embeds = self.assistant.get_input_embeddings()(assistant_ids).repeat_interleave(paths, 0)  # [R*P, La, da]
        mask = assistant_mask.repeat_interleave(paths, 0)  # [R*P, La]
        rows = embeds.shape[0]
        if self.initial_tokens is not None:
            starts = self.initial_tokens[:paths].repeat(rows // paths, 1)  # [R*P, da]: path k of every prompt
            slots = starts[:, None].expand(-1, num_thoughts, -1)  # [R*P, N, da]
            embeds = torch.cat([embeds[:, :-num_thoughts], slots.to(embeds.dtype)], dim=1)
        # Without initial tokens nothing before the projection trains: no graph through the assistant.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.initial_tokens is not None):
            hidden = self.assistant.base_model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask)
            ).last_hidden_state[:, -num_thoughts:]  # [R*P, N, da]
        return self.projection(hidden)  # [R*P, N, d_main]

    def with_thoughts(self, input_ids: torch.Tensor, slot_at: torch.Tensor, thoughts: torch.Tensor) -> torch.Tensor:
        """The main model's input embeddings [R x P, L, d] of `input_ids` [R, L], each row repeated P times
        (P = thoughts rows / R) with its thoughts [R x P, N, d] written at slot_at [R] .. slot_at + N."""
        repeat = thoughts.shape[0] // input_ids.shape[0]
        embeds = self.embed(input_ids).repeat_interleave(repeat, 0)  # [R*P, L, d]
        n = thoughts.shape[1]
        cols = slot_at.repeat_interleave(repeat)[:, None] + torch.arange(n, device=slot_at.device)  # [R*P, N]
        rows = torch.arange(embeds.shape[0], device=cols.device)[:, None].expand_as(cols)  # [R*P, N]
        return embeds.index_put((rows, cols), thoughts.to(embeds.dtype))  # out of place: keeps the graph

    # --- persistence ----------------------------------------------------------------------------
    def trained_tensors(self, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
        state = self.state_dict() if state_dict is None else state_dict
        names = ["projection.weight", "projection.bias"]
        if self.initial_tokens is not None:
            names.append("initial_tokens")
        return {name: state[name].detach().cpu().contiguous() for name in names}

    def save_pretrained(self, directory: str | Path, state_dict: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        frozen = {}
        for role, model, tokenizer in (
            ("main", self.model, self.tokenizer),
            ("assistant", self.assistant, self.assistant_tokenizer),
        ):
            if self.sources[role] == BUILT:  # no other copy exists: it goes with the checkpoint
                LatentLM(model, tokenizer, latent_tokens=False).save_pretrained(directory / role)
            vocab = model.get_input_embeddings().weight.shape[0]
            frozen[role] = {"source": self.sources[role], "hidden_size": hidden_size(model), "vocab_size": vocab}
        save_file(self.trained_tensors(state_dict), str(directory / WEIGHTS_FILE))
        initial_tokens = 0 if self.initial_tokens is None else self.num_paths  # 0: SoftCoT's placeholder slots
        meta = {"format": 1, "special_tokens": [], SOFT_THOUGHTS: {**frozen, "initial_tokens": initial_tokens}}
        (directory / META_FILE).write_text(json.dumps({**meta, **self.meta}, indent=2))

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype | None = None) -> SoftThoughtLM:
        """A directory written by `save_pretrained`, its frozen models found where it says."""
        from latentreason.model.pretrained import load_pretrained

        directory = Path(directory)
        saved = json.loads((directory / META_FILE).read_text())
        spec = saved[SOFT_THOUGHTS]
        loaded: dict[str, LatentLM] = {}  # by source: one model named in both roles is loaded once
        models = {}
        for role in ROLES:
            entry = spec[role]
            source = str(directory / role) if entry["source"] == BUILT else entry["source"]
            if source not in loaded:
                loaded[source] = load_pretrained(source, dtype)
            models[role] = loaded[source]
            model = models[role].model
            found = {"hidden_size": hidden_size(model), "vocab_size": model.get_input_embeddings().weight.shape[0]}
            expected = {key: entry[key] for key in found}
            if found != expected:
                raise UserError(
                    f"{directory / META_FILE}: the {role} model {source} has {found}, but the soft thoughts were "
                    f"trained with {expected}"
                )
        lm = cls(models["main"], models["assistant"], {r: spec[r]["source"] for r in ROLES}, spec["initial_tokens"])
        lm.load_trained(directory / WEIGHTS_FILE)
        lm.meta = {k: v for k, v in saved.items() if k not in ("format", "special_tokens", SOFT_THOUGHTS)}
        return lm.eval()

    def load_trained(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(f"{path}: missing (the trained projection of a soft-thought model)")
        tensors = load_file(str(path))
        own = self.trained_tensors()
        if tensors.keys() != own.keys() or any(tensors[k].shape != own[k].shape for k in own):
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            expected = {k: tuple(v.shape) for k, v in own.items()}
            raise UserError(f"{path}: holds {shapes}, expected {expected}")
        with torch.no_grad():
            self.projection.weight.copy_(tensors["projection.weight"])
            self.projection.bias.copy_(tensors["projection.bias"])
            if self.initial_tokens is not None:
                self.initial_tokens.copy_(tensors["initial_tokens"])


CHECKPOINT_KINDS.append((soft_thoughts_dir, SoftThoughtLM.load))
