"""System-1.5's depth shortcut: forward hooks on every decoder layer that act at the positions a caller arms.

For an armed position with input h_l at layer l (router w_l = R_l(h_l), adapter A_l, full layer F_l):
    full   h_{l+1} = F_l(h_l)                                     (the hooks only record h_l)
    mix    h_{l+1} = w_l * A_l(h_l) + (1 - w_l) * F_l(h_l)         (training: every layer, soft)
    exit   the first layer with w_l > threshold gives h_{l+1} = A_l(h_l) and the position exits: every later
           layer passes its state on unchanged (h_{m+1} = h_m), so the final norm reads A_l(h_l); positions
           armed as `passed` exit before layer 0 (every layer passes their input on: a skipped latent step)
In `exit` the skipped layers still see the exited state as their input, so their keys and values at that
position (what later positions attend to) are computed from the exit state: CALM's state propagation. The
layer itself still runs over the whole batch (its output is discarded there), so this code saves no time;
`ShortcutCall.exit_layer` counts what a kernel that skips the position would save. threshold >= 1 never
exits (w <= 1): the calls are exactly the plain model's.

Arm before each call (`arm(where, passed)`, [b, L] bool over the call's new positions); the hooks disarm after the
last layer, so calls nobody armed (prompts, answers, a teacher) pass untouched. Hooks live inside `attached`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from latentreason.engine.decoder_layers import decoder_layers
from latentreason.errors import ConfigError, UserError

MODES = ("full", "mix", "exit")


@dataclass
class ShortcutCall:
    """What one armed call did at its n armed positions (rows[i], cols[i]), in the call's batch order."""

    rows: torch.Tensor  # [n]
    cols: torch.Tensor  # [n]
    exit_layer: torch.Tensor  # [n] layer each position exited at (num_layers: it did not exit; passed: 0)
    inputs: list = field(default_factory=list)  # full: [num_layers] of [n, d] each layer's input (detached)
    weights: list = field(default_factory=list)  # mix: [num_layers] of [n] router weights (detached)


class DepthShortcut:
    def __init__(self, lm, heads, mode: str, threshold: float = 1.0):
        if mode not in MODES:
            raise ConfigError(f"depth shortcut mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self.layers, self.heads, self.mode, self.threshold = decoder_layers(lm), heads, mode, threshold
        if len(self.layers) != len(heads.routers):
            raise ConfigError(
                f"shortcut head: {len(heads.routers)} routers for a model with {len(self.layers)} decoder layers"
            )
        self.where: torch.Tensor | None = None  # [b, L] bool: the next call's armed positions
        self.passed: torch.Tensor | None = None  # [b, L] bool: those of them that skip every layer
        self.current: ShortcutCall | None = None
        self.calls: list[ShortcutCall] = []  # every armed call so far, in order

    def arm(self, where: torch.Tensor, passed: torch.Tensor | None = None) -> None:
        """The next backbone call takes the shortcut at `where` [b, L] (its new positions); in `exit` mode the
        positions `passed` [b, L] (within `where`) go through every layer unchanged."""
        self.where, self.passed = where, passed

    @contextmanager
    def attached(self) -> Iterator[DepthShortcut]:
        handles = [layer.register_forward_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.where = self.passed = self.current = None

    def _hook(self, index: int):
        last = len(self.layers) - 1

        def hook(module, args, kwargs, output):
            if self.where is None:
                return None
            hidden_in = args[0] if args else kwargs["hidden_states"]  # [b, L, d]
            hidden_out = output[0] if isinstance(output, tuple) else output  # [b, L, d]
            if index == 0:
                rows, cols = self.where.nonzero(as_tuple=True)  # [n] each
                exit_layer = torch.full_like(rows, len(self.layers))
                if self.passed is not None:
                    exit_layer[self.passed[rows, cols]] = 0  # exited before layer 0: every layer passes it on
                self.current = ShortcutCall(rows, cols, exit_layer)
            call = self.current
            x, y = hidden_in[call.rows, call.cols], hidden_out[call.rows, call.cols]  # [n, d] each
            new = self._layer(index, x, y, call)
            if new is not None:
                hidden_out = hidden_out.index_put((call.rows, call.cols), new.to(hidden_out.dtype))
            if index == last:
                self.calls.append(call)
                self.where = self.passed = self.current = None
            return (hidden_out, *output[1:]) if isinstance(output, tuple) else hidden_out

        return hook

    def _layer(self, index: int, x: torch.Tensor, y: torch.Tensor, call: ShortcutCall) -> torch.Tensor | None:
        """The new output [n, d] at the armed positions of layer `index` (None: the layer's own)."""
        router, adapter = self.heads.routers[index], self.heads.adapters[index]
        if self.mode == "full":
            call.inputs.append(x.detach())
            return None
        w = router(x)  # [n]
        if self.mode == "mix":
            call.weights.append(w.detach())
            return w[:, None] * adapter(x) + (1 - w[:, None]) * y
        exited = call.exit_layer < len(self.layers)  # [n] exited at an earlier layer (or passed): carry the state on
        fire = ~exited & (w > self.threshold)  # [n]
        call.exit_layer[fire] = index
        return torch.where(exited[:, None], x, torch.where(fire[:, None], adapter(x), y))


def frozen_final_norm(lm):
    """The backbone's final norm (`norm` in Llama/Qwen, `ln_f` in GPT-2) as a function whose weights get no
    gradient: where an exit state lands, as the LM head and the next thought read it."""
    norm = next((getattr(lm.backbone, name) for name in ("norm", "ln_f") if hasattr(lm.backbone, name)), None)
    if not isinstance(norm, nn.Module):
        raise UserError(f"{type(lm.backbone).__name__}: no final norm found (a module named 'norm' or 'ln_f')")
    weights = {name: param.detach() for name, param in norm.named_parameters()}
    return lambda hidden: torch.func.functional_call(norm, weights, (hidden,))
