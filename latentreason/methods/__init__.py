"""Training methods, chosen by name through a registry (`get_method("cot")`)."""

from latentreason.methods import atp as _atp  # noqa: F401  (registers atp)
from latentreason.methods import coconut as _coconut  # noqa: F401  (registers coconut)
from latentreason.methods import codi as _codi  # noqa: F401  (registers codi)
from latentreason.methods import colar as _colar  # noqa: F401  (registers colar)
from latentreason.methods import icot as _icot  # noqa: F401  (registers icot)
from latentreason.methods import kava as _kava  # noqa: F401  (registers kava)
from latentreason.methods import latent_sft as _latent_sft  # noqa: F401  (registers latent-sft)
from latentreason.methods import lta_thinker as _lta_thinker  # noqa: F401  (registers lta-thinker)
from latentreason.methods import pause as _pause  # noqa: F401  (registers pause)
from latentreason.methods import pccot as _pccot  # noqa: F401  (registers pccot)
from latentreason.methods import sft as _sft  # noqa: F401  (registers cot, no-cot)
from latentreason.methods import simcot as _simcot  # noqa: F401  (registers simcot)
from latentreason.methods import softcot as _softcot  # noqa: F401  (registers softcot, softcotpp)
from latentreason.methods import system15 as _system15  # noqa: F401  (registers system15)
from latentreason.methods import token_assorted as _token_assorted  # noqa: F401  (registers token-assorted)
from latentreason.methods.base import METHODS, Method, get_method, register_method

__all__ = ["METHODS", "Method", "get_method", "register_method"]
