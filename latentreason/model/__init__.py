"""Model wrapper, tiny offline models and tokenizers, the real SmolLM2 loader."""
