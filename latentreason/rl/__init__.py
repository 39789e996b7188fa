"""Reinforcement learning over latent plans (GRPO for ATP-Latent and CoLaR)."""
