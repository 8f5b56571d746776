"""``MultiHeadAttention``: self- or cross-attention on fastformer's fused kernels.

The module projects with :func:`fastformer.linear`, optionally rotates q and k with a
:class:`fastformer.nn.RotaryEmbedding`, runs :func:`fastformer.scaled_dot_product_attention` and
projects back. Design choices:

- Projections, chosen by ``fused_qkv``: one GEMM for q, k and v (``qkv_proj``; for
  cross-attention ``q_proj`` plus one ``kv_proj`` over the memory), or three (``q_proj``,
  ``k_proj``, ``v_proj``: the parameter names of Hugging Face's LLaMA attention, so a
  ``LlamaAttention`` state_dict loads unchanged). The output projection is ``o_proj``.
- No copies between the projection and the attention kernel: q, k and v are views of the
  projection output, ``(batch, seq, heads, head_dim)`` transposed to the kernel's
  ``(batch, heads, seq, head_dim)``; the kernel reads any strides. Rotary runs out of place on
  those views (one launch for q and k; its outputs are new ``(batch, seq, heads, head_dim)``
  tensors, again transposed without a copy). The one copy is the attention output's, from
  ``(batch, heads, seq, head_dim)`` to ``(batch, seq, heads * head_dim)`` for ``o_proj``.
- Masks: a boolean key padding mask ``(batch, seq_k)`` (True = take part) and an additive float
  bias broadcastable to ``(batch, heads, seq_q, seq_k)`` (a relative position bias; its gradient
  flows when it requires grad). The kernel takes one mask: with both, the padding is folded into
  the bias as ``-inf`` (a ``(batch, heads, seq_q, seq_k)`` tensor); a padding mask alone is
  passed as a ``(batch, 1, 1, seq_k)`` boolean view. ``is_causal`` combines with either.
- GQA: ``n_kv_heads`` key/value heads shared by ``n_heads / n_kv_heads`` query heads each; the
  kernel reads the shared heads in place (no repeat).

A query row that sees no key (a causal row whose keys are all padding, as with left padding)
gives 0, as the kernel does; eager softmax would give NaN there.

Limits: ``head_dim = hidden_size / n_heads`` at most 256 (the kernel's limit) and the query,
key and value head sizes equal; no KV cache (each call attends over the keys it is given);
rotary for self-attention only (cross-attention keys have no positions of the query sequence).
Bad configurations raise ValueError in ``__init__``, before any kernel runs.
"""

from __future__ import annotations

import torch

from fastformer.functional import linear, scaled_dot_product_attention
from fastformer.kernels.attention_common import MAX_HEAD_DIM
from fastformer.nn._checks import check_size
from fastformer.nn.rotary import RotaryEmbedding


def check_heads(hidden_size: int, n_heads: int, n_kv_heads: int) -> int:
    """The head size for these counts; ValueError naming the values when they do not fit."""
    for name, value in (("hidden_size", hidden_size), ("n_heads", n_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected a positive int")
    if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, int) or n_kv_heads < 1:
        raise ValueError(f"n_kv_heads={n_kv_heads!r}; expected a positive int")
    if hidden_size % n_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by n_heads={n_heads}")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
    head_dim = hidden_size // n_heads
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim=hidden_size/n_heads={hidden_size}/{n_heads}={head_dim}; "
            f"the attention kernel takes at most {MAX_HEAD_DIM}"
        )
    return head_dim


def _check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise ValueError(f"dropout={dropout!r}; expected a float in [0, 1)")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout}; expected 0 <= dropout < 1")
    return float(dropout)


def attention_mask(
    key_padding_mask: torch.Tensor | None,
    attn_bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The one mask the kernel takes, from a key padding mask and an additive bias.

    ``key_padding_mask``: (batch, seq_k) bool, True = take part. ``attn_bias``: float,
    broadcastable to (batch, heads, seq_q, seq_k). Returns None, the padding as a
    (batch, 1, 1, seq_k) bool view, the bias (cast to ``dtype`` unless it is fp32), or the bias
    with ``-inf`` where keys are padding (differentiable with respect to the bias).
    """
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2:
            raise ValueError(
                f"key_padding_mask: dtype={key_padding_mask.dtype}, "
                f"shape={tuple(key_padding_mask.shape)}; expected bool (batch, seq_k), "
                "True = take part"
            )
        key_padding_mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, Sk)
    if attn_bias is None:
        return key_padding_mask
    if not attn_bias.is_floating_point():
        raise ValueError(f"attn_bias.dtype={attn_bias.dtype}; expected a float (additive) bias")
    if attn_bias.dtype not in (dtype, torch.float32):
        attn_bias = attn_bias.to(dtype)
    if key_padding_mask is None:
        return attn_bias
    return torch.where(key_padding_mask, attn_bias, float("-inf"))  # (B, H, Sq, Sk)


class MultiHeadAttention(torch.nn.Module):
    """Multi-head (or grouped-query) attention with input and output projections.

    Args:
        hidden_size: width of the query input and of the output.
        n_heads: query heads; ``head_dim = hidden_size // n_heads``.
        n_kv_heads: key/value heads (GQA); None = ``n_heads``.
        is_cross_attention: keys and values come from ``key_value_states`` (the memory).
        kv_hidden_size: width of the memory for cross-attention; None = ``hidden_size``.
        fused_qkv: one projection GEMM (``qkv_proj``, or ``kv_proj`` for cross-attention)
            instead of separate ``q_proj``/``k_proj``/``v_proj``.
        is_causal: query i attends to keys j <= i (aligned top-left, as SDPA).
        bias: biases in the projections.
        dropout: attention-probability dropout (training only).
        rotary: a :class:`RotaryEmbedding` applied to q and k (self-attention only); it may be
            shared by several modules.
        scale: the score scale; None = 1 / sqrt(head_dim).
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        is_cross_attention: bool = False,
        kv_hidden_size: int | None = None,
        fused_qkv: bool = True,
        is_causal: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        rotary: RotaryEmbedding | None = None,
        scale: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.head_dim = check_heads(hidden_size, n_heads, n_kv_heads)
        self.dropout = _check_dropout(dropout)
        if rotary is not None:
            if is_cross_attention:
                raise ValueError("rotary is for self-attention; got is_cross_attention=True")
            rotary_dim = rotary.params.head_dim
            if rotary_dim > self.head_dim:
                raise ValueError(
                    f"rotary dim={rotary_dim} exceeds head_dim={self.head_dim} "
                    f"(hidden_size={hidden_size}, n_heads={n_heads})"
                )
        self.hidden_size, self.n_heads, self.n_kv_heads = hidden_size, n_heads, n_kv_heads
        self.is_cross_attention, self.fused_qkv = is_cross_attention, fused_qkv
        self.is_causal, self.scale, self.rotary = is_causal, scale, rotary
        if kv_hidden_size is not None and not is_cross_attention and kv_hidden_size != hidden_size:
            raise ValueError(
                f"kv_hidden_size={kv_hidden_size!r} is for cross-attention; self-attention keys "
                f"come from hidden_states (hidden_size={hidden_size})"
            )
        kv_hidden_size = hidden_size if kv_hidden_size is None else kv_hidden_size
        self.kv_hidden_size = check_size("kv_hidden_size", kv_hidden_size)
        q_size, kv_size = n_heads * self.head_dim, n_kv_heads * self.head_dim

        def proj(in_features, out_features):
            return torch.nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)

        if fused_qkv and not is_cross_attention:
            self.qkv_proj = proj(hidden_size, q_size + 2 * kv_size)
        elif fused_qkv:
            self.q_proj = proj(hidden_size, q_size)
            self.kv_proj = proj(kv_hidden_size, 2 * kv_size)
        else:
            self.q_proj = proj(hidden_size, q_size)
            self.k_proj = proj(kv_hidden_size, kv_size)
            self.v_proj = proj(kv_hidden_size, kv_size)
        self.o_proj = proj(q_size, hidden_size)

    def _project(self, x: torch.Tensor, memory: torch.Tensor | None):
        """q (B, Sq, H, D), k and v (B, Sk, Hkv, D): views of the projection outputs."""
        heads = (self.n_heads, self.head_dim)
        kv_heads = (self.n_kv_heads, self.head_dim)
        q_size = self.n_heads * self.head_dim
        kv_size = self.n_kv_heads * self.head_dim
        if self.fused_qkv and not self.is_cross_attention:
            qkv = linear(x, self.qkv_proj.weight, self.qkv_proj.bias)  # (B, S, (H + 2Hkv) D)
            q = qkv[..., :q_size].unflatten(-1, heads)  # (B, S, H, D)
            k = qkv[..., q_size : q_size + kv_size].unflatten(-1, kv_heads)  # (B, S, Hkv, D)
            v = qkv[..., q_size + kv_size :].unflatten(-1, kv_heads)  # (B, S, Hkv, D)
            return q, k, v
        q = linear(x, self.q_proj.weight, self.q_proj.bias).unflatten(-1, heads)  # (B, Sq, H, D)
        memory = x if memory is None else memory
        if self.fused_qkv:
            kv = linear(memory, self.kv_proj.weight, self.kv_proj.bias)  # (B, Sk, 2 Hkv D)
            k = kv[..., :kv_size].unflatten(-1, kv_heads)  # (B, Sk, Hkv, D)
            v = kv[..., kv_size:].unflatten(-1, kv_heads)  # (B, Sk, Hkv, D)
            return q, k, v
        k = linear(memory, self.k_proj.weight, self.k_proj.bias).unflatten(-1, kv_heads)
        v = linear(memory, self.v_proj.weight, self.v_proj.bias).unflatten(-1, kv_heads)
        return q, k, v  # (B, Sq, H, D), (B, Sk, Hkv, D), (B, Sk, Hkv, D)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend and project.

        Args:
            hidden_states: (batch, seq_q, hidden_size) queries (and keys/values for self-attn).
            key_value_states: (batch, seq_k, kv_hidden_size), cross-attention only.
            key_padding_mask: (batch, seq_k) bool, True = take part.
            attn_bias: additive float bias broadcastable to (batch, n_heads, seq_q, seq_k).
            position_ids: (batch, seq) or (1, seq) positions for rotary; default 0..seq-1.
        Returns:
            (batch, seq_q, hidden_size) in the input's dtype.
        """
        if self.is_cross_attention != (key_value_states is not None):
            raise ValueError(
                f"is_cross_attention={self.is_cross_attention} but key_value_states is "
                f"{'given' if key_value_states is not None else 'None'}"
            )
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states.shape={tuple(hidden_states.shape)}; expected "
                f"(batch, seq, {self.hidden_size})"
            )
        batch, seqlen_q, _ = hidden_states.shape
        if key_value_states is not None and (
            key_value_states.dim() != 3
            or key_value_states.shape[0] != batch
            or key_value_states.shape[-1] != self.kv_hidden_size
        ):
            raise ValueError(
                f"key_value_states.shape={tuple(key_value_states.shape)}; expected "
                f"({batch}, seq_k, {self.kv_hidden_size})"
            )
        mask = attention_mask(key_padding_mask, attn_bias, hidden_states.dtype)
        q, k, v = self._project(hidden_states, key_value_states)
        if self.rotary is not None:
            q, k = self.rotary(q, k, position_ids, layout="bshd")  # (B, S, H|Hkv, D), new
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H|Hkv, S, D) views, no copy
        out = scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.is_causal,
            scale=self.scale,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, H, Sq, D)
        out = out.transpose(1, 2).reshape(batch, seqlen_q, self.n_heads * self.head_dim)  # one copy
        return linear(out, self.o_proj.weight, self.o_proj.bias)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, n_heads={self.n_heads}, "
            f"n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
            f"is_cross_attention={self.is_cross_attention}, fused_qkv={self.fused_qkv}, "
            f"is_causal={self.is_causal}, dropout={self.dropout}"
        )
