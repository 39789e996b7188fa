"""Rebuild the method a saved model was trained with, from the config stored in its latentreason.json."""

from __future__ import annotations

import dataclasses

from latentreason.config import from_dict
from latentreason.methods.base import Method, get_method


def method_for(lm, source: str, method_name: str | None = None, **overrides) -> Method:
    """The saved model's method (or `method_name`) with the settings it was trained with, then `overrides`."""
    method_name = method_name or lm.meta.get("method") or "cot"
    method_cls = get_method(method_name)
    # The solver settings the model was trained with (latents per step, stages, ...), when saved.
    saved = lm.meta.get("method_config", {}) if method_name == lm.meta.get("method") else {}
    known = {f.name for f in dataclasses.fields(method_cls.config_cls)}
    config = from_dict(method_cls.config_cls, {k: v for k, v in saved.items() if k in known}, f"{source} config")
    return method_cls(dataclasses.replace(config, **overrides))
