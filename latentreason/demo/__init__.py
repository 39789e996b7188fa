"""`latentreason demo`, the embedded default job (see demo/run.py)."""

from latentreason.demo.run import run_demo

__all__ = ["run_demo"]
