"""Model wrapper, tiny offline models and tokenizers, the real SmolLM2 loader."""

# Registers the soft-thought checkpoints with LatentLM.from_pretrained (latent_lm.CHECKPOINT_KINDS).
from latentreason.model import soft_thoughts  # noqa: E402,F401
