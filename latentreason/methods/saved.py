"""Rebuild the method a saved model was trained with, from the config stored in its latentreason.json."""

from __future__ import annotations

import dataclasses

from latentreason.config import from_dict
from latentreason.methods.base import Method, get_method
from latentreason.model.device import default_device
from latentreason.model.latent_lm import LatentLM


def method_for(lm, source: str, method_name: str | None = None, **overrides) -> Method:
    """The saved model's method (or `method_name`) with the settings it was trained with, then `overrides`."""
    method_name = method_name or lm.meta.get("method") or "cot"
    method_cls = get_method(method_name)
    # The solver settings the model was trained with (latents per step, stages, ...), when saved.
    saved = lm.meta.get("method_config", {}) if method_name == lm.meta.get("method") else {}
    known = {f.name for f in dataclasses.fields(method_cls.config_cls)}
    config = from_dict(method_cls.config_cls, {k: v for k, v in saved.items() if k in known}, f"{source} config")
    return method_cls(dataclasses.replace(config, **overrides))


def load_trained(model_dir: str, method_name: str | None, max_new_tokens: int, device: str | None = None, dtype=None):
    """A saved model in eval mode and its method, rebuilt with the config it was trained with."""
    lm = LatentLM.from_pretrained(model_dir, dtype)
    lm.to(default_device(device)).eval()
    return lm, method_for(lm, model_dir, method_name, max_new_tokens=max_new_tokens)
