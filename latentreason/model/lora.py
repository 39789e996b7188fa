"""LoRA adapters through peft (optional: `pip install 'latentreason[lora]'`).

Adapters are injected into the model in place (`inject_adapter_in_model`), so `lm.model` keeps its
class and every engine call is unchanged; peft freezes the base weights (embeddings included), so only
the adapters, the rows of the latent special tokens (`trainable_tokens`: they start as copies of one
token and would otherwise stay identical) and the method's heads train. A checkpoint holds merged
weights (W + BA, the trained rows in place): a plain model that loads without peft; resuming a LoRA
run starts fresh adapters on the merged weights.
"""

from __future__ import annotations

import torch
from torch import nn

from latentreason.errors import ConfigError


def has_lora(model: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in model.named_parameters())


def add_lora(
    model: nn.Module, r: int, alpha: int, dropout: float, target_modules: str, trainable_tokens: tuple[int, ...] = ()
) -> None:
    """Inject rank-r adapters into `target_modules` ('all-linear' or comma-separated names) and make the
    embedding rows of `trainable_tokens` trainable (a tied LM head follows them; an untied one keeps its
    rows frozen); idempotent."""
    if has_lora(model):
        return
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ConfigError("lora_r > 0 needs peft: pip install 'latentreason[lora]'") from err
    targets = target_modules if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    try:
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=targets,
            trainable_token_indices=sorted(set(trainable_tokens)) or None,
        )
        inject_adapter_in_model(config, model)
    except ValueError as err:  # peft names the target modules it could not find
        raise ConfigError(f"field 'lora_target_modules': {err}") from err


@torch.no_grad()
def merged_state_dict(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """`weights` (whole tensors under `model`'s names: its state_dict, or one gathered from FSDP shards) with
    every adapter folded in, under the plain model's names (None without LoRA). The adapters' settings
    (scaling, layout, token indices) come from `model`'s peft layers."""
    if not has_lora(model):
        return None
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens import TrainableTokensLayer
    from peft.utils.other import transpose

    state = {}
    for key, value in weights.items():
        if ".lora_" not in key and ".trainable_tokens_" not in key:
            state[key.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")] = value
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            merged = weights[f"{name}.base_layer.weight"]
            for adapter in module.active_adapters:  # W + scaling x BA, as peft merges
                a, b = weights[f"{name}.lora_A.{adapter}.weight"], weights[f"{name}.lora_B.{adapter}.weight"]
                delta = transpose(b.float() @ a.float(), module.fan_in_fan_out) * module.scaling[adapter]
                merged = merged + delta.to(merged)
            state[f"{name}.weight"] = merged
        elif isinstance(module, TrainableTokensLayer):  # name: <embedding>.token_adapter; its rows are replaced
            merged = weights[f"{name}.base_layer.weight"]
            for adapter in module.active_adapters:
                rows = torch.tensor(module.token_indices[adapter], device=merged.device)
                merged = merged.index_copy(0, rows, weights[f"{name}.trainable_tokens_delta.{adapter}"].to(merged))
            state[f"{name.removesuffix('.token_adapter')}.weight"] = merged
    return state
