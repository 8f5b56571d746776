"""Norm modules that take over the Parameters of a Hugging Face model's norms.

Each class builds from an existing module with ``from_module(module)`` and shares its
Parameter objects (nothing copied; state_dict keys unchanged: ``weight`` and ``bias``):

- ``LayerNorm``: for ``torch.nn.LayerNorm`` (BERT, RoBERTa, DistilBERT, ALBERT, GPT-2, GPT-NeoX,
  BART). torch's semantics.
- ``LlamaRMSNorm``: for LLaMA's RMSNorm, ``weight * (x * rsqrt(mean(x**2) + eps)).to(x.dtype)``
  with the statistics in fp32. With the weight in x's dtype this is one fused kernel (one
  rounding where eager rounds twice); with another weight dtype the kernel normalises in x's
  dtype and the product is eager's, so the result dtype follows eager's type promotion.
- ``T5RMSNorm``: for ``T5LayerNorm`` (no mean subtraction, no bias), whose half-precision rule
  differs from LLaMA's: the normalised value is cast to the weight's dtype only when the weight
  is fp16/bf16, so an fp32 weight (``_keep_in_fp32_modules``) with fp16 activations gives fp32.
  Same dtypes: one fused kernel; fp32 weight with fp16/bf16 x: the kernel on x upcast (what eager
  computes); any other mix: eager's formula.
- ``RMSNorm``: for ``torch.nn.RMSNorm``.

The kernels take fp16, bf16 and fp32. Other dtypes (a model cast to float64 after optimize) and
calls under ``torch.autocast`` (which the kernels do not apply) run eager's formula, so the
module keeps its meaning everywhere, with an EagerFallbackWarning once per module class and
reason.
"""

from __future__ import annotations

import torch

from fastformer.functional import _fallback, rms_norm
from fastformer.integrations.attention import KERNEL_DTYPES
from fastformer.nn import norm as ffnn

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _eager_reason(x: torch.Tensor, weights) -> str | None:
    if x.dtype not in KERNEL_DTYPES:
        return f"dtype {x.dtype}"
    if torch.is_autocast_enabled(x.device.type):
        return "torch.autocast (the kernels do not apply it)"
    for weight in weights:
        if weight.dtype != x.dtype:
            return f"a {weight.dtype} weight with a {x.dtype} input"
    return None


def kernel_can_take(x: torch.Tensor, module: torch.nn.Module, *weights: torch.Tensor) -> bool:
    """Whether fastformer's kernels compute what eager would for this input (and these weights);
    if not, ``module`` runs eager's formula and says so once per reason (EagerFallbackWarning)."""
    reason = _eager_reason(x, weights)
    if reason is None:
        return True
    _fallback.warn_eager(f"fastformer {type(module).__name__}", reason)
    return False


def _adopt(new: torch.nn.Module, old: torch.nn.Module, names=("weight", "bias")) -> torch.nn.Module:
    """Give ``new`` the Parameter objects (or None) of ``old`` under the same names."""
    for name in names:
        param = getattr(old, name, None)
        if name in new._parameters or param is not None:
            new.register_parameter(name, param)
    new.train(old.training)
    return new


def _rsqrt_fp32(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``rsqrt(mean(x**2) + eps)`` over the last dim, computed in fp32 (as both families do)."""
    return torch.rsqrt(x.to(torch.float32).pow(2).mean(-1, keepdim=True) + eps)


class LayerNorm(ffnn.LayerNorm):
    """``torch.nn.LayerNorm`` on fastformer's kernel, built around an existing module's
    Parameters."""

    @classmethod
    def from_module(cls, module: torch.nn.LayerNorm) -> LayerNorm:
        new = cls(
            module.normalized_shape,
            eps=module.eps,
            elementwise_affine=module.elementwise_affine,
            bias=module.bias is not None,
            device="meta",
        )
        return _adopt(new, module)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None and not kernel_can_take(input, self):
            return torch.nn.functional.layer_norm(
                input, self.normalized_shape, self.weight, self.bias, self.eps
            )
        return super().forward(input, residual)


class RMSNorm(ffnn.RMSNorm):
    """``torch.nn.RMSNorm`` on fastformer's kernel, built around an existing module's
    Parameters."""

    @classmethod
    def from_module(cls, module: torch.nn.RMSNorm) -> RMSNorm:
        new = cls(
            module.normalized_shape,
            eps=module.eps,
            elementwise_affine=module.elementwise_affine,
            device="meta",
        )
        return _adopt(new, module, names=("weight",))

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None and not kernel_can_take(input, self):
            return torch.nn.functional.rms_norm(input, self.normalized_shape, self.weight, self.eps)
        return super().forward(input, residual)


class _HFRMSNorm(ffnn.RMSNorm):
    """An RMSNorm over the last dim whose eps comes from a Hugging Face ``variance_epsilon``."""

    @classmethod
    def from_module(cls, module: torch.nn.Module):
        weight = module.weight
        new = cls(weight.shape[-1], eps=float(module.variance_epsilon), device="meta")
        return _adopt(new, module, names=("weight",))

    @property
    def variance_epsilon(self) -> float:
        """The Hugging Face name of ``eps`` (read by code written for the original module)."""
        return self.eps


class LlamaRMSNorm(_HFRMSNorm):
    """LLaMA's RMSNorm (see the module docstring for the dtype rule)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if not kernel_can_take(input, self):
            normed = input.to(torch.float32) * _rsqrt_fp32(input, self.eps)
            return weight * normed.to(input.dtype)
        if weight.dtype == input.dtype:
            return rms_norm(input, self.normalized_shape, weight, self.eps)
        return weight * rms_norm(input, self.normalized_shape, None, self.eps)


class T5RMSNorm(_HFRMSNorm):
    """T5's LayerNorm (see the module docstring for the dtype rule)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if kernel_can_take(input, self):
            if weight.dtype == input.dtype:
                return rms_norm(input, self.normalized_shape, weight, self.eps)
            if weight.dtype == torch.float32 and input.dtype in HALF_DTYPES:
                return rms_norm(input.float(), self.normalized_shape, weight, self.eps)
        hidden = input * _rsqrt_fp32(input, self.eps)
        if weight.dtype in HALF_DTYPES:
            hidden = hidden.to(weight.dtype)
        return weight * hidden
