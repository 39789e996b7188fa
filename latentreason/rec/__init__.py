"""Sequential recommendation with latent reasoning: from a user's interaction history, rank every item for
the next one. SASRec's causal encoder gives the initial reasoning state, ReaRec-style depth feeds it back
for T latent steps, PLR (Parallel Latent Reasoning, arXiv 2601.03153) adds M parallel streams
(docs/recommendation.md)."""
