"""System-1.5's training terms as pure functions: state matching (both stages) and the router-adapter
supervision of stage 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TINY = 1e-6  # floor of a norm or std we divide by


def wide(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32 at least (bf16 states measured in float32, float64 kept)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def state_match_loss(student: torch.Tensor, teacher: torch.Tensor, divide_std: bool = True) -> torch.Tensor:
    """SmoothL1 between matched states [M, d] and the teacher's (detached), divided by the std of the teacher's
    states (CODI's scale-free form); 0 (attached) when nothing is matched."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    target = wide(teacher.detach())
    loss = F.smooth_l1_loss(wide(student), target)
    return loss / target.std().clamp(min=TINY) if divide_std else loss


def relative_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||prediction - target|| / ||target|| over the last dimension. [..., d] -> [...]"""
    return (wide(prediction) - wide(target)).norm(dim=-1) / wide(target).norm(dim=-1).clamp(min=TINY)


def shortcut_supervision(router, shortcut, inputs, targets, mask, tolerance: float):
    """(adapter loss, router loss, share of positions whose target is 1) for one router-adapter pair.

    inputs: [..., d] the states the router reads on the full path (detached); shortcut: where taking the
    shortcut from them lands (the adapter, then for a depth exit the final norm); targets: [..., d] where the
    full path lands (detached); mask: [...] bool, the positions that count. The adapter is trained towards the
    target (mean squared relative error); the router's target is 1 where the shortcut lands within `tolerance`
    (relative error) of the target (binary cross-entropy on its logit).
    """
    inputs, targets = inputs.detach()[mask], targets.detach()[mask]  # [M, d]
    prediction = shortcut(inputs)  # [M, d]
    if inputs.shape[0] == 0:
        zero = prediction.sum() * 0.0 + router.logit(inputs).sum() * 0.0
        return zero, zero, 0.0
    error = relative_error(prediction, targets)  # [M]
    logit = wide(router.logit(inputs))  # [M]
    label = (error < tolerance).to(logit.dtype)  # [M]
    router_loss = F.binary_cross_entropy_with_logits(logit, label)
    return error.pow(2).mean(), router_loss, float(label.mean())
