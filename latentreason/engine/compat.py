"""The one place that knows how each transformers release names the KV-cache argument of a model call.

transformers 5.24 renamed `past_key_values` to `cache` (the old name still works there, with a
FutureWarning on every call, and is announced for removal in 5.40). Older releases only know the old
name. We ask the model's own `forward` which name it takes, so a model class that was not migrated
(remote code, an older architecture) keeps working too.
"""

from __future__ import annotations

import inspect
from functools import cache

from torch import nn


@cache
def _cache_kwarg(forward_owner: type) -> str:
    parameters = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(module: nn.Module, cache) -> dict:
    """`{name: cache}` for `module(...)`, under the name that `module`'s forward takes."""
    return {_cache_kwarg(type(module)): cache}
