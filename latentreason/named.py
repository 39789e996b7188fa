"""Classes chosen by name (training methods, decoders): a registry that names the choices when one is unknown."""

from __future__ import annotations

from latentreason.errors import ConfigError


class Registry(dict):
    """name -> class; `register(name)` is a class decorator that also sets `cls.name`."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        def wrap(cls):
            cls.name = name
            self[name] = cls
            return cls

        return wrap

    def get_class(self, name: str):
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self))}")
        return self[name]
