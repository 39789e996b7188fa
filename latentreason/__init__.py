"""latentreason: train, run and evaluate language models that reason in continuous latent space."""

__version__ = "0.1.0"
