"""The one SFT training loop every method reuses, its config and checkpoints."""
