"""Rotary embeddings of LLaMA and GPT-NeoX attention on ``fastformer.apply_rotary``.

transformers builds a cos/sin table per forward in the model's rotary module and rotates q and
k with module-level functions inside each attention module's forward; neither can be reached
through a registry. So the attention modules themselves get a forward that projects q, k, v as
the family does, rotates q and k with ``fastformer.apply_rotary`` (cos and sin computed in the
kernel from the positions and the rotary module's live ``inv_freq`` and ``attention_scaling``,
so dynamic and scaled RoPE types, which update ``inv_freq`` before the layers run, stay exact),
then calls the configured attention implementation as the family does.

Design: each attention module keeps its identity, children and hooks; only its class becomes a
subclass of its own class (``rotary_attention_class``), made once per class, whose forward is
the one here. ``isinstance`` still holds, so transformers' output recording (which finds
attention modules by class) still works, and the state_dict is untouched. The rotary module is
referenced from the attention module's ``__dict__`` (not as a submodule): ``deepcopy`` and
``.to()`` follow the model's own rotary module.

The new forward hands the call to the original one (eager rotary) when it cannot do exactly
the same: no ``position_ids`` among the arguments, the deprecated ``past_key_values`` name, a
dtype the kernels do not take, a rotary width that does not match ``inv_freq``. Limits: the
swapped class is made at run time, so pickling the whole module object is not supported (save
the state_dict, as transformers does).
"""

from __future__ import annotations

import functools
import numbers

import torch

from fastformer.functional import apply_rotary
from fastformer.integrations.attention import _eager_function
from fastformer.integrations.mlp import FastformerModule
from fastformer.integrations.norms import kernel_can_take

ROPE_ATTRIBUTE = "_fastformer_rotary"


def _rotary_of(module: torch.nn.Module):
    held = module.__dict__.get(ROPE_ATTRIBUTE)
    return held[0] if held else None


def attach_rotary(attention: torch.nn.Module, rotary: torch.nn.Module) -> None:
    """Let ``attention`` read ``rotary``'s ``inv_freq``; a tuple keeps it out of the submodules."""
    attention.__dict__[ROPE_ATTRIBUTE] = (rotary,)


def _can_rotate(module, hidden_states, kwargs, rotary_dim: int) -> bool:
    """Whether the fastformer rotation computes exactly what the family's forward would."""
    rotary = _rotary_of(module)
    position_ids = kwargs.get("position_ids")
    return (
        rotary is not None
        and 2 * rotary.inv_freq.numel() == rotary_dim
        and "past_key_values" not in kwargs
        and isinstance(position_ids, torch.Tensor)
        and position_ids.dim() == 2
        and isinstance(rotary.attention_scaling, numbers.Real)
        and kernel_can_take(hidden_states, module)
    )


def _rotate(module, q, k, position_ids):
    """q, k in (batch, seq, heads, head_dim) -> rotated, in the same layout."""
    rotary = _rotary_of(module)
    return apply_rotary(
        q,
        k,
        rotary.inv_freq.float(),
        position_ids=position_ids,
        attention_scaling=float(rotary.attention_scaling),
    )


def _attend(module, q, k, v, attention_mask, dropout, kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        module.config._attn_implementation, _eager_function(module)
    )
    return attention_interface(
        module, q, k, v, attention_mask,
        dropout=dropout if module.training else 0.0, scaling=module.scaling, **kwargs,
    )  # fmt: skip


class LlamaRotaryAttention(FastformerModule):
    """Forward of LLaMA's attention with the rotation on fastformer's kernel (a mixin: the
    class made by ``rotary_attention_class`` puts it before ``LlamaAttention``)."""

    def forward(
        self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs
    ):
        if not _can_rotate(self, hidden_states, kwargs, self.head_dim):
            return super().forward(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                cache=cache,
                **kwargs,
            )
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape)  # (B, S, H, D)
        k = self.k_proj(hidden_states).view(hidden_shape)  # (B, S, Hkv, D)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, Hkv, S, D)
        q, k = _rotate(self, q, k, kwargs["position_ids"])
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, S, D), (B, Hkv, S, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        out, weights = _attend(self, q, k, v, attention_mask, self.attention_dropout, kwargs)
        out = out.reshape(*input_shape, -1).contiguous()  # (B, S, H * D)
        return self.o_proj(out), weights


class GPTNeoXRotaryAttention(FastformerModule):
    """Forward of GPT-NeoX's attention (fused qkv, partial rotary) with the rotation on
    fastformer's kernel (a mixin, before ``GPTNeoXAttention``)."""

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        layer_past=None,
        position_embeddings=None,
        **kwargs,
    ):
        if not _can_rotate(self, hidden_states, kwargs, self.rotary_ndims):
            return super().forward(
                hidden_states,
                attention_mask=attention_mask,
                layer_past=layer_past,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        input_shape = hidden_states.shape[:-1]
        qkv = self.query_key_value(hidden_states).view(*input_shape, -1, 3 * self.head_size)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, S, H, D), views of qkv
        q, k = _rotate(self, q, k, kwargs["position_ids"])
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, D)
        if layer_past is not None:
            k, v = layer_past.update(k, v, self.layer_idx)
        out, weights = _attend(self, q, k, v, attention_mask, self.attention_dropout, kwargs)
        out = out.reshape(*input_shape, -1).contiguous()  # (B, S, H * D)
        return self.dense(out), weights


@functools.cache
def rotary_attention_class(original: type, mixin: type) -> type:
    """The subclass of ``original`` whose forward is ``mixin``'s (made once per pair)."""
    return type(
        f"Fastformer{original.__name__}",
        (mixin, original),
        {"__module__": __name__, "__doc__": mixin.__doc__},
    )


def swap_to_rotary(attention: torch.nn.Module, rotary: torch.nn.Module, mixin: type) -> str:
    """Give ``attention`` the fastformer rotary forward; returns the new class name."""
    attach_rotary(attention, rotary)
    attention.__class__ = rotary_attention_class(type(attention), mixin)
    return type(attention).__name__
