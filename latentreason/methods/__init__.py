"""Training methods, chosen by name through a registry (`get_method("cot")`)."""

from latentreason.methods.base import METHODS, Method, get_method, register_method
from latentreason.methods import sft as _sft  # noqa: F401  (registers cot, no-cot)

__all__ = ["METHODS", "Method", "get_method", "register_method"]
