"""Log-probs of chosen tokens in chunks: equal to the full log-softmax, with the same gradients, and with
gradients on no chunk's logits is kept for the backward pass."""

from __future__ import annotations

import torch

from latentreason.engine.loss import chosen_logprobs


def setup(seed=0):
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(8, 50, bias=False, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen, dtype=torch.float64))
    hidden = torch.randn(3, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True)  # [B, T, d]
    tokens = torch.randint(0, 50, (3, 7), generator=gen)  # [B, T]
    mask = torch.arange(7)[None] < torch.tensor([7, 2, 5])[:, None]  # [B, T] rows of different lengths
    return head, hidden, tokens, mask


def full(head, hidden, tokens, mask, temperature):
    logp = (head(hidden).float() / temperature).log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    return torch.where(mask, logp, torch.zeros_like(logp))


def test_chunks_equal_the_full_log_softmax_with_the_same_gradients():
    head, hidden, tokens, mask = setup()
    expected = full(head, hidden, tokens, mask, 0.7)
    (grad_expected,) = torch.autograd.grad(expected.sum(), hidden)
    for chunk in (1, 3, 100):
        got = chosen_logprobs(head, hidden, tokens, mask, 0.7, chunk=chunk)
        assert got.dtype == torch.float32 and (got[~mask] == 0).all()
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
        (grad,) = torch.autograd.grad(got.sum(), hidden)
        torch.testing.assert_close(grad, grad_expected, atol=1e-6, rtol=1e-6)


def test_backward_keeps_no_chunk_of_logits():
    head, hidden, tokens, mask = setup()
    vocab, saved = head.weight.shape[0], []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chosen_logprobs(head, hidden, tokens, mask, chunk=4)
    assert saved and max(saved) < 4 * vocab  # only the chunks' inputs, never their [4, V] logits
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        full(head, hidden, tokens, mask, 1.0)
    assert max(saved) >= 3 * 7 * vocab  # the check can fail: the plain path keeps [B, T, V]


def test_several_tokens_per_position_sum_their_log_probs_in_one_head_call():
    head, hidden, tokens, mask = setup()
    several = torch.stack([tokens, (tokens + 7) % 50, (tokens * 3) % 50], dim=-1)  # [B, T, 3]
    expected = sum(full(head, hidden, several[..., k], mask, 0.7) for k in range(3))
    calls = []
    handle = head.register_forward_hook(lambda module, args, out: calls.append(1))
    got = chosen_logprobs(head, hidden, several, mask, 0.7)
    handle.remove()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert len(calls) == 1 and (got[~mask] == 0).all()
