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
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's weights with every adapter folded in, under the plain model's names (None without LoRA)."""
    if not has_lora(model):
        return None
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens import TrainableTokensLayer

    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" not in key and ".trainable_tokens_" not in key:
            state[key.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")] = value
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
            state[f"{name}.weight"] = module.base_layer.weight + delta
        elif isinstance(module, TrainableTokensLayer):  # name: <embedding>.token_adapter
            merged = module.get_merged_weights(module.active_adapters)
            state[f"{name.removesuffix('.token_adapter')}.weight"] = merged
    return state
