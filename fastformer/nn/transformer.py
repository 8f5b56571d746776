"""Transformer encoder and decoder layers from fastformer's parts.

A layer is attention (what to look at) and a feed-forward block (what to remember), each
wrapped in a norm and a residual add (how to train it):

- post-LN (``norm_first=False``; BERT, BART): ``h = norm(x + attn(x))``, ``y = norm(h + ffn(h))``.
  Each norm takes the residual add in its fused pass (``norm(delta, residual)``), so neither
  add is a separate op.
- pre-LN (``norm_first=True``; GPT-2, LLaMA, T5): ``h = x + attn(norm(x))``,
  ``y = h + ffn(norm(h))``. The second norm fuses ``h``'s add; the last add of a layer can fuse
  into the next layer's first norm, and the last layer's into the stack's final norm: the
  layers' :meth:`forward_stream` carries ``(delta, residual)`` pairs for that (``forward``
  returns their sum, for a layer used alone). A stack calls it through the module,
  ``layer(x, ..., residual=r, stream=True)``, so module hooks, FSDP2's parameter gathering
  included, run around it as around any forward.

Norms: LayerNorm ("layer") or RMSNorm ("rms"); feed-forward: :class:`FeedForward` (gelu,
gelu_tanh, relu, silu) or :class:`GatedFeedForward` (``gated=True``: SwiGLU with "silu", GeGLU
with "gelu"/"gelu_tanh"; no biases). Dropout is applied to each branch before its residual add
(and to the attention probabilities, ``attention_dropout``), in training only.

The decoder layer adds cross-attention over an encoder's output (the memory) between the
causal self-attention and the feed-forward block.
"""

from __future__ import annotations

import torch

from fastformer.nn._checks import check_size
from fastformer.nn.attention import MultiHeadAttention
from fastformer.nn.embeddings import make_norm
from fastformer.nn.feed_forward import FeedForward, GatedFeedForward
from fastformer.nn.rotary import RotaryEmbedding


def make_feed_forward(
    hidden_size: int,
    ffn_size: int,
    activation: str,
    gated: bool,
    bias: bool,
    device=None,
    dtype=None,
) -> torch.nn.Module:
    """:class:`GatedFeedForward` when ``gated`` (no biases), else :class:`FeedForward`."""
    factory = dict(device=device, dtype=dtype)
    if gated:
        return GatedFeedForward(hidden_size, ffn_size, activation, bias=bias, **factory)
    return FeedForward(hidden_size, ffn_size, activation, bias=bias, **factory)


class _Layer(torch.nn.Module):
    """What encoder and decoder layers share: self-attention, feed-forward, their norms."""

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        ffn_size: int,
        *,
        n_kv_heads: int | None,
        activation: str,
        gated: bool,
        norm: str,
        norm_first: bool,
        eps: float,
        dropout: float,
        attention_dropout: float,
        bias: bool,
        fused_qkv: bool,
        is_causal: bool,
        rotary: RotaryEmbedding | None,
        device,
        dtype,
    ):
        super().__init__()
        check_size("ffn_size", ffn_size)
        factory = dict(device=device, dtype=dtype)
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(
            hidden_size, n_heads, n_kv_heads, fused_qkv=fused_qkv, is_causal=is_causal,
            bias=bias, dropout=attention_dropout, rotary=rotary, **factory,
        )  # fmt: skip
        self.self_attn_norm = make_norm(norm, hidden_size, eps, **factory)
        self.ffn = make_feed_forward(hidden_size, ffn_size, activation, gated, bias, **factory)
        self.ffn_norm = make_norm(norm, hidden_size, eps, **factory)
        self.dropout = torch.nn.Dropout(dropout)

    def _self_attention(self, x, key_padding_mask, attn_bias, position_ids):
        out = self.self_attn(
            x, key_padding_mask=key_padding_mask, attn_bias=attn_bias, position_ids=position_ids
        )
        return self.dropout(out)

    def _refuse_stream(self) -> None:
        if not self.norm_first:
            raise ValueError("forward_stream is for pre-LN layers (norm_first=True)")

    @staticmethod
    def _streams(residual, stream: bool) -> bool:
        """Whether forward returns the (delta, residual) pair; ``residual`` needs it."""
        if residual is not None and not stream:
            raise ValueError(
                "residual is taken only with stream=True (forward then returns the "
                "(delta, residual) pair); got stream=False"
            )
        return stream


class TransformerEncoderLayer(_Layer):
    """Self-attention and feed-forward, pre-LN or post-LN; with ``is_causal`` a GPT/LLaMA block.

    Args:
        hidden_size, n_heads, ffn_size: width, query heads, feed-forward inner width.
        n_kv_heads: key/value heads (GQA); None = n_heads.
        activation: the feed-forward activation ("gelu", "gelu_tanh", "relu", "silu" or a
            Hugging Face name of those).
        gated: a gated feed-forward (SwiGLU/GeGLU) instead of the plain one.
        norm: "layer" (LayerNorm) or "rms" (RMSNorm).
        norm_first: pre-LN (True) or post-LN (False).
        eps: the norms' epsilon.
        dropout: on each branch before its residual add. attention_dropout: on the
            attention probabilities.
        bias: biases in attention and feed-forward Linears.
        fused_qkv: one q/k/v projection GEMM.
        is_causal: causal self-attention.
        rotary: a (shareable) :class:`RotaryEmbedding` for q and k.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        ffn_size: int,
        *,
        n_kv_heads: int | None = None,
        activation: str = "gelu",
        gated: bool = False,
        norm: str = "layer",
        norm_first: bool = False,
        eps: float = 1e-5,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        bias: bool = True,
        fused_qkv: bool = True,
        is_causal: bool = False,
        rotary: RotaryEmbedding | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(
            hidden_size, n_heads, ffn_size, n_kv_heads=n_kv_heads, activation=activation,
            gated=gated, norm=norm, norm_first=norm_first, eps=eps, dropout=dropout,
            attention_dropout=attention_dropout, bias=bias, fused_qkv=fused_qkv,
            is_causal=is_causal, rotary=rotary, device=device, dtype=dtype,
        )  # fmt: skip

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        residual: torch.Tensor | None = None,
        stream: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (batch, seq, hidden) -> (batch, seq, hidden). Masks as in
        :meth:`MultiHeadAttention.forward`. With ``stream=True`` (pre-LN only), as
        :meth:`forward_stream` on ``x + residual``: the ``(delta, residual)`` pair."""
        if self._streams(residual, stream):
            return self.forward_stream(x, residual, key_padding_mask, attn_bias, position_ids)
        if self.norm_first:
            delta, residual = self.forward_stream(
                x, None, key_padding_mask, attn_bias, position_ids
            )
            return residual + delta
        h = self.self_attn_norm(
            self._self_attention(x, key_padding_mask, attn_bias, position_ids), x
        )[0]
        return self.ffn_norm(self.dropout(self.ffn(h)), h)[0]  # norm(h + ffn(h))

    def forward_stream(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-LN only: the layer applied to ``x + residual`` (``x`` alone when ``residual`` is
        None), returned as ``(delta, residual)`` whose sum is the output."""
        self._refuse_stream()
        if residual is None:
            normed, residual = self.self_attn_norm(x), x
        else:
            normed, residual = self.self_attn_norm(x, residual)  # norm(x + r), x + r
        attn = self._self_attention(normed, key_padding_mask, attn_bias, position_ids)
        normed, residual = self.ffn_norm(attn, residual)  # norm(h), h = residual + attn
        return self.dropout(self.ffn(normed)), residual


class TransformerDecoderLayer(_Layer):
    """Causal self-attention, cross-attention over the memory, feed-forward.

    Arguments as :class:`TransformerEncoderLayer`'s, plus ``memory_size`` (the width of the
    memory; None = hidden_size); ``is_causal`` defaults to True. Cross-attention has no rotary.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        ffn_size: int,
        *,
        n_kv_heads: int | None = None,
        memory_size: int | None = None,
        activation: str = "gelu",
        gated: bool = False,
        norm: str = "layer",
        norm_first: bool = False,
        eps: float = 1e-5,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        bias: bool = True,
        fused_qkv: bool = True,
        is_causal: bool = True,
        rotary: RotaryEmbedding | None = None,
        device=None,
        dtype=None,
    ):
        if memory_size is not None:
            check_size("memory_size", memory_size)
        super().__init__(
            hidden_size, n_heads, ffn_size, n_kv_heads=n_kv_heads, activation=activation,
            gated=gated, norm=norm, norm_first=norm_first, eps=eps, dropout=dropout,
            attention_dropout=attention_dropout, bias=bias, fused_qkv=fused_qkv,
            is_causal=is_causal, rotary=rotary, device=device, dtype=dtype,
        )  # fmt: skip
        self.cross_attn = MultiHeadAttention(
            hidden_size, n_heads, n_kv_heads, is_cross_attention=True,
            kv_hidden_size=memory_size, fused_qkv=fused_qkv, bias=bias,
            dropout=attention_dropout, device=device, dtype=dtype,
        )  # fmt: skip
        self.cross_attn_norm = make_norm(norm, hidden_size, eps, device=device, dtype=dtype)

    def _cross_attention(self, x, memory, memory_key_padding_mask):
        out = self.cross_attn(x, memory, key_padding_mask=memory_key_padding_mask)
        return self.dropout(out)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        residual: torch.Tensor | None = None,
        stream: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (batch, seq, hidden), memory (batch, seq_m, memory_size) -> (batch, seq, hidden).

        ``key_padding_mask`` (batch, seq) and ``attn_bias`` go to the self-attention,
        ``memory_key_padding_mask`` (batch, seq_m) to the cross-attention. ``stream`` and
        ``residual``: as :meth:`TransformerEncoderLayer.forward`."""
        if self._streams(residual, stream):
            return self.forward_stream(
                x, residual, memory, key_padding_mask, memory_key_padding_mask, attn_bias,
                position_ids,
            )  # fmt: skip
        if self.norm_first:
            delta, residual = self.forward_stream(
                x, None, memory, key_padding_mask, memory_key_padding_mask, attn_bias,
                position_ids,
            )  # fmt: skip
            return residual + delta
        attn = self._self_attention(x, key_padding_mask, attn_bias, position_ids)
        h = self.self_attn_norm(attn, x)[0]  # norm(x + attn)
        h = self.cross_attn_norm(self._cross_attention(h, memory, memory_key_padding_mask), h)[0]
        return self.ffn_norm(self.dropout(self.ffn(h)), h)[0]

    def forward_stream(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        memory: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-LN only: as :meth:`TransformerEncoderLayer.forward_stream`."""
        self._refuse_stream()
        if residual is None:
            normed, residual = self.self_attn_norm(x), x
        else:
            normed, residual = self.self_attn_norm(x, residual)
        attn = self._self_attention(normed, key_padding_mask, attn_bias, position_ids)
        normed, residual = self.cross_attn_norm(attn, residual)
        cross = self._cross_attention(normed, memory, memory_key_padding_mask)
        normed, residual = self.ffn_norm(cross, residual)
        return self.dropout(self.ffn(normed)), residual
