"""Token embeddings and the position kinds that live outside attention.

- :class:`TransformerEmbeddings`: token embedding, plus learned absolute positions (BERT, GPT-2,
  BART) or sinusoidal ones (the original transformer), plus token types (BERT's segments),
  then an optional norm and dropout. ``rotary``, ``relative`` and ``none`` positions add
  nothing here: rotary is applied to q and k inside attention
  (:class:`fastformer.nn.RotaryEmbedding`), a relative bias is added to the scores.
- :class:`SinusoidalPositionalEmbedding`: ``[sin(p w_i) | cos(p w_i)]`` with
  ``w_i = base ** (-2 i / dim)``, the halves concatenated (not interleaved); computed from the
  positions on each call (fp32 angles), so there is no table and no maximum position.
- :class:`RelativePositionBias`: T5-style bucketed relative positions, one learned scalar per
  (bucket, head), returned as a (1, heads, seq_q, seq_k) additive bias; computed once per
  stack and given to every layer's attention (the kernel takes the bias as a float mask and
  returns its gradient, so the table learns). The bucket of a key-minus-query distance: exact
  for the smallest distances (half of the buckets of a direction), logarithmically spaced up to
  ``max_distance``, and the last bucket beyond; bidirectional biases split the buckets between
  keys before and after the query.

These are gathers and elementwise adds, left to PyTorch (memory-bound ops with nothing to
fuse but the norm, which runs on fastformer's kernel). Limits: learned positions up to
``max_positions`` (a longer sequence raises ValueError; explicit ``position_ids`` are not
range-checked, which would need a host sync: ``torch.nn.functional.embedding`` rejects them).
"""

from __future__ import annotations

import math

import torch

from fastformer.functional._checks import check_eps
from fastformer.nn._checks import check_size
from fastformer.nn.norm import LayerNorm, RMSNorm

POSITION_KINDS = ("learned", "sinusoidal", "rotary", "relative", "none")
NORM_KINDS = {"layer": LayerNorm, "rms": RMSNorm}
# Base of the sinusoids' geometric frequencies ("Attention Is All You Need", section 3.5).
SINUSOID_BASE = 10000.0


def make_norm(kind: str, hidden_size: int, eps: float, device=None, dtype=None):
    """A fastformer LayerNorm ("layer") or RMSNorm ("rms") of width ``hidden_size``."""
    if kind not in NORM_KINDS:
        raise ValueError(f"norm={kind!r}; expected one of {tuple(NORM_KINDS)}")
    if eps is not None or kind == "layer":
        check_eps(eps)  # else a bad eps surfaces only at the first forward
    return NORM_KINDS[kind](hidden_size, eps=eps, device=device, dtype=dtype)


class SinusoidalPositionalEmbedding(torch.nn.Module):
    """Fixed sinusoidal positions, ``[sin | cos]`` halves; no parameters, no maximum position.

    Args:
        dim: the embedding width (even).
        base: the frequencies' base.
    """

    def __init__(self, dim: int, base: float = SINUSOID_BASE):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"sinusoidal position dim={dim!r}; expected an even int >= 2")
        self.dim, self.base = dim, float(base)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32):
        """(..., dim) embeddings of integer positions of any shape, in ``dtype``."""
        half = self.dim // 2
        exponent = torch.arange(half, device=position_ids.device, dtype=torch.float32) / half
        inv_freq = torch.exp(-math.log(self.base) * exponent)  # (dim / 2,)
        angles = position_ids[..., None].float() * inv_freq  # (..., dim / 2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"


class TransformerEmbeddings(torch.nn.Module):
    """``dropout(norm(scale * tokens + positions + token_types))``.

    Args:
        vocab_size, hidden_size: the token table's shape.
        position: one of ``POSITION_KINDS``; only "learned" and "sinusoidal" add here.
        max_positions: rows of the learned position table.
        type_vocab_size: rows of the token-type table (0: none).
        padding_idx: passed to the token ``torch.nn.Embedding``.
        norm: None, "layer" or "rms": a norm after the sum (BERT, BART).
        eps: the norm's epsilon.
        dropout: dropout after the norm.
        scale: multiplies the token embeddings (sqrt(hidden_size) in some encoder-decoders).
    Parameter names follow BERT's (``word_embeddings``, ``position_embeddings``,
    ``token_type_embeddings``) except the norm, ``norm``.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        *,
        position: str = "learned",
        max_positions: int = 512,
        type_vocab_size: int = 0,
        padding_idx: int | None = None,
        norm: str | None = None,
        eps: float = 1e-5,
        dropout: float = 0.0,
        scale: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if position not in POSITION_KINDS:
            raise ValueError(f"position={position!r}; expected one of {POSITION_KINDS}")
        check_size("vocab_size", vocab_size)
        check_size("hidden_size", hidden_size)
        if position == "learned":
            check_size("max_positions", max_positions)
        check_size("type_vocab_size", type_vocab_size, minimum=0)
        if padding_idx is not None:
            check_size("padding_idx", padding_idx, minimum=-vocab_size)
            if padding_idx >= vocab_size:
                raise ValueError(f"padding_idx={padding_idx}; expected < vocab_size={vocab_size}")
        factory = dict(device=device, dtype=dtype)
        self.position, self.max_positions, self.scale = position, max_positions, float(scale)
        self.word_embeddings = torch.nn.Embedding(
            vocab_size, hidden_size, padding_idx=padding_idx, **factory
        )
        if position == "learned":
            self.position_embeddings = torch.nn.Embedding(max_positions, hidden_size, **factory)
        elif position == "sinusoidal":
            self.sinusoidal = SinusoidalPositionalEmbedding(hidden_size)
        if type_vocab_size:
            self.token_type_embeddings = torch.nn.Embedding(type_vocab_size, hidden_size, **factory)
        self.norm = None if norm is None else make_norm(norm, hidden_size, eps, **factory)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (batch, seq) -> (batch, seq, hidden_size). ``token_type_ids`` default to
        0; ``position_ids`` ((batch, seq) or (1, seq)) default to 0..seq-1."""
        seqlen = input_ids.shape[-1]
        x = self.word_embeddings(input_ids)  # (B, S, E)
        if self.scale != 1.0:
            x = x * self.scale
        if self.position == "learned":
            if position_ids is None:
                if seqlen > self.max_positions:
                    raise ValueError(
                        f"sequence length {seqlen} exceeds max_positions={self.max_positions} "
                        "of the learned position table"
                    )
                x = x + self.position_embeddings.weight[:seqlen]  # (S, E): no gather
            else:
                x = x + self.position_embeddings(position_ids)  # (B or 1, S, E)
        elif self.position == "sinusoidal":
            if position_ids is None:
                position_ids = torch.arange(seqlen, device=input_ids.device)
            x = x + self.sinusoidal(position_ids, x.dtype)
        has_types = hasattr(self, "token_type_embeddings")
        if token_type_ids is not None and not has_types:  # ignoring them would be silently wrong
            raise ValueError("token_type_ids given but the embeddings have no token types")
        if has_types and token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # (E,): type 0 everywhere
        elif has_types:
            x = x + self.token_type_embeddings(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int
) -> torch.Tensor:
    """The bucket (int64, same shape) of each key-minus-query distance; see the module doc."""
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        n_buckets //= 2
        bucket = (relative_position > 0).long() * n_buckets  # keys after the query: upper half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # keys after the query share bucket 0
    n_exact = n_buckets // 2
    # Distances from n_exact to max_distance spread over the other buckets on a log scale.
    log_ratio = torch.log(distance.float().clamp(min=1) / n_exact) / math.log(
        max_distance / n_exact
    )
    far = n_exact + (log_ratio * (n_buckets - n_exact)).long()
    far = far.clamp(max=n_buckets - 1)
    return bucket + torch.where(distance < n_exact, distance, far)


class RelativePositionBias(torch.nn.Module):
    """T5-style learned relative position bias, shared by the layers of one stack.

    Args:
        n_heads: heads of the attention it feeds.
        n_buckets: buckets of distances (split between directions when bidirectional).
        max_distance: distances from here on share the last bucket.
        bidirectional: True for encoders, False for causal decoders.
    The table is ``relative_attention_bias`` ((n_buckets, n_heads), T5's name).
    """

    def __init__(
        self,
        n_heads: int,
        n_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        n_exact = (n_buckets // 2 if bidirectional else n_buckets) // 2
        if n_exact < 1 or max_distance <= n_exact:
            raise ValueError(
                f"relative position n_buckets={n_buckets}, max_distance={max_distance} "
                f"(bidirectional={bidirectional}): need at least 1 exact bucket "
                f"({n_exact}) and max_distance above it"
            )
        self.n_buckets, self.max_distance = n_buckets, max_distance
        self.bidirectional = bidirectional
        self.relative_attention_bias = torch.nn.Embedding(
            n_buckets, n_heads, device=device, dtype=dtype
        )

    def buckets(self, seqlen_q: int, seqlen_k: int, device=None) -> torch.Tensor:
        """(seq_q, seq_k) bucket of key j seen from query i."""
        query = torch.arange(seqlen_q, device=device)[:, None]
        key = torch.arange(seqlen_k, device=device)[None, :]
        return relative_position_bucket(
            key - query, self.bidirectional, self.n_buckets, self.max_distance
        )

    def forward(self, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
        """(1, n_heads, seq_q, seq_k) additive bias in the table's dtype."""
        table = self.relative_attention_bias
        buckets = self.buckets(seqlen_q, seqlen_k, table.weight.device)
        return table(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, Sq, Sk)

    def extra_repr(self) -> str:
        return (
            f"n_buckets={self.n_buckets}, max_distance={self.max_distance}, "
            f"bidirectional={self.bidirectional}"
        )
