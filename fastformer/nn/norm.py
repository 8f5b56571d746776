"""``LayerNorm`` and ``RMSNorm`` modules on fastformer's kernels.

They subclass ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``: same constructor arguments, same
parameter names, so a state_dict saved from either loads unchanged, and an instance can replace
its torch counterpart in place. ``forward`` takes an optional ``residual`` and then returns
``(norm(x + residual), x + residual)`` from one fused pass (the pre-LN block).
"""

from __future__ import annotations

import torch

from fastformer.functional import layer_norm, rms_norm


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` whose forward runs fastformer's fused kernel."""

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, residual)


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` whose forward runs fastformer's fused kernel."""

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None):
        return rms_norm(input, self.normalized_shape, self.weight, self.eps, residual)
