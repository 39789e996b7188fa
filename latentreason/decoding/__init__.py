"""Training-free decoders on the step engine, chosen by name (`get_decoder("soft-thinking")`)."""

from latentreason.decoding import fractional as _fractional  # noqa: F401  (registers fractional)
from latentreason.decoding import hybrid as _hybrid  # noqa: F401  (registers hrpo)
from latentreason.decoding import latentmas as _latentmas  # noqa: F401  (registers latentmas)
from latentreason.decoding import latentseek as _latentseek  # noqa: F401  (registers latentseek)
from latentreason.decoding import soft_thinking as _soft_thinking  # noqa: F401  (registers soft-thinking)
from latentreason.decoding import swireasoning as _swireasoning  # noqa: F401  (registers swireasoning)
from latentreason.decoding import text as _text  # noqa: F401  (registers text)
from latentreason.decoding.base import DECODERS, DecodeContext, Decoder, Generation, decoder_from_args, get_decoder

__all__ = ["DECODERS", "DecodeContext", "Decoder", "Generation", "decoder_from_args", "get_decoder"]
